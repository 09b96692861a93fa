"""Options of ``theseus-hybrid``: how many calibration examples are held out to choose each space's map."""

from __future__ import annotations

from dataclasses import dataclass

from theseus_ops.errors import InputError
from theseus_ops.transport.options import option


@dataclass(frozen=True)
class TheseusHybridConfig:
    """The held-out share decides, per space, between the Procrustes map and the coordinate-preserving one."""

    holdout: float = option(0.25, "share of the calibration examples held out of the map estimate to choose, per "
                            "space, between the Procrustes map and the pad map (at least one example each way)")

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout < 1.0:
            raise InputError(f"theseus-hybrid holdout must be in (0, 1), got {self.holdout}")

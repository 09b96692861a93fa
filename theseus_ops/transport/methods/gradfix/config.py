"""GradFix's options, checked once; the CLI offers them as ``--gradfix-mode`` and ``--gradfix-signs``."""

from __future__ import annotations

from dataclasses import dataclass

from theseus_ops.errors import InputError
from theseus_ops.transport.options import option

MODES = ("normal", "force")
SIGNS = ("mean", "vote")


@dataclass(frozen=True)
class GradFixConfig:
    """How the target's descent direction is read and applied to τ."""

    mode: str = option("normal", "normal keeps the coordinates of τ whose sign agrees with the descent direction; "
                       "force gives every coordinate |τ| with the descent sign", choices=MODES)
    signs: str = option("mean", "mean takes the sign of the mean gradient over the examples; vote a per-example "
                        "majority", choices=SIGNS)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"gradfix mode must be normal or force, got {self.mode!r}")
        if self.signs not in SIGNS:
            raise InputError(f"gradfix signs must be mean or vote, got {self.signs!r}")

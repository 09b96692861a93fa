"""Objects a caller already holds, handed to the pipeline so it reads none of them again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from theseus_ops.io.alignment import Alignment
    from theseus_ops.io.calibration import Calibration


@dataclass(frozen=True)
class Loaded:
    """Each given field replaces a read of what the config names; the config's path is then only a label.

    ``source_model``/``target_model``: the base models, on the config's device (map estimation uses
    both; gradfix uses the target when it is float32, and sets ``requires_grad`` on it).
    ``calibration``: (source, target) examples, trimmed to ``max_rows`` and checked as a file would be.
    ``alignment``: prepared maps, checked against the pair like an ``--alignment`` file.
    """

    source_model: torch.nn.Module | None = None
    target_model: torch.nn.Module | None = None
    calibration: tuple[Calibration, Calibration] | None = None
    alignment: Alignment | None = None


NOTHING_LOADED = Loaded()

"""The baselines every report shows: naive (add τ_A as is) and pad (zero-pad or truncate).

Both are expressed as maps, the pad embedding E (identity when widths agree), so that fused
projections, Conv1D layouts and LoRA factors go through the same rules as Theseus.
"""

from __future__ import annotations

import torch

from theseus_ops.errors import NotApplicableError
from theseus_ops.transport.engine import ParamPlan
from theseus_ops.transport.maps import pad_map


def pad_maps(widths: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """E for every space: coordinate i of A goes to coordinate i of B, extra ones are zero."""
    return {key: pad_map(a, b, torch.float32) for key, (a, b) in widths.items()}


def check_same_shapes(method: str, plans: list[ParamPlan], source_shapes: dict, layer_kind: str,
                      source_depth: int, target_depth: int) -> None:
    """Methods defined only for identical shapes refuse any other pair, naming the first mismatch."""
    if source_depth != target_depth or layer_kind != "identity":
        raise NotApplicableError(f"{method} needs models of identical shape, but the source has {source_depth} "
                                 f"layers and the target {target_depth}; use --method theseus or pad")
    for plan in plans:
        for target in plan.targets:
            source_shape = tuple(source_shapes[plan.source_name])
            if target.shape != source_shape:
                raise NotApplicableError(
                    f"{method} needs identical shapes, but {plan.source_name} is {list(source_shape)} "
                    f"in the source and {list(target.shape)} in the target; use --method theseus or pad")

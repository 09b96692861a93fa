"""The pad baseline: zero-pad or truncate every tensor to the target's shape.

Expressed as maps, the pad embedding E (identity when widths agree), so that fused projections,
Conv1D layouts and LoRA factors go through the same rules as Theseus.
"""

from __future__ import annotations

from theseus_ops.transport.methods import Capabilities, register_method
from theseus_ops.transport.methods.base import Method, MethodOutput, TransportContext
from theseus_ops.transport.methods.pad.config import PadConfig


def pad_maps(widths: dict[str, tuple[int, int]]) -> dict:
    """E for every space: coordinate i of A goes to coordinate i of B, extra ones are zero."""
    import torch

    from theseus_ops.transport.maps import pad_map

    return {key: pad_map(a, b, torch.float32) for key, (a, b) in widths.items()}


class Pad(Method):
    def run(self, ctx: TransportContext, config: PadConfig) -> MethodOutput:
        return MethodOutput(maps=pad_maps(ctx.space_widths()))


register_method("pad", PadConfig, Pad(), order=10,
                summary="zero-pad or truncate every tensor to the target's shape",
                capabilities=Capabilities())

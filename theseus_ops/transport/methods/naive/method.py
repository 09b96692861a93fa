"""The naive baseline: add τ_A to the target unchanged, defined only between identical shapes.

Between identical shapes the pad embedding is the identity, so naive is pad with the
``same_shapes_only`` capability: the capability check refuses every other pair before any work.
"""

from __future__ import annotations

from theseus_ops.transport.methods import Capabilities, register_method
from theseus_ops.transport.methods.base import Method, MethodOutput, TransportContext
from theseus_ops.transport.methods.naive.config import NaiveConfig
from theseus_ops.transport.methods.pad.method import pad_maps


class Naive(Method):
    def run(self, ctx: TransportContext, config: NaiveConfig) -> MethodOutput:
        return MethodOutput(maps=pad_maps(ctx.space_widths()))


register_method("naive", NaiveConfig, Naive(), order=40, summary="add the source vector unchanged",
                capabilities=Capabilities(same_shapes_only=True))

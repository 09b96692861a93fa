"""Theseus from seeded probe inputs: Procrustes maps without any calibration data."""

from __future__ import annotations

from theseus_ops.transport.methods import Capabilities, register_method
from theseus_ops.transport.methods.base import Estimate, EstimateContext, PreparedMaps
from theseus_ops.transport.methods.theseus_data_free.config import TheseusDataFreeConfig


class TheseusDataFree(PreparedMaps):
    """The probes are the data; no completion pass, since nothing is left to complete them from."""

    def estimate(self, ctx: EstimateContext, config: TheseusDataFreeConfig) -> Estimate:
        from theseus_ops.transport.methods.theseus.estimate import estimate_maps

        info: dict = {"probe": "seeded synthetic inputs", "seed": ctx.probe_seed}
        source, target = ctx.probes()
        info["rows"] = next(iter(source.values())).shape[0]
        # The models are passed, not held here: estimate_maps releases them after its last forward pass.
        maps, quality = estimate_maps(
            ctx.models().source, ctx.models().target, ctx.models().requests, source, target,
            layout=ctx.layout, options=ctx.options, batch_size=ctx.batch_size, device=ctx.device,
            progress=ctx.progress, probes=None, weight_plans=ctx.weight_plans, base_state=ctx.base_state,
            release_models=ctx.release_models,
        )
        return Estimate(maps, quality, info)


register_method("theseus-data-free", TheseusDataFreeConfig, TheseusDataFree(), order=30,
                summary="Procrustes maps from seeded probe inputs, no data",
                capabilities=Capabilities(estimates_maps=True))

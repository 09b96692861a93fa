"""Theseus: activation-aligned Procrustes maps per coordinate space (arXiv 2602.12952)."""

from __future__ import annotations

from theseus_ops.transport.methods import Capabilities, register_method
from theseus_ops.transport.methods.base import Estimate, EstimateContext, PreparedMaps
from theseus_ops.transport.methods.theseus.config import TheseusConfig


class Theseus(PreparedMaps):
    """Maps from the calibration data; undetermined directions come from the base weights (``weights``
    fill), from probes (``project``) or from the zero-pad prior (``pad``)."""

    def estimate(self, ctx: EstimateContext, config: TheseusConfig) -> Estimate:
        from theseus_ops.transport.methods.theseus.estimate import estimate_maps, estimate_maps_by_block

        calibration = ctx.calibration()  # read and checked before the (slow) model loads
        if ctx.stream:  # one block of each model at a time, each map to a file once final (docs/memory.md)
            store = ctx.map_store()
            try:
                maps, quality = estimate_maps_by_block(
                    ctx.streamed_models(), calibration.source, calibration.target, store, layout=ctx.layout,
                    options=ctx.options, batch_size=ctx.batch_size, device=ctx.device, progress=ctx.progress,
                    weight_plans=ctx.weight_plans, base_state=ctx.base_state)
            except BaseException:
                store.close()  # no scratch file outlives a failed prepare
                raise
            return Estimate(maps, quality, self._calibration_info(ctx, calibration.info, quality))
        # The models are passed, not held here: estimate_maps releases them after its last forward pass.
        maps, quality = estimate_maps(
            ctx.models().source, ctx.models().target, ctx.models().requests, calibration.source, calibration.target,
            layout=ctx.layout, options=ctx.options, batch_size=ctx.batch_size, device=ctx.device,
            progress=ctx.progress, probes=ctx.probes, weight_plans=ctx.weight_plans, base_state=ctx.base_state,
            release_models=ctx.release_models,
        )
        return Estimate(maps, quality, self._calibration_info(ctx, calibration.info, quality))

    @staticmethod
    def _calibration_info(ctx: EstimateContext, info: dict, quality: dict) -> dict:
        """The calibration's provenance and, for a completing fill, which spaces it completed."""
        info = dict(info)
        if ctx.options.fill == "project":
            info["completion"] = {"probe_seed": ctx.probe_seed,
                                  "spaces": sorted(k for k, q in quality.items() if q.probe_filled)}
        elif ctx.options.fill == "weights":
            info["completion"] = {"prior": "base weights",
                                  "spaces": sorted(k for k, q in quality.items() if q.weight_filled)}
        return info


register_method("theseus", TheseusConfig, Theseus(), order=20,
                summary="activation-aligned Procrustes maps per coordinate space",
                capabilities=Capabilities(needs_calibration=True, estimates_maps=True, streams=True))

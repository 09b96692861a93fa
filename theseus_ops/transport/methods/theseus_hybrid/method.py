"""``theseus-hybrid``: per coordinate space, the Procrustes map or the pad map, whichever fits held-out data.

Neither single method wins everywhere: pad is right where a grown target kept the source's
coordinates, Procrustes where they were moved. This method estimates Theseus' maps on most of the
calibration examples, then measures, on the examples it held out, the residual ‖X_A T − X_B‖/‖X_B‖
of each space's Procrustes map and of its pad map E (coordinate i to coordinate i), and keeps the
smaller. A permuted target makes E's residual large in every space, so every space chooses
Procrustes there, and the choice inherits Theseus' equivariance; ties (an identical target) go to
Procrustes too. Each choice and both residuals are recorded in the alignment's provenance.
"""

from __future__ import annotations

from theseus_ops.transport.methods import Capabilities, register_method
from theseus_ops.transport.methods.base import Estimate, EstimateContext, PreparedMaps
from theseus_ops.transport.methods.theseus_hybrid.config import TheseusHybridConfig


class TheseusHybrid(PreparedMaps):
    def estimate(self, ctx: EstimateContext, config: TheseusHybridConfig) -> Estimate:
        from theseus_ops.transport.methods.theseus.estimate import estimate_maps
        from theseus_ops.transport.methods.theseus_hybrid.choose import choose_maps, split_examples
        from theseus_ops.transport.statistics import collect_statistics

        calibration = ctx.calibration()
        (fit_a, fit_b), (held_a, held_b) = split_examples(calibration.source, calibration.target, config.holdout)
        models = ctx.models()
        maps, quality = estimate_maps(
            models.source, models.target, models.requests, fit_a, fit_b,
            layout=ctx.layout, options=ctx.options, batch_size=ctx.batch_size, device=ctx.device,
            progress=ctx.progress, probes=ctx.probes, weight_plans=ctx.weight_plans, base_state=ctx.base_state,
        )
        held = collect_statistics(models.source, models.target, [r for r in models.requests if r.key in maps],
                                  held_a, held_b, layout=ctx.layout, batch_size=ctx.batch_size, device=ctx.device,
                                  with_gram=True, precision=ctx.options.precision)
        maps, choices = choose_maps(maps, held)
        pad_spaces = sorted(k for k, c in choices.items() if c["choice"] == "pad")
        ctx.progress(f"theseus-hybrid: pad map chosen on {len(pad_spaces)} of {len(choices)} spaces")
        info = {**calibration.info, "hybrid": {"held_out_examples": next(iter(held_a.values())).shape[0],
                                               "pad_spaces": pad_spaces, "spaces": choices}}
        return Estimate(maps, quality, info)


register_method("theseus-hybrid", TheseusHybridConfig, TheseusHybrid(), order=25,
                summary="per space, the Procrustes or the pad map, whichever fits held-out calibration rows",
                capabilities=Capabilities(needs_calibration=True, estimates_maps=True, in_default_workflow=False))

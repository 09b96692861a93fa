"""GradFix (arXiv 2510.09658): between two bases of identical shape, keep the coordinates of τ whose
sign agrees with −∇L of the target on a few labeled examples (or force them to it).

It edits the task vector itself, so it returns the result and its report lines, not maps.
"""

from __future__ import annotations

from theseus_ops.transport.methods import Capabilities, register_method
from theseus_ops.transport.methods.base import Method, MethodOutput, TransportContext
from theseus_ops.transport.methods.gradfix.config import GradFixConfig


class GradFix(Method):
    def run(self, ctx: TransportContext, config: GradFixConfig) -> MethodOutput:
        import torch

        from theseus_ops.transport.engine import ParamRecord
        from theseus_ops.transport.methods.gradfix.signs import apply_gradfix, descent_signs
        from theseus_ops.transport.task_vector import TaskVector

        tv = ctx.task_vector
        tensors, rows = ctx.target_calibration()
        model = ctx.target_model(torch.float32)
        names = [p.source_name for p in ctx.plans if not p.reason]
        signs = descent_signs(model, names, tensors, config, ctx.batch_size, ctx.device, ctx.progress)
        masked, kept = apply_gradfix(TaskVector("full", deltas={n: tv.deltas[n] for n in names}), signs, config.mode)
        records = []
        for plan in ctx.plans:
            before = tv.norm(plan.source_name)
            if plan.reason:
                records.append(ParamRecord(plan.source_name, "left_out", plan.rule, [], before, None, [], plan.reason))
            else:
                records.append(ParamRecord(plan.source_name, "transported", f"gradfix-{config.mode}",
                                           [plan.targets[0].name], before, masked.norm(plan.source_name), []))
        return MethodOutput(result=masked, records=records, extra={"gradfix": {"kept_fraction": kept,
                                                                                "examples": rows}})


register_method("gradfix", GradFixConfig, GradFix(), order=50,
                summary="keep coordinates that descend the target's task loss",
                capabilities=Capabilities(needs_calibration=True, needs_labels=True, same_shapes_only=True,
                                          handles_lora=False))

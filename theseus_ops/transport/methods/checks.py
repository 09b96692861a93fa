"""The capability checks the API runs before any work: a failure means *not applicable*, not an error."""

from __future__ import annotations

from typing import TYPE_CHECKING

from theseus_ops.errors import NotApplicableError

if TYPE_CHECKING:
    from theseus_ops.transport.engine import ParamPlan
    from theseus_ops.transport.methods import MethodInfo


def _alternatives(lacking: str) -> str:
    """The registered methods without the limiting capability ``lacking``, for the error's advice."""
    from theseus_ops.transport.methods import get_method, method_names

    return " or ".join(n for n in sorted(method_names()) if not getattr(get_method(n).capabilities, lacking))


def _lora_capable() -> str:
    from theseus_ops.transport.methods import get_method, method_names

    return " or ".join(n for n in sorted(method_names()) if get_method(n).capabilities.handles_lora)


def check_lora(info: MethodInfo, vector_format: str) -> None:
    """A method that handles full deltas only refuses a LoRA adapter."""
    if vector_format == "lora" and not info.capabilities.handles_lora:
        raise NotApplicableError(f"method {info.name} does not support LoRA adapters; use {_lora_capable()}, "
                                 "or pass the fine-tuned model with --source-tuned")


def check_same_shapes(info: MethodInfo, plans: list[ParamPlan], source_shapes: dict, layer_scheme: str,
                      source_depth: int, target_depth: int) -> None:
    """Methods defined only for identical shapes refuse any other pair, naming the first mismatch."""
    if not info.capabilities.same_shapes_only:
        return
    method, other = info.name, _alternatives('same_shapes_only')
    if source_depth != target_depth or layer_scheme != "identity":
        raise NotApplicableError(f"{method} needs models of identical shape, but the source has {source_depth} "
                                 f"layers and the target {target_depth}; use --method {other}")
    for plan in plans:
        for target in plan.targets:
            source_shape = tuple(source_shapes[plan.source_name])
            if target.shape != source_shape:
                raise NotApplicableError(
                    f"{method} needs identical shapes, but {plan.source_name} is {list(source_shape)} "
                    f"in the source and {list(target.shape)} in the target; use --method {other}")


def check_labels(info: MethodInfo, tensors: dict) -> None:
    """A method that needs a task loss refuses calibration data without ``labels``."""
    if info.capabilities.needs_labels and "labels" not in tensors:
        raise NotApplicableError(f"{info.name} needs 'labels' in the target calibration file "
                                 "(LM: -100 outside the answer)")

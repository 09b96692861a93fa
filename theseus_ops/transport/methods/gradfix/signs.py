"""GradFix's algorithm (arXiv 2510.09658): the target's descent signs, and τ masked (or re-signed) by them."""

from __future__ import annotations

from collections.abc import Callable

import torch

from theseus_ops.errors import InputError
from theseus_ops.transport.methods.gradfix.config import GradFixConfig
from theseus_ops.transport.statistics import model_inputs
from theseus_ops.transport.task_vector import TaskVector


def descent_signs(
    model: torch.nn.Module,
    names: list[str],
    data: dict[str, torch.Tensor],
    config: GradFixConfig,
    batch_size: int,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
) -> dict[str, torch.Tensor]:
    """sign(g) of the model's own task loss at its current weights, per named parameter."""
    if "labels" not in data:  # the API's capability check (needs_labels) refuses this before any work
        raise InputError("gradfix needs 'labels' in the target calibration file (LM: -100 outside the answer)")
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise InputError(f"gradfix: the target model has no trainable parameter {missing[0]}")
    for name, p in params.items():
        p.requires_grad_(name in names)
    labels = data["labels"]
    # rows whose labels are all ignored (-100) carry no task loss: calibration may mix in plain text
    labeled = (labels != -100).reshape(labels.shape[0], -1).any(dim=1)
    total = int(labeled.sum())
    if total == 0:
        raise InputError("gradfix: every calibration label is ignored (-100); label the answer tokens")
    data = {k: v[labeled] for k, v in data.items()}
    step = 1 if config.signs == "vote" else batch_size
    votes = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    model.zero_grad(set_to_none=True)
    for start in range(0, total, step):
        batch = {k: v[start : start + step] for k, v in data.items()}
        out = model(**model_inputs(batch, model, device), labels=batch["labels"].to(device))
        if out.loss is None or not torch.isfinite(out.loss):
            raise InputError("gradfix: the model's task loss is not finite on these examples")
        weight = batch["labels"].shape[0] / total
        (out.loss * (1.0 if config.signs == "vote" else weight)).backward()
        if config.signs == "vote":
            for n in names:
                votes[n] += params[n].grad.float().sign()
            model.zero_grad(set_to_none=True)
        if progress:
            progress(f"gradfix: gradients {min(start + step, total)}/{total} examples")
    if config.signs == "mean":
        votes = {n: params[n].grad.float().sign() for n in names}
    model.zero_grad(set_to_none=True)
    return {n: v.sign() for n, v in votes.items()}


def apply_gradfix(tv: TaskVector, signs: dict[str, torch.Tensor], mode: str) -> tuple[TaskVector, dict[str, float]]:
    """Mask (normal) or re-sign (force) each delta; returns the kept fraction per parameter."""
    out = TaskVector("full", metadata=dict(tv.metadata))
    kept = {}
    for name, delta in tv.deltas.items():
        descent = -signs[name].to(delta.device)
        d = delta.float()
        if mode == "normal":
            keep = (d.sign() == descent) & (descent != 0)
            new = torch.where(keep, d, torch.zeros_like(d))
        else:
            keep = descent != 0
            new = d.abs() * descent
        out.deltas[name] = new.to(delta.dtype)
        kept[name] = float(keep.float().mean())
    return out, kept

"""One check for every writer of weights: nothing non-finite is ever written.

A merged model, a transported task vector or an alignment with a NaN or an Inf loads without
complaint and then produces garbage, so each writer calls :func:`require_finite` on what it is
about to write, before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping

import torch

from theseus_ops.errors import InputError


def first_non_finite(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an Inf, else None."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for name, tensor in items:
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def require_finite(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Raise an :class:`InputError` naming the parameter if any tensor holds NaN or Inf."""
    name = first_non_finite(tensors)
    if name is not None:
        raise InputError(f"{what}: {name} would be NaN or Inf; nothing was written")


def require_finite_number(value: float, name: str) -> float:
    """A scalar option or config value (``--alpha``, a LoRA scaling) must be a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def task_vector_tensors(tv) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor a task vector would write, named: deltas, or each LoRA factor of each weight."""
    if tv.vector_format == "full":
        yield from tv.deltas.items()
        return
    for name, factors in tv.lora.items():
        yield f"{name} (lora_A)", factors.a
        yield f"{name} (lora_B)", factors.b

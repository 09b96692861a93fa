"""Transport rules per parameter kind (docs/method.md, transport rules).

Every function takes the source tensor (or LoRA factors), the maps of the spaces it reads and
writes (``None`` for a shared space, whose map is the identity), and the target's shape. A case
that cannot be represented raises :class:`RuleRefused`, which the engine reports per parameter
instead of silently zeroing it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from theseus_ops.errors import InputError
from theseus_ops.transport.family import ParamSpec, Split
from theseus_ops.transport.fused import merge_rows, split_rows
from theseus_ops.transport.head_maps import head_correspondence
from theseus_ops.transport.task_vector import LoraFactors

Map = torch.Tensor | None
# A fused parameter's layout in the source and in the target (None: equal contiguous parts).
Splits = tuple[Split, Split] | None


class RuleRefused(Exception):
    """This parameter cannot be transported; the message says why."""


def _left(t: Map, x: torch.Tensor) -> torch.Tensor:
    """Tᵀ x: move the leading axis from A's coordinates to B's."""
    return x if t is None else t.T.to(x.dtype) @ x


def _right(x: torch.Tensor, t: Map) -> torch.Tensor:
    """x T: move the trailing axis from A's coordinates to B's."""
    return x if t is None else x @ t.to(x.dtype)


def _split(x: torch.Tensor, parts: int, name: str) -> list[torch.Tensor]:
    if x.shape[0] % parts:
        raise RuleRefused(f"{name}: {x.shape[0]} rows do not split into {parts} equal fused parts")
    return list(x.split(x.shape[0] // parts, dim=0))


def _check(shape: Sequence[int], target: Sequence[int], what: str) -> None:
    if tuple(shape) != tuple(target):
        raise RuleRefused(f"{what}: transported shape {tuple(shape)} does not fit the target's {tuple(target)}")


def _map_out(parts: list[torch.Tensor], maps_out: Sequence[Map]) -> torch.Tensor:
    return torch.cat([_left(t, p) for t, p in zip(maps_out, parts, strict=True)], dim=0)


def _map_rows(x: torch.Tensor, maps_out: Sequence[Map], splits: Splits, name: str) -> torch.Tensor:
    """Map each written space's rows; a fused axis is split by the source's layout, merged by the target's."""
    if splits is None:
        return _map_out(_split(x, len(maps_out), name), maps_out)
    source, target = splits
    try:
        parts = split_rows(x, source, name)
        return merge_rows([_left(t, p) for t, p in zip(maps_out, parts, strict=True)], target, name)
    except InputError as exc:
        raise RuleRefused(str(exc)) from None


def _scale(t: Map, x: torch.Tensor) -> torch.Tensor:
    """diag(Tᵀ diag(x) T) = (T∘T)ᵀ x: an elementwise scale (a norm weight) seen in B's coordinates.

    Exact for signed permutations, where Tᵀ x would wrongly negate the scale of a flipped coordinate;
    the best diagonal for any other orthogonal T. Linear in x, so a (1 + w) norm's delta, which is
    the delta of its scale 1 + w, is transported the same way.
    """
    return x if t is None else (t * t).T.to(x.dtype) @ x


def _resize_rows(rows: torch.Tensor, count: int, kind: str, name: str) -> torch.Tensor:
    """Fit a [rows, d] table to ``count`` rows: positions pad or truncate, grids resample."""
    if rows.shape[0] == count:
        return rows
    if kind == "vocab":
        raise RuleRefused(f"{name}: vocabularies differ ({rows.shape[0]} vs {count} rows); rows cannot be mapped")
    if kind == "positions":
        out = rows.new_zeros(count, rows.shape[1])
        keep = min(count, rows.shape[0])
        out[:keep] = rows[:keep]
        return out
    side_in, side_out = math.isqrt(rows.shape[0] - 1), math.isqrt(count - 1)
    if side_in**2 != rows.shape[0] - 1 or side_out**2 != count - 1:
        raise RuleRefused(f"{name}: {rows.shape[0]} and {count} rows are not CLS plus a square grid")
    grid = rows[1:].T.reshape(1, rows.shape[1], side_in, side_in)
    grid = F.interpolate(grid.float(), size=(side_out, side_out), mode="bilinear", align_corners=False)
    return torch.cat([rows[:1], grid.to(rows.dtype).reshape(rows.shape[1], -1).T], dim=0)


def transport_dense(
    spec: ParamSpec,
    name: str,
    tensor: torch.Tensor,
    map_in: Map,
    maps_out: Sequence[Map],
    target_shape: Sequence[int],
    splits: Splits = None,
) -> torch.Tensor:
    """τ_B for one full-delta tensor, in the target's storage layout and dtype."""
    x = tensor.float()
    if spec.rule == "linear":
        logical = x.T if spec.layout == "in_out" else x
        moved = _right(_map_rows(logical, maps_out, splits, name), map_in)
        out = moved.T if spec.layout == "in_out" else moved
    elif spec.rule in ("bias", "norm"):
        out = _map_rows(x, maps_out, splits, name)
    elif spec.rule == "scale":
        out = _scale(maps_out[0], x)
    elif spec.rule == "vector":
        out = _right(x.reshape(-1, x.shape[-1]), maps_out[0]).reshape(*x.shape[:-1], -1)
    elif spec.rule == "embedding":
        rows = _right(x.reshape(-1, x.shape[-1]), maps_out[0])
        count = math.prod(target_shape[:-1])
        out = _resize_rows(rows, count, spec.rows or "vocab", name).reshape(*target_shape[:-1], -1)
    elif spec.rule == "patch_conv":
        out = _transport_patch(x, maps_out[0], target_shape, name)
    elif spec.rule == "head_columns":
        out = _head_columns(x, maps_out[0], target_shape, name)
    else:  # pragma: no cover - the family loader rejects unknown rules
        raise RuleRefused(f"{name}: no rule {spec.rule!r}")
    _check(out.shape, target_shape, name)
    return out.to(tensor.dtype)


def _head_columns(x: torch.Tensor, t: Map, target_shape: Sequence[int], name: str) -> torch.Tensor:
    """A [rows, heads] table (T5's relative position bias): each column follows its head to the target."""
    if x.dim() != 2 or len(target_shape) != 2 or x.shape[0] != target_shape[0]:
        raise RuleRefused(f"{name}: a per-head table {tuple(x.shape)} does not fit {tuple(target_shape)}")
    if t is None:
        return x
    try:
        heads = head_correspondence(t, x.shape[1], target_shape[1])
    except ValueError as exc:
        raise RuleRefused(f"{name}: {exc}") from None
    return x @ heads.to(x.dtype)


def _transport_patch(x: torch.Tensor, t: Map, target_shape: Sequence[int], name: str) -> torch.Tensor:
    """A patch-embedding conv [d, C, p, p]: map the output channels, resample the kernel if p differs."""
    if x.dim() != 4 or len(target_shape) != 4 or x.shape[1] != target_shape[1]:
        raise RuleRefused(f"{name}: patch kernels {tuple(x.shape)} and {tuple(target_shape)} are incompatible")
    moved = _left(t, x.reshape(x.shape[0], -1)).reshape(-1, *x.shape[1:])
    if tuple(moved.shape[2:]) != tuple(target_shape[2:]):
        area = (x.shape[2] * x.shape[3]) / (target_shape[2] * target_shape[3])
        moved = F.interpolate(moved, size=tuple(target_shape[2:]), mode="bilinear", align_corners=False) * area
    return moved


def transport_lora(
    spec: ParamSpec,
    name: str,
    factors: LoraFactors,
    map_in: Map,
    maps_out: Sequence[Map],
    target_shape: Sequence[int],
    splits: Splits = None,
) -> LoraFactors:
    """(T_oᵀ B)(A T_i): the same rank, still factored, shaped for the target's weight."""
    a, b = factors.a.float(), factors.b.float()
    if factors.embedding:
        if spec.rule != "embedding":
            raise RuleRefused(f"{name}: an embedding adapter on a {spec.rule} parameter")
        if a.shape[1] != target_shape[0]:
            raise RuleRefused(f"{name}: vocabularies differ ({a.shape[1]} vs {target_shape[0]} rows)")
        new_a, new_b = a, _left(maps_out[0], b)
        logical = (target_shape[1], target_shape[0])
    elif spec.rule == "linear":
        new_a = _right(a, map_in)
        new_b = _map_rows(b, maps_out, splits, name)
        logical = tuple(reversed(target_shape)) if spec.layout == "in_out" else tuple(target_shape)
    else:
        raise RuleRefused(f"{name}: LoRA on a {spec.rule} parameter is not supported")
    _check((new_b.shape[0], new_a.shape[1]), logical, name)
    return LoraFactors(new_a.to(factors.a.dtype), new_b.to(factors.b.dtype), factors.scaling, factors.embedding)

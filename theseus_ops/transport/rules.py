"""The arithmetic of the transport rules (docs/method.md, transport rules), one function per rule.

Each takes the source tensor (or LoRA factors) as float and the :class:`Operands`: the maps of the
spaces it reads and writes (``None`` for a shared space, whose map is the identity) and the target's
shape. Which function serves which rule, and what else a rule is, is said once, in
:mod:`~theseus_ops.transport.rule_table`. A case that cannot be represented raises
:class:`RuleRefused`, which the engine reports per parameter instead of silently zeroing it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import torch
import torch.nn.functional as F

from theseus_ops.errors import InputError
from theseus_ops.transport.fused import merge_rows, split_rows
from theseus_ops.transport.head_maps import head_correspondence

if TYPE_CHECKING:  # the architecture loader imports the rule table, hence this module: no import back at run time
    from theseus_ops.transport.architecture import ParamSpec, Split

Map = torch.Tensor | None
# A fused parameter's layout in the source and in the target (None: equal contiguous parts).
Splits: TypeAlias = "tuple[Split, Split] | None"
# How an embedding table's rows are indexed, which says how a table is fitted to another row count.
ROWS_INDEXED_BY = ("vocab", "positions", "cls_grid")


class RuleRefused(Exception):
    """This parameter cannot be transported; the message says why."""


@dataclass(frozen=True)
class Operands:
    """What a rule needs besides the tensor: the parameter, the spaces' maps, the target's shape.

    ``name`` is the source parameter's, for messages; ``splits`` a fused parameter's layouts.
    """

    spec: ParamSpec
    name: str
    map_in: Map
    maps_out: Sequence[Map]
    target_shape: Sequence[int]
    splits: Splits = None


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


def check_shape(shape: Sequence[int], target: Sequence[int], what: str) -> None:
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


def _resize_rows(rows: torch.Tensor, count: int, indexed_by: str, name: str) -> torch.Tensor:
    """Fit a [rows, d] table to ``count`` rows: positions pad or truncate, grids resample."""
    if rows.shape[0] == count:
        return rows
    if indexed_by == "vocab":
        raise RuleRefused(f"{name}: vocabularies differ ({rows.shape[0]} vs {count} rows); rows cannot be mapped")
    if indexed_by == "positions":
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


# Dense deltas: each returns the delta in the target's storage layout (the caller checks the shape).


def dense_linear(x: torch.Tensor, op: Operands) -> torch.Tensor:
    """T_oᵀ τ T_i, in the stored layout (Conv1D weights are [in, out])."""
    logical = x.T if op.spec.layout == "in_out" else x
    moved = _right(_map_rows(logical, op.maps_out, op.splits, op.name), op.map_in)
    return moved.T if op.spec.layout == "in_out" else moved


def dense_rows(x: torch.Tensor, op: Operands) -> torch.Tensor:
    """T_oᵀ τ for a vector on its written spaces (a bias, a norm's shift or scale), fused or not."""
    return _map_rows(x, op.maps_out, op.splits, op.name)


def dense_scale(x: torch.Tensor, op: Operands) -> torch.Tensor:
    """diag(T_oᵀ diag(τ) T_o): a norm weight as a scale (see ``_scale``)."""
    return _scale(op.maps_out[0], x)


def dense_vector(x: torch.Tensor, op: Operands) -> torch.Tensor:
    """τ T on the trailing axis (a CLS token, position rows the model adds unchanged)."""
    return _right(x.reshape(-1, x.shape[-1]), op.maps_out[0]).reshape(*x.shape[:-1], -1)


def dense_embedding(x: torch.Tensor, op: Operands) -> torch.Tensor:
    """τ T_e on the columns, then the rows fitted to the target's count by what their ``rows`` are indexed by."""
    rows = _right(x.reshape(-1, x.shape[-1]), op.maps_out[0])
    count = math.prod(op.target_shape[:-1])
    return _resize_rows(rows, count, op.spec.rows or "vocab", op.name).reshape(*op.target_shape[:-1], -1)


def dense_patch_conv(x: torch.Tensor, op: Operands) -> torch.Tensor:
    """A patch-embedding conv [d, C, p, p]: map the output channels, resample the kernel if p differs."""
    target_shape = op.target_shape
    if x.dim() != 4 or len(target_shape) != 4 or x.shape[1] != target_shape[1]:
        raise RuleRefused(f"{op.name}: patch kernels {tuple(x.shape)} and {tuple(target_shape)} are incompatible")
    moved = _left(op.maps_out[0], x.reshape(x.shape[0], -1)).reshape(-1, *x.shape[1:])
    if tuple(moved.shape[2:]) != tuple(target_shape[2:]):
        area = (x.shape[2] * x.shape[3]) / (target_shape[2] * target_shape[3])
        moved = F.interpolate(moved, size=tuple(target_shape[2:]), mode="bilinear", align_corners=False) * area
    return moved


def dense_head_columns(x: torch.Tensor, op: Operands) -> torch.Tensor:
    """A [rows, heads] table (T5's relative position bias): each column follows its head to the target."""
    target_shape, t = op.target_shape, op.maps_out[0]
    if x.dim() != 2 or len(target_shape) != 2 or x.shape[0] != target_shape[0]:
        raise RuleRefused(f"{op.name}: a per-head table {tuple(x.shape)} does not fit {tuple(target_shape)}")
    if t is None:
        return x
    try:
        heads = head_correspondence(t, x.shape[1], target_shape[1])
    except ValueError as exc:
        raise RuleRefused(f"{op.name}: {exc}") from None
    return x @ heads.to(x.dtype)


# LoRA factors: each returns (A', B') and the logical [out, in] shape B' A' must have.
LoraResult = tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]


def lora_linear(a: torch.Tensor, b: torch.Tensor, op: Operands) -> LoraResult:
    """(T_oᵀ B)(A T_i): the same rank, still factored."""
    logical = tuple(reversed(op.target_shape)) if op.spec.layout == "in_out" else tuple(op.target_shape)
    return _right(a, op.map_in), _map_rows(b, op.maps_out, op.splits, op.name), logical


def lora_embedding(a: torch.Tensor, b: torch.Tensor, op: Operands) -> LoraResult:
    """PEFT's embedding adapter (A [r, vocab], B [d, r]): B's rows move, the shared vocabulary stays."""
    if a.shape[1] != op.target_shape[0]:
        raise RuleRefused(f"{op.name}: vocabularies differ ({a.shape[1]} vs {op.target_shape[0]} rows)")
    return a, _left(op.maps_out[0], b), (op.target_shape[1], op.target_shape[0])

"""The rule table: every transport rule a architecture file may name, each defined here, once.

A rule is all of what a parameter's ``rule`` decides: which keys its declaration needs and takes (the
architecture loader asks), how it moves a dense delta and a LoRA adapter (the engine asks), and which of its
spaces' widths its shapes give (what pad and naive maps are built from). A new rule is a new row; a new
architecture whose parameters use the existing rules is a new architecture file and no code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch

from theseus_ops.errors import InputError
from theseus_ops.transport import rules
from theseus_ops.transport.head_maps import head_block_map
from theseus_ops.transport.rules import ROWS_INDEXED_BY, LoraResult, Map, Operands, RuleRefused, Splits, check_shape
from theseus_ops.transport.task_vector import LoraFactors

if TYPE_CHECKING:  # the architecture loader imports this table: no import back at run time
    from theseus_ops.transport.architecture import ParamSpec, SiteSpec
    from theseus_ops.transport.engine import TargetPlan

Dense = Callable[[torch.Tensor, Operands], torch.Tensor]
Lora = Callable[[torch.Tensor, torch.Tensor, Operands], LoraResult]
# (space key, width in A, width in B) for each space a parameter's source and target shapes measure.
WidthPairs = list[tuple[str | None, int, int]]
Widths = Callable[["ParamSpec", Sequence[int], "TargetPlan"], WidthPairs]
SiteOf = Callable[[str], "SiteSpec | None"]

# The parameter keys only some rules take (besides ``reads`` and ``rows``, which a rule needs or refuses).
OPTIONS = frozenset({"split", "head_block", "output_scale"})


@dataclass(frozen=True)
class Rule:
    """One transport rule.

    ``reads``: a parameter names the space it reads (a linear weight's input), and only such a rule's do.
    ``rows``: the parameter is a table whose rows are indexed one of the ``ROWS_INDEXED_BY`` ways, and says which.
    ``options``: which of ``OPTIONS`` it may declare: a fused ``split``, a ``head_block`` weight, an
    ``output_scale``. ``check``: what else its declaration must satisfy, given the sites it references.
    ``lora`` / ``lora_embedding``: its move of a PEFT linear / embedding adapter; None refuses the adapter.
    ``widths``: None when its shapes say nothing about its spaces' full widths.
    """

    dense: Dense
    widths: Widths | None
    lora: Lora | None = None
    lora_embedding: Lora | None = None
    reads: bool = False
    rows: bool = False
    options: frozenset[str] = frozenset()
    check: Callable[[ParamSpec, SiteOf, str], None] | None = None

    def __post_init__(self) -> None:
        if not self.options <= OPTIONS:
            raise ValueError(f"rule options {sorted(self.options - OPTIONS)} are none of {sorted(OPTIONS)}")


def _part_widths(source: int, target: int, t: TargetPlan) -> tuple[list[int], list[int]]:
    """Widths of each written space in A and in B: equal parts, or the fused layouts' parts."""
    k = len(t.writes)
    if t.splits is None or k == 1:
        return [source // k] * k, [target // k] * k
    widths = []
    for split, total in zip(t.splits, (source, target), strict=True):
        try:
            widths.append([split.groups * w for w in split.widths(total, t.name)])
        except InputError:
            widths.append([total // k] * k)  # the rule refuses this parameter with the reason
    return widths[0], widths[1]


def _linear_widths(spec: ParamSpec, src: Sequence[int], t: TargetPlan) -> WidthPairs:
    """The input space from the in axis, the written spaces from the (possibly fused) out axis."""
    s_out, s_in = (src[1], src[0]) if spec.layout == "in_out" else (src[0], src[1])
    d_out, d_in = (t.shape[1], t.shape[0]) if spec.layout == "in_out" else (t.shape[0], t.shape[1])
    return [(t.reads, s_in, d_in), *zip(t.writes, *_part_widths(s_out, d_out, t), strict=True)]


def _row_widths(spec: ParamSpec, src: Sequence[int], t: TargetPlan) -> WidthPairs:
    """A vector on its written spaces (a bias, a norm weight), fused or not."""
    return list(zip(t.writes, *_part_widths(src[0], t.shape[0], t), strict=True))


def _leading_widths(spec: ParamSpec, src: Sequence[int], t: TargetPlan) -> WidthPairs:
    """The written space on the leading axis (a patch conv's output channels)."""
    return [(t.writes[0], src[0], t.shape[0])]


def _trailing_widths(spec: ParamSpec, src: Sequence[int], t: TargetPlan) -> WidthPairs:
    """The written space on the trailing axis (an embedding table's columns, a CLS vector)."""
    return [(t.writes[0], src[-1], t.shape[-1])]


def _check_head_columns(spec: ParamSpec, site_of: SiteOf, name: str) -> None:
    found = site_of(spec.writes[0])
    if len(spec.writes) != 1 or found is None or found.map is None:
        raise ValueError(f"{name}: head_columns is for a [rows, heads] table written to one site with a "
                         "per_head map (a relative position bias)")


RULE_TABLE: Mapping[str, Rule] = MappingProxyType({
    "linear": Rule(rules.dense_linear, _linear_widths, lora=rules.lora_linear, reads=True,
                   options=frozenset({"split"})),
    "bias": Rule(rules.dense_rows, _row_widths, options=frozenset({"split", "head_block"})),
    "norm": Rule(rules.dense_rows, _row_widths, options=frozenset({"head_block"})),
    "scale": Rule(rules.dense_scale, _row_widths, options=frozenset({"head_block"})),
    "embedding": Rule(rules.dense_embedding, _trailing_widths, lora_embedding=rules.lora_embedding, rows=True,
                      options=frozenset({"output_scale"})),
    "vector": Rule(rules.dense_vector, _trailing_widths),
    "patch_conv": Rule(rules.dense_patch_conv, _leading_widths),
    # One column per head: a head count, not a width, so it measures no space.
    "head_columns": Rule(rules.dense_head_columns, None, check=_check_head_columns),
})
RULES = tuple(RULE_TABLE)


def check_rule(spec: ParamSpec, where: str) -> None:
    """The rule exists, and the parameter names a read space and what its rows are indexed by exactly when its
    rule needs them."""
    rule = RULE_TABLE.get(spec.rule)
    if rule is None:
        raise ValueError(f"{where}: {spec.name}: unknown rule {spec.rule!r}; known: {RULES}")
    if rule.reads != (spec.reads is not None):
        raise ValueError(f"{where}: {spec.name}: 'reads' is required for, and only for, linear weights")
    if rule.rows != (spec.rows is not None) or (spec.rows and spec.rows not in ROWS_INDEXED_BY):
        raise ValueError(f"{where}: {spec.name}: embeddings need rows in {ROWS_INDEXED_BY}, others none")


def check_options(spec: ParamSpec, site_of: SiteOf, name: str) -> None:
    """The parameter declares only options its rule takes, each on a fitting site (after ``check_rule``)."""
    rule = RULE_TABLE[spec.rule]
    if spec.split is not None and "split" not in rule.options:
        raise ValueError(f"{name}: only linear weights and biases are fused")
    if spec.head_block:
        found = site_of(spec.writes[0])
        if "head_block" not in rule.options or len(spec.writes) != 1 or found is None or found.map is None:
            raise ValueError(f"{name}: head_block is for a norm or bias of one head_dim, written to one site "
                             "with a per_head map")
    if rule.check is not None:
        rule.check(spec, site_of, name)
    if spec.output_scale is not None and "output_scale" not in rule.options:
        raise ValueError(f"{name}: output_scale is for embedding tables only")


def param_widths(spec: ParamSpec, source_shape: Sequence[int], target: TargetPlan) -> WidthPairs:
    """(space, width in A, width in B) for the spaces one target of a parameter measures; shared ones included."""
    rule = RULE_TABLE[spec.rule]
    if spec.head_block or rule.widths is None:
        return []  # a head_dim-wide weight says nothing about its space's full width
    return rule.widths(spec, source_shape, target)


def _head_block_maps(maps_out: Sequence[Map], source: torch.Tensor, shape: Sequence[int], name: str) -> list[Map]:
    """The head_dim block of each written space's per-head map, for a weight shared by every head."""
    try:
        return [None if m is None else head_block_map(m, source.shape[0], shape[0]) for m in maps_out]
    except ValueError as exc:
        raise RuleRefused(f"{name}: {exc}") from None


def transport_dense(
    spec: ParamSpec,
    name: str,
    tensor: torch.Tensor,
    map_in: Map,
    maps_out: Sequence[Map],
    target_shape: Sequence[int],
    splits: Splits = None,
) -> torch.Tensor:
    """τ_B for one full-delta tensor, in the target's storage layout and dtype.

    A float64 tensor is moved in float64 (the weight prior differentiates through this); others in float32.
    """
    if spec.head_block:
        maps_out = _head_block_maps(maps_out, tensor, target_shape, name)
    compute = tensor if tensor.dtype == torch.float64 else tensor.float()
    out = RULE_TABLE[spec.rule].dense(compute, Operands(spec, name, map_in, maps_out, target_shape, splits))
    check_shape(out.shape, target_shape, name)
    return out.to(tensor.dtype)


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
    rule = RULE_TABLE[spec.rule]
    move = rule.lora_embedding if factors.embedding else rule.lora
    if move is None:
        raise RuleRefused(f"{name}: an embedding adapter on a {spec.rule} parameter" if factors.embedding
                          else f"{name}: LoRA on a {spec.rule} parameter is not supported")
    new_a, new_b, logical = move(factors.a.float(), factors.b.float(),
                                 Operands(spec, name, map_in, maps_out, target_shape, splits))
    check_shape((new_b.shape[0], new_a.shape[1]), logical, name)
    return LoraFactors(new_a.to(factors.a.dtype), new_b.to(factors.b.dtype), factors.scaling, factors.embedding)

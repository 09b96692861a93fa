"""Plan and execute a transport: which target parameter each task-vector entry becomes, through
which spaces, and a report line for every entry, transported or not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from theseus_ops.transport.architecture import (
    MAIN_STACK,
    ArchitectureSpec,
    ParamSpec,
    SiteSpec,
    Split,
    config_value,
    is_shared,
    parse_space_key,
    resolve_name,
    space_key,
)
from theseus_ops.transport.head_maps import HeadStructure
from theseus_ops.transport.layer_map import LayerMap
from theseus_ops.transport.rule_table import param_widths, transport_dense, transport_lora
from theseus_ops.transport.rules import RuleRefused
from theseus_ops.transport.statistics import ResolvedSite, SpaceRequest
from theseus_ops.transport.task_vector import LoraFactors, TaskVector

Config = Mapping[str, Any]


@dataclass(frozen=True)
class TargetPlan:
    """One target parameter fed by a source parameter, and the spaces its rule uses.

    ``splits``: a fused parameter's layout in the source and in the target; ``factor`` multiplies the
    transported delta (an embedding the model scales by a width-dependent constant: A's over B's).
    """

    name: str
    layer: int | None
    reads: str | None
    writes: tuple[str, ...]
    shape: tuple[int, ...]
    splits: tuple[Split, Split] | None = None
    factor: float = 1.0


@dataclass(frozen=True)
class ParamPlan:
    """What happens to one task-vector entry. ``reason`` set means it cannot be transported."""

    source_name: str
    rule: str | None
    source_layer: int | None
    targets: tuple[TargetPlan, ...] = ()
    reason: str | None = None
    spec: ParamSpec | None = field(default=None, compare=False, repr=False)

    def spaces(self) -> set[str]:
        keys = set()
        for t in self.targets:
            keys.update(k for k in (t.reads, *t.writes) if k and not is_shared(k))
        return keys


@dataclass
class ParamRecord:
    """One line of the report."""

    name: str
    status: str
    rule: str | None
    targets: list[str]
    norm_before: float
    norm_after: float | None
    spaces: list[str]
    reason: str | None = None

    @property
    def norm_lost_share(self) -> float | None:
        """Share of the update's squared norm the maps did not carry: 1 − (‖τ_B‖/‖τ_A‖)².

        With the ``project`` fill and spaces that do not narrow, this is exactly the share of the update
        that lies in directions the calibration data left undetermined; where a space narrows, it also
        counts what falls outside the target. A large share means the transported vector is missing much
        of the task, however small the spaces' residuals are.
        """
        if self.norm_after is None:
            return None
        if self.norm_before <= 0:
            return 0.0
        return min(1.0, max(0.0, 1.0 - (self.norm_after / self.norm_before) ** 2))

    def as_dict(self) -> dict:
        return {**self.__dict__, "norm_lost_share": self.norm_lost_share}


def storage_delta(architecture: ArchitectureSpec, name: str, tv: TaskVector) -> torch.Tensor:
    """An entry's dense delta in the parameter's storage layout (Conv1D weights are [in, out]).

    The layout comes from the architecture spec, never from comparing shapes: a square Conv1D
    weight looks the same either way round.
    """
    if tv.vector_format == "full":
        return tv.deltas[name]
    factors = tv.lora[name]
    delta = factors.dense()
    found = architecture.match(name)
    if found is not None and found[0].layout == "in_out" and not factors.embedding:
        delta = delta.T
    return delta


def detect_prefix(architecture: ArchitectureSpec, names: list[str]) -> str:
    """The naming prefix a model uses (e.g. ``vision_model.`` for a full CLIP model)."""
    counts = {p: 0 for p in architecture.prefixes}
    for name in names:
        found = architecture.match(name)
        if found and not found[0].absolute:  # a head's name says nothing about the backbone's prefix
            counts[found[2]] += 1
    return max(counts, key=lambda p: (counts[p], -len(p)))


def _factor(spec: ParamSpec, source_config: Config, target_config: Config) -> float:
    """A's output scale over B's, for an embedding the model multiplies by config^power (Gemma: √d)."""
    if spec.output_scale is None:
        return 1.0
    ref, power = spec.output_scale
    scales = [float(config_value(c, ref, f"{spec.name} output_scale")) ** power for c in (source_config, target_config)]
    return scales[0] / scales[1]


def plan_transport(
    architecture: ArchitectureSpec,
    names: list[str],
    target_shapes: Mapping[str, tuple[int, ...]],
    layer_map: LayerMap,
    target_prefix: str,
    source_config: Config | None = None,
    target_config: Config | None = None,
) -> list[ParamPlan]:
    """Resolve every task-vector entry to its target parameters and spaces.

    The configs resolve what the architecture reads from them (fused layouts, embedding scales); architectures
    that read nothing work without.
    """
    source_config, target_config = source_config or {}, target_config or {}
    plans = []
    for name in names:
        found = architecture.match(name)
        if found is None:
            plans.append(ParamPlan(name, None, None,
                                   reason=f"no rule in architecture {architecture.name} for this parameter"))
            continue
        spec, layer, _prefix = found
        layers: list[int | None] = [None]
        if spec.layered:
            assert layer is not None
            layers = list(layer_map.for_stack(spec.stack).targets_of(layer))
            if spec.first_layer:
                layers = [j for j in layers if j == 0]
            if not layers:
                which = "" if spec.stack == "layers" else f"{spec.stack} "
                plans.append(ParamPlan(name, spec.rule, layer, reason=f"source {which}layer {layer} feeds no target "
                                       f"layer under layer map {layer_map.scheme}", spec=spec))
                continue
        targets, reason = [], None
        for j in layers:
            target_name = resolve_name(spec.name, j, target_prefix, spec.absolute)
            if target_name not in target_shapes:
                tied = f" (the target ties it to {spec.tied_to})" if spec.tied_to else ""
                reason = f"target has no parameter {target_name}{tied}"
                break

            def key(site: str, j: int | None = j, stack: str | None = spec.stack) -> str:
                return space_key(site, j, stack if architecture.is_layer_site(site, stack) else None)

            splits = None
            if spec.split is not None:
                layout = architecture.splits[spec.split]
                splits = (layout.resolve(source_config, f"{name} (source split {spec.split})"),
                          layout.resolve(target_config, f"{target_name} (target split {spec.split})"))
            targets.append(TargetPlan(
                name=target_name,
                layer=j,
                reads=key(spec.reads) if spec.reads else None,
                writes=tuple(key(s) for s in spec.writes),
                shape=tuple(target_shapes[target_name]),
                splits=splits,
                factor=_factor(spec, source_config, target_config),
            ))
        if reason:
            plans.append(ParamPlan(name, spec.rule, layer, reason=reason, spec=spec))
        else:
            plans.append(ParamPlan(name, spec.rule, layer, tuple(targets), spec=spec))
    return plans


def _resolved_site(architecture: ArchitectureSpec, site: SiteSpec, layer: int | None, prefix: str, config: Config,
                   what: str) -> ResolvedSite:
    modules = tuple(resolve_name(m, layer, prefix, site.absolute) for m in site.module)
    if site.split is not None:
        layout = architecture.splits[site.split]
        return ResolvedSite(modules, site.capture, site.part, len(layout.ratio), layout.resolve(config, what),
                            site.sequence)
    return ResolvedSite(modules, site.capture, site.chunk, site.chunks, sequence=site.sequence)


def space_requests(
    architecture: ArchitectureSpec,
    keys: set[str],
    layer_map: LayerMap,
    source_prefix: str,
    target_prefix: str,
    source_config: Config | None = None,
    target_config: Config | None = None,
) -> list[SpaceRequest]:
    """Site pairs for the given target-space keys: target layer j reads source layer sources[j].

    Each side's fused layouts and head counts resolve from its own config.
    """
    source_config, target_config = source_config or {}, target_config or {}
    requests = []
    for key in sorted(keys):
        stack, j, site_name = parse_space_key(key, architecture)
        if stack is not None:
            source_layer = layer_map.for_stack(stack).sources[j]
            if source_layer is None:
                continue
            site = architecture.stacks[stack].sites[site_name]
            source_key = space_key(site_name, source_layer, stack)
            follows = space_key(site.follows, j, stack) if site.follows else None
        else:
            j = source_layer = None
            site = architecture.global_sites[key]
            source_key = key
            follows = _global_follows(architecture, site, layer_map)
        requests.append(SpaceRequest(
            key=key,
            source_key=source_key,
            source=_resolved_site(architecture, site, source_layer, source_prefix, source_config,
                                  f"space {key} (source)"),
            target=_resolved_site(architecture, site, j, target_prefix, target_config, f"space {key} (target)"),
            structure=(HeadStructure.resolve(site.map, source_config, target_config, f"space {key}")
                       if site.map is not None else None),
            follows=follows,
        ))
    return requests


def _global_follows(architecture: ArchitectureSpec, site: SiteSpec, layer_map: LayerMap) -> str | None:
    """The key of the space a global site follows: a global one, or a main-stack site of the last layer."""
    if site.follows is None or site.follows in architecture.global_sites:
        return site.follows
    sources = layer_map.for_stack(MAIN_STACK).sources
    if not sources or sources[-1] is None:
        return None
    return space_key(site.follows, len(sources) - 1, MAIN_STACK)


def all_space_keys(architecture: ArchitectureSpec, layer_map: LayerMap) -> set[str]:
    """Every space of the architecture for a layer map: what ``prepare`` estimates for reuse."""
    keys = set(architecture.global_sites)
    for name, stack in architecture.stacks.items():
        for j, source in enumerate(layer_map.for_stack(name).sources):
            if source is not None:
                keys.update(space_key(site, j, name) for site in stack.sites)
    return keys


def space_widths(plans: list[ParamPlan], source_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, int]]:
    """(width in A, width in B) of each space, read off the parameters that use it (for pad/naive).

    Which axis of a parameter measures which space is its rule's (``rule_table``); the first parameter wins.
    """
    widths: dict[str, tuple[int, int]] = {}
    for plan in plans:
        if plan.reason or plan.spec is None:
            continue
        for t in plan.targets:
            for key, a, b in param_widths(plan.spec, source_shapes[plan.source_name], t):
                if key and not is_shared(key):
                    widths.setdefault(key, (a, b))
    return widths


def _scaled(value: torch.Tensor | LoraFactors, factor: float) -> torch.Tensor | LoraFactors:
    if factor == 1.0:
        return value
    if isinstance(value, LoraFactors):
        return LoraFactors(value.a, (value.b.double() * factor).to(value.b.dtype), value.scaling, value.embedding)
    return (value.double() * factor).to(value.dtype)


def execute_plan(
    task_vector: TaskVector,
    plans: list[ParamPlan],
    maps: Mapping[str, torch.Tensor],
) -> tuple[TaskVector, list[ParamRecord]]:
    """Apply the rules with the given space maps; every entry gets a record."""
    out = TaskVector(task_vector.vector_format, adapter_config=task_vector.adapter_config)
    records = []
    for plan in plans:
        before = task_vector.norm(plan.source_name)
        if plan.reason:
            records.append(ParamRecord(plan.source_name, "left_out", plan.rule, [], before, None, [], plan.reason))
            continue
        produced, reason = {}, None
        for t in plan.targets:
            missing = [k for k in (t.reads, *t.writes) if k and not is_shared(k) and k not in maps]
            if missing:
                reason = f"no map for space(s) {', '.join(missing)}"
                break
            map_in = maps[t.reads] if t.reads and not is_shared(t.reads) else None
            maps_out = [None if is_shared(w) else maps[w] for w in t.writes]
            try:
                if task_vector.vector_format == "full":
                    value = transport_dense(plan.spec, plan.source_name, task_vector.deltas[plan.source_name],
                                            map_in, maps_out, t.shape, t.splits)
                else:
                    value = transport_lora(plan.spec, plan.source_name, task_vector.lora[plan.source_name],
                                           map_in, maps_out, t.shape, t.splits)
                produced[t.name] = _scaled(value, t.factor)
            except RuleRefused as exc:
                reason = str(exc)
                break
        spaces = sorted(plan.spaces())
        if reason:
            records.append(ParamRecord(plan.source_name, "left_out", plan.rule, [], before, None, spaces, reason))
            continue
        store = out.deltas if out.vector_format == "full" else out.lora
        after = 0.0
        for name, value in produced.items():
            store[name] = value
            after += out.norm(name) ** 2
        records.append(ParamRecord(plan.source_name, "transported", plan.rule, sorted(produced), before,
                                   math.sqrt(after), spaces))
    return out, records

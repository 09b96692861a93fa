"""Theseus' map estimation: statistics per coordinate space, then one polar factor per space."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, MutableMapping

import torch

from theseus_ops.errors import InputError
from theseus_ops.progress import Ticker, memory_note
from theseus_ops.transport.engine import ParamPlan
from theseus_ops.transport.maps import MapOptions, SpaceQuality, estimate_space_map
from theseus_ops.transport.methods.base import BlockSegment, StreamedModels
from theseus_ops.transport.statistics import SpaceRequest, collect_statistics
from theseus_ops.transport.weight_prior import FilteredWeights, weight_matching_priors, with_followed_maps

# (source names, target names) -> both bases' named weights, possibly read from disk on access
BaseState = Callable[[set[str], set[str]], tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]]

log = logging.getLogger("theseus_ops")


def estimate_maps(
    source_model: torch.nn.Module,
    target_model: torch.nn.Module,
    requests: list[SpaceRequest],
    source_data: dict[str, torch.Tensor],
    target_data: dict[str, torch.Tensor],
    *,
    layout: str,
    options: MapOptions,
    batch_size: int,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
    probes: Callable[[int], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] | None = None,
    weight_plans: Callable[[], list[ParamPlan]] | None = None,
    base_state: BaseState | None = None,
    release_models: Callable[[], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, SpaceQuality]]:
    """Statistics for every requested space, then one polar factor per space.

    With the ``project`` fill and ``probes`` given, spaces the calibration data leaves partly
    undetermined are completed from a second statistics pass over the probe inputs (only those spaces
    are hooked), see ``maps.complete_from_probes``. With the ``weights`` fill and ``weight_plans`` given,
    they are completed from the base weights instead (``weight_prior``): no second forward pass.

    ``release_models``: called, with this function's own references dropped, once no forward pass is
    left (every fill but ``project``, whose probes run the models again), so that a caller holding no
    other reference frees both bases before the maps and the completion (docs/memory.md).
    """
    stats = collect_statistics(
        source_model, target_model, requests, source_data, target_data,
        layout=layout, batch_size=batch_size, device=device, with_gram=options.needs_gram, progress=progress,
        precision=options.precision,
    )
    if release_models is not None and not (probes is not None and options.fill == "project"):
        source_model = target_model = None
        release_models()
    maps, quality = {}, {}
    by_key = {r.key: r for r in requests}
    complete = (probes is not None and options.fill == "project") or (
        weight_plans is not None and base_state is not None and options.fill == "weights")
    _data_maps(stats, by_key, maps, quality, options=options, keep_open=complete, progress=progress)
    if complete and stats and options.fill == "weights":
        _complete_from_weights(weight_plans(), base_state, stats, by_key, maps, quality,
                               options=options, progress=progress)
    elif complete and stats:
        _complete_from_probes(source_model, target_model, [by_key[k] for k in sorted(stats)], stats,
                              maps, quality, probes, layout=layout, options=options, batch_size=batch_size,
                              device=device, progress=progress)
    _warn_underdetermined(maps, quality, options)
    if progress:
        progress(f"maps: {len(maps)} spaces estimated")
    return maps, quality


def _warn_underdetermined(maps: Mapping[str, torch.Tensor], quality: dict[str, SpaceQuality],
                          options: MapOptions) -> None:
    """A warning per space with fewer activation rows than its width: what filled the rest, what was dropped."""
    for key in sorted(maps):
        q = quality[key]
        if q.underdetermined:
            if options.fill == "pad":
                what = f"{q.prior_filled + q.seeded_filled} filled by the pad prior"
            else:
                filled, source = ((q.weight_filled, "the base weights") if options.fill == "weights"
                                  else (q.probe_filled, "probe inputs"))
                what = f"{filled} filled from {source}, {max(0, q.undetermined - filled)} dropped"
            log.warning("space %s: %d activation rows for width %d; the map is underdetermined "
                        "(data rank %d, %s)", key, q.rows, max(q.width_a, q.width_b), q.data_rank, what)


def estimate_maps_by_block(
    streamed: StreamedModels,
    source_data: dict[str, torch.Tensor],
    target_data: dict[str, torch.Tensor],
    store: MutableMapping[str, torch.Tensor],
    *,
    layout: str,
    options: MapOptions,
    batch_size: int,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
    weight_plans: Callable[[], list[ParamPlan]] | None = None,
    base_state: BaseState | None = None,
) -> tuple[MutableMapping[str, torch.Tensor], dict[str, SpaceQuality]]:
    """:func:`estimate_maps`, one segment of both models at a time (``prepare --stream``, docs/memory.md).

    Each segment (what runs before the blocks, each block, what runs after them) is loaded, run over
    every calibration batch on the hidden states the segment before it left, and freed; its spaces'
    statistics become maps, completed group by group as in :func:`estimate_maps` (groups never span
    two segments, which is checked), and each map goes to ``store`` (a file, for a model whose maps
    do not fit in memory) once final. So memory holds one block of each model, the hidden states,
    and one segment's statistics and priors, whatever the depth. The maps are those of
    :func:`estimate_maps`: the same products in the same order.

    The ``project`` fill is refused: its probes would run every block again.
    """
    if options.fill == "project":
        raise InputError("--stream does not take --fill project (its probe pass runs the models again); "
                         "use the default weights fill or pad")
    complete = weight_plans is not None and base_state is not None and options.fill == "weights"
    plans = weight_plans() if complete else []
    by_key = {r.key: r for segment in streamed.segments for r in segment.requests}
    _check_segments_apart(streamed.segments, plans)
    quality: dict[str, SpaceQuality] = {}
    total = next(iter(source_data.values())).shape[0]
    ticker = Ticker(len(streamed.segments))
    for n, segment in enumerate(streamed.segments, 1):
        with segment as forward:
            if segment.requests:
                stats = collect_statistics(
                    streamed.source, streamed.target, segment.requests, source_data, target_data, layout=layout,
                    batch_size=batch_size, device=device, with_gram=options.needs_gram,
                    precision=options.precision, forward=forward)
            else:  # nothing hooked here (what runs before the first block, say), but the next segment needs it
                stats = {}
                with torch.inference_mode():
                    for start in range(0, total, batch_size):
                        forward(start, {k: v[start:start + batch_size] for k, v in source_data.items()},
                                {k: v[start:start + batch_size] for k, v in target_data.items()})
        maps: dict[str, torch.Tensor] = {}
        _data_maps(stats, by_key, maps, quality, options=options, keep_open=complete, progress=None)
        if complete and stats:  # a 1B-class block's completion takes minutes on a CPU: its own lines
            _complete_from_weights(plans, base_state, stats, by_key, maps, quality, options=options,
                                   progress=progress)
        _warn_underdetermined(maps, quality, options)
        for key in sorted(maps):
            store[key] = maps.pop(key)  # final: out of memory
        if progress and ticker.due(n):
            progress(f"blocks: {n}/{len(streamed.segments)} ({segment.name}, {len(segment.requests)} spaces), "
                     f"{ticker.elapsed:.1f} s{memory_note()}")
    if progress:
        progress(f"maps: {len(quality)} spaces estimated block by block")
    return store, quality


def _data_maps(stats: dict, by_key: dict[str, SpaceRequest], maps: dict[str, torch.Tensor],
               quality: dict[str, SpaceQuality], *, options: MapOptions, keep_open: bool,
               progress: Callable[[str], None] | None) -> None:
    """Each space's map from its data alone, in place; ``keep_open``: keep the statistics a completion needs."""
    ticker = Ticker(len(stats))
    for k, key in enumerate(sorted(stats), 1):
        maps[key], quality[key] = estimate_space_map(stats[key], by_key[key].source_key, options,
                                                     structure=by_key[key].structure)
        if progress and ticker.due(k):
            progress(f"maps: space {k}/{ticker.total} ({key}), {ticker.elapsed:.1f} s")
        if not (keep_open and quality[key].needs_completion):
            del stats[key]  # the spaces left are completed below


def _check_segments_apart(segments: list[BlockSegment], plans: list[ParamPlan]) -> None:
    """Every parameter and ``follows`` link stays inside one segment, so each segment's maps are final.

    A Llama-style decoder's are: each layer's input is a space of its own. An architecture where a weight
    read one block's space and wrote the next one's could not be completed block by block.
    """
    segment_of = {r.key: segment.name for segment in segments for r in segment.requests}
    for segment in segments:
        for request in segment.requests:
            if request.follows in segment_of and segment_of[request.follows] != segment.name:
                raise InputError(f"--stream: space {request.key} follows {request.follows}, in another block; "
                                 "prepare without --stream")
    for plan in plans:
        for target in plan.targets:
            names = {segment_of[s] for s in (target.reads, *target.writes) if s in segment_of}
            if len(names) > 1:
                raise InputError(f"--stream: parameter {plan.source_name} links spaces of "
                                 f"{' and '.join(sorted(names))}; their maps cannot be made block by block: "
                                 "prepare without --stream")


def _complete_from_probes(
    source_model: torch.nn.Module,
    target_model: torch.nn.Module,
    requests: list[SpaceRequest],
    data_stats: dict,
    maps: dict[str, torch.Tensor],
    quality: dict[str, SpaceQuality],
    probes: Callable[[int], tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]],
    *,
    layout: str,
    options: MapOptions,
    batch_size: int,
    device: torch.device,
    progress: Callable[[str], None] | None,
) -> None:
    """Re-estimate, in place, the maps of partly undetermined spaces with the probe statistics as a prior."""
    if progress:
        progress(f"maps: completing {len(requests)} partly undetermined space(s) from probe inputs")
    # A space with fewer calibration rows than its width is read once per example (a pooled site): the
    # probes then need about two examples per unit of its width to determine it.
    pooled = [max(quality[r.key].width_a, quality[r.key].width_b) for r in requests if quality[r.key].underdetermined]
    source_probe, target_probe = probes(2 * max(pooled, default=0))
    stats = collect_statistics(source_model, target_model, requests, source_probe, target_probe,
                               layout=layout, batch_size=batch_size, device=device,
                               with_gram=True, precision=options.precision)  # the probe prior is whitened
    for request in requests:
        key = request.key
        maps[key], quality[key] = estimate_space_map(data_stats.pop(key), request.source_key, options,
                                                     probe_stats=stats.pop(key), structure=request.structure)


def _complete_from_weights(
    plans: list[ParamPlan],
    base_state: BaseState,
    data_stats: dict,
    by_key: dict[str, SpaceRequest],
    maps: dict[str, torch.Tensor],
    quality: dict[str, SpaceQuality],
    *,
    options: MapOptions,
    progress: Callable[[str], None] | None,
) -> None:
    """Re-estimate, in place, the maps of partly undetermined spaces with the weight-matching prior.

    Each round takes every prior at the current maps of all spaces, so the order of the spaces does not
    matter. A direction a structure leaves open propagates: a LayerNorm output misses its mean
    direction, so the query space it feeds misses that direction's image, which the prior of the
    query weights can only supply once the norm's space is complete. And a neighbour's data map is
    noisy on its weakly determined directions, which a prior's polar factor amplifies; once that
    neighbour is completed, the prior it gives is clean. Hence rounds towards a fixed point, each over
    the spaces next to one whose map moved, until none moves (at most ``WEIGHT_PRIOR_ROUNDS``). A
    space that ``follows`` another (a norm's output keeps its input's coordinates) also takes that
    space's map into its prior (``weight_prior.with_followed_maps``).

    Spaces that share no parameter (and follow none of each other), directly or through other spaces
    being completed, never see each other's maps move, so they are completed group by group
    (:func:`_independent_groups`): the maps are exactly those of rounds over every space at once, while
    only one group's priors are held, and each group's statistics are freed once its maps are final.
    Layers never join: each layer's input is a space of its own, which no weight of the layer before reads
    (a Llama-style residual space is written by o_proj and down_proj, read by nothing), so a decoder or an
    encoder splits into a few groups per layer, such as the attention input with q, k and v, or the MLP
    input, hidden and output spaces.
    """
    keys = sorted(k for k in data_stats if by_key[k].structure is None)
    # Only the parameters of the spaces to complete (and their neighbours' maps) enter the priors.
    plans = _touching(plans, set(keys))
    source_weights, target_weights = base_state({p.source_name for p in plans},
                                                {t.name for p in plans for t in p.targets})
    weights = (FilteredWeights(source_weights), FilteredWeights(target_weights))
    follows = {k: by_key[k].follows for k in keys if by_key[k].follows}
    neighbours = _neighbours(plans)
    for key, followed in follows.items():
        neighbours.setdefault(followed, set()).add(key)
    groups = _independent_groups(keys, neighbours, follows)
    if progress:
        progress(f"maps: completing {len(keys)} partly undetermined space(s) from the base weights, "
                 f"in {len(groups)} independent group(s)")
    started = time.perf_counter()
    re_estimated: list[int] = []
    moved: list[int] = []
    ticker = Ticker(len(groups))
    done = 0
    for g, group in enumerate(groups, 1):
        # a group as large as a real model's whole completion gets its rounds' own lines
        rounds = _complete_group(group, _touching(plans, set(group)), weights, follows, neighbours, data_stats,
                                 by_key, maps, quality, options=options,
                                 progress=progress if len(group) >= _ROUND_LINES_FROM else None)
        for r, (visited, changed) in enumerate(rounds):
            if r == len(re_estimated):
                re_estimated.append(0)
                moved.append(0)
            re_estimated[r] += visited
            moved[r] += changed
        for key in group:
            del data_stats[key]  # this group's maps are final
        done += len(group)
        if progress and ticker.due(g):
            progress(f"maps: completion: space {done}/{len(keys)} (group {g}/{len(groups)}, {group[0]}), "
                     f"{time.perf_counter() - started:.1f} s{memory_note()}")
    if progress:
        per_round = "/".join(map(str, re_estimated)) or "0"
        per_round_moved = "/".join(map(str, moved)) or "0"
        progress(f"maps: completion: {len(keys)} space(s) in {len(groups)} group(s); rounds re-estimated "
                 f"{per_round} and moved {per_round_moved}, {time.perf_counter() - started:.1f} s{memory_note()}")
    data_stats.clear()


def _complete_group(
    keys: list[str],
    plans: list[ParamPlan],
    weights: tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]],
    follows: dict[str, str],
    neighbours: dict[str, set[str]],
    data_stats: dict,
    by_key: dict[str, SpaceRequest],
    maps: dict[str, torch.Tensor],
    quality: dict[str, SpaceQuality],
    *,
    options: MapOptions,
    progress: Callable[[str], None] | None,
) -> list[tuple[int, int]]:
    """The completion rounds of one independent group; (spaces re-estimated, spaces moved) per round."""
    completing = set(keys)
    data_quality = {k: quality[k] for k in keys}  # the data-only estimates' ranks stand in every round
    started = time.perf_counter()
    counts = []
    for round_ in range(WEIGHT_PRIOR_ROUNDS):
        priors = with_followed_maps(weight_matching_priors(plans, *weights, maps, keys),
                                    {k: follows[k] for k in keys if k in follows}, maps)
        moved = []
        ticker = Ticker(len(keys), fraction=0.25)  # a round of a real model's 263 spaces takes about a minute
        for i, key in enumerate(keys, 1):
            ticker.tick(i, progress, f"maps: completion round {round_ + 1}: space")
            if key not in priors:
                continue  # no parameter of this space carries weights to match (what is open stays dropped)
            before = maps[key]
            maps[key], quality[key] = estimate_space_map(data_stats[key], by_key[key].source_key, options,
                                                         structure=None, weight_prior=priors[key],
                                                         data_quality=data_quality[key])
            if _moved(before, maps[key]):
                moved.append(key)
        del priors
        counts.append((len(keys), len(moved)))
        # Only a space next to one whose map moved (sharing a parameter with it) can have a new prior: a
        # direction gained, or a weak direction that the data map left noisy and the prior has now set.
        touched = set().union(*(neighbours.get(k, set()) for k in moved)) if moved else set()
        if progress:
            progress(f"maps: completion round {round_ + 1}: {len(keys)} space(s) re-estimated, {len(moved)} moved, "
                     f"{time.perf_counter() - started:.1f} s{memory_note()}")
        keys = sorted(touched & completing)
        if not keys:
            break
    return counts


def _independent_groups(keys: list[str], neighbours: dict[str, set[str]],
                        follows: Mapping[str, str]) -> list[list[str]]:
    """``keys`` split into groups no parameter or ``follows`` link joins, each sorted, ordered by first key.

    A link through a space that is not being completed does not join two groups: that space's map is
    final, so neither side's prior can change it.
    """
    wanted = set(keys)
    links: dict[str, set[str]] = {k: (neighbours.get(k, set()) & wanted) - {k} for k in keys}
    for key, followed in follows.items():
        if key in wanted and followed in wanted:
            links[key].add(followed)
            links[followed].add(key)
    seen: set[str] = set()
    groups = []
    for key in keys:
        if key in seen:
            continue
        group, stack = set(), [key]
        while stack:
            space = stack.pop()
            if space in group:
                continue
            group.add(space)
            stack.extend(links[space] - group)
        seen |= group
        groups.append(sorted(group))
    return sorted(groups, key=lambda group: group[0])


def _touching(plans: list[ParamPlan], spaces: set[str]) -> list[ParamPlan]:
    """The plans some of whose parameters read or write one of ``spaces``, in their order."""
    return [p for p in plans if any(s in spaces for t in p.targets for s in (t.reads, *t.writes) if s)]


def _neighbours(plans: list[ParamPlan]) -> dict[str, set[str]]:
    """For each space, the spaces some parameter reads or writes together with it."""
    out: dict[str, set[str]] = {}
    for plan in plans:
        for target in plan.targets:
            spaces = {s for s in (target.reads, *target.writes) if s}
            for space in spaces:
                out.setdefault(space, set()).update(spaces - {space})
    return out


def _moved(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Whether a map changed by more than ``MAP_MOVED_TOL`` of its largest entry."""
    scale = float(after.abs().max()) if after.numel() else 0.0
    return scale > 0 and float((after - before).abs().max()) > MAP_MOVED_TOL * scale


# A completed map that moved less than this (relative to its largest entry) leaves its neighbours' priors
# as they were. Measured on the bare-RoBERTa identity oracle: 1e-5 and 1e-6 give the same maps (4e-7
# off the identity after three rounds); each round costs one re-estimate of every space it visits.
# 1e-4 (2026-12-07): the real oracles are unchanged to three digits (SmolLM2 full 1.287e-4, bare MiniLM
# 1.51e-4) and every random-init oracle and equivariance test passes, while rounds 2 and 3 of a SmolLM2-135M
# prepare re-estimate 261 and 199 spaces instead of 261 and 261 (prepare 289 s -> 261 s); 1e-3 breaks the
# bare-RoBERTa identity oracle (BENCHMARKS.md §2).
MAP_MOVED_TOL = 1e-4


# A group of at least this many spaces (a post-norm encoder's whole model) logs each round's progress too.
_ROUND_LINES_FROM = 64


# Rounds of weight completion: a structural gap travels one linear layer per round, and the neighbours'
# noise leaves in two or three (see ``_complete_from_weights``).
WEIGHT_PRIOR_ROUNDS = 3

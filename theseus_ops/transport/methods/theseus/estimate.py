"""Theseus' map estimation: statistics per coordinate space, then one polar factor per space."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from theseus_ops.progress import Ticker
from theseus_ops.transport.maps import MapOptions, SpaceQuality, estimate_space_map
from theseus_ops.transport.statistics import SpaceRequest, collect_statistics

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
) -> tuple[dict[str, torch.Tensor], dict[str, SpaceQuality]]:
    """Statistics for every requested space, then one polar factor per space.

    With the ``project`` fill and ``probes`` given, spaces the calibration data leaves partly
    undetermined are completed from a second statistics pass over the probe inputs (only those spaces
    are hooked), see ``maps.complete_from_probes``.
    """
    stats = collect_statistics(
        source_model, target_model, requests, source_data, target_data,
        layout=layout, batch_size=batch_size, device=device, with_gram=options.needs_gram, progress=progress,
    )
    maps, quality = {}, {}
    by_key = {r.key: r for r in requests}
    complete = probes is not None and options.fill == "project"
    ticker = Ticker(len(stats))
    for k, key in enumerate(sorted(stats), 1):
        maps[key], quality[key] = estimate_space_map(stats[key], by_key[key].source_key, options,
                                                     structure=by_key[key].structure)
        if progress and ticker.due(k):
            progress(f"maps: space {k}/{ticker.total} ({key}), {ticker.elapsed:.1f} s")
        if not (complete and quality[key].needs_completion):
            del stats[key]  # the spaces left are completed from probe inputs below
    if complete and stats:
        _complete_from_probes(source_model, target_model, [by_key[k] for k in sorted(stats)], stats,
                              maps, quality, probes, layout=layout, options=options, batch_size=batch_size,
                              device=device, progress=progress)
    for key in sorted(maps):
        q = quality[key]
        if q.underdetermined:
            what = (f"{q.prior_filled + q.seeded_filled} filled by the pad prior" if options.fill == "pad"
                    else f"{q.probe_filled} filled from probe inputs, {q.undetermined - q.probe_filled} dropped")
            log.warning("space %s: %d activation rows for width %d; the map is underdetermined "
                        "(data rank %d, %s)", key, q.rows, max(q.width_a, q.width_b), q.data_rank, what)
    if progress:
        progress(f"maps: {len(maps)} spaces estimated")
    return maps, quality


def _complete_from_probes(
    source_model: torch.nn.Module,
    target_model: torch.nn.Module,
    requests: list[SpaceRequest],
    data_stats: dict,
    maps: dict[str, torch.Tensor],
    quality: dict[str, SpaceQuality],
    probes: Callable[[int], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]],
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
                               with_gram=True)  # the probe prior is estimated whitened (maps)
    for request in requests:
        key = request.key
        maps[key], quality[key] = estimate_space_map(data_stats.pop(key), request.source_key, options,
                                                     probe_stats=stats.pop(key), structure=request.structure)

"""Theseus: activation-aligned maps per coordinate space (arXiv 2602.12952), with or without data."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from theseus_ops.errors import InputError
from theseus_ops.progress import Ticker
from theseus_ops.transport.maps import MapOptions, SpaceQuality, estimate_space_map
from theseus_ops.transport.statistics import SpaceRequest, collect_statistics

log = logging.getLogger("theseus_ops")


@dataclass(frozen=True)
class ProbeConfig:
    """Seeded synthetic inputs for the data-free variant.

    ``rows_per_width`` activation rows per unit of the widest space keep every map determined.
    """

    seed: int = 0
    length: int = 64
    rows_per_width: int = 4
    max_examples: int = 512
    min_examples: int = 8


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


def _config_value(config: dict, *keys: str, default: int | None = None) -> int | None:
    for key in keys:
        if key in config:
            return config[key]
    return default


def probe_inputs(
    source_config: dict,
    target_config: dict,
    input_kind: str,
    max_width: int,
    probe: ProbeConfig,
    decoder_start: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The same seeded synthetic examples for both models: token ids or noise images.

    Token ids are drawn from the vocabulary both models share (an encoder-decoder's decoder gets them
    shifted right behind ``decoder_start``); images are drawn once at the larger
    size and resized to each model's, so row i of A and B describes the same example. The configs are
    as the family reads them (``FamilySpec.settings``: a full CLIPModel's vision_config merged in).
    """
    gen = torch.Generator().manual_seed(probe.seed)
    if input_kind == "tokens":
        vocab = min(_config_value(source_config, "vocab_size", default=0),
                    _config_value(target_config, "vocab_size", default=0))
        if not vocab:
            raise InputError("data-free transport needs vocab_size in both configs")
        limits = [_config_value(c, "n_positions", "max_position_embeddings", default=probe.length)
                  for c in (source_config, target_config)]
        length = max(2, min(probe.length, *limits) - 2)
        wanted = math.ceil(probe.rows_per_width * max_width / length)
        examples = min(probe.max_examples, max(probe.min_examples, wanted))
        ids = torch.randint(0, vocab, (examples, length), generator=gen)
        data = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if decoder_start is not None:  # an encoder-decoder's decoder reads the same ids, shifted right
            data["decoder_input_ids"] = torch.cat([torch.full_like(ids[:, :1], decoder_start), ids[:, :-1]], dim=1)
        return data, dict(data)
    sizes = [(_config_value(c, "image_size", default=224), _config_value(c, "num_channels", default=3))
             for c in (source_config, target_config)]
    if sizes[0][1] != sizes[1][1]:
        raise InputError("data-free transport needs both vision models to take the same number of channels")
    side = max(s for s, _ in sizes)
    patch = _config_value(source_config, "patch_size", default=16)
    tokens = (sizes[0][0] // patch) ** 2 + 1
    examples = min(probe.max_examples, max(probe.min_examples, math.ceil(probe.rows_per_width * max_width / tokens)))
    # Smooth noise: nearby pixels correlate as in images, so patches are not pure white noise.
    coarse = torch.randn(examples, sizes[0][1], max(2, side // 8), max(2, side // 8), generator=gen)
    base = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    base = base + 0.1 * torch.randn(base.shape, generator=gen)

    def at(size: int) -> torch.Tensor:
        return base if size == side else F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)

    return {"pixel_values": at(sizes[0][0])}, {"pixel_values": at(sizes[1][0])}

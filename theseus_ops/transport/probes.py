"""Seeded synthetic probe inputs: the same examples for both models, without any data.

The API builds them for methods that estimate maps without calibration data, and for the
``project`` fill's completion of spaces the calibration data leaves partly undetermined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from theseus_ops.errors import InputError


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
    as the architecture reads them (``ArchitectureSpec.settings``: a full CLIPModel's vision_config merged in).
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

"""A model pair read once (headers, configs, layer map), from directories or from loaded models."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from theseus_ops.errors import InputError
from theseus_ops.io.models import ModelInfo, inspect_model_dir
from theseus_ops.transport.architecture import (
    ArchitectureSpec,
    architecture_for_model_type,
    config_value,
    same_architecture,
)
from theseus_ops.transport.engine import detect_prefix
from theseus_ops.transport.layer_map import LayerMap, build_stacked_layer_map

log = logging.getLogger("theseus_ops")

# torch dtypes by their safetensors header names, so an in-memory model reads like a directory
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}


@dataclass(frozen=True)
class ModelPair:
    """Two base models of one architecture, read from their headers, and how their layers pair."""

    source: ModelInfo
    target: ModelInfo
    architecture: ArchitectureSpec
    layer_map: LayerMap
    source_prefix: str
    target_prefix: str

    def decoder_start(self) -> int | None:
        """An encoder-decoder's decoder start token, which both models must share; None for other models."""
        ref = self.architecture.decoder_start
        if ref is None:
            return None
        tokens = [config_value(info.config, ref, f"{info.path}/config.json (decoder start token)")
                  for info in (self.source, self.target)]
        for token in tokens:
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise InputError(f"decoder start token {token!r} is not a token id")
        if tokens[0] != tokens[1]:
            raise InputError(f"the models' decoders start with different tokens ({tokens[0]} vs {tokens[1]}); "
                             "one calibration set cannot feed both")
        return tokens[0]


def pair_of(source: ModelInfo, target: ModelInfo, layer_map: str) -> ModelPair:
    """Pair two described models: one architecture, valid configs, and the layer map between their stacks."""
    architecture = same_architecture(source.model_type, target.model_type)
    architecture.check_config(source.config, f"{source.path}/config.json")
    architecture.check_config(target.config, f"{target.path}/config.json")
    lm = build_stacked_layer_map(layer_map, source.depths, target.depths)
    if lm.unmapped_targets:
        log.warning("target layers without a source layer (they receive no update): %s", lm.unmapped_targets)
    return ModelPair(source, target, architecture, lm, detect_prefix(architecture, list(source.shapes)),
                     detect_prefix(architecture, list(target.shapes)))


def open_pair(source_base: str | Path, target_base: str | Path, layer_map: str) -> ModelPair:
    """Pair two model directories from their configs and safetensors headers; no weights are read."""
    return pair_of(inspect_model_dir(source_base), inspect_model_dir(target_base), layer_map)


def info_from_model(model: torch.nn.Module, name: str) -> ModelInfo:
    """A loaded transformers model described as a directory would be, for pairs that never touch disk.

    It has no weight files, so its ``sha256`` is that of no files: the same for every in-memory model;
    provenance that must tell models apart needs a directory. ``name`` stands in for the path.
    """
    config = model.config.to_dict()
    state = model.state_dict()
    return ModelInfo(Path(name), config, architecture_for_model_type(config.get("model_type", "")),
                     {n: tuple(t.shape) for n, t in state.items()},
                     {n: _SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype)) for n, t in state.items()}, ())


def model_summary(info: ModelInfo) -> dict:
    """A model as reports and provenance name it: path, content hash, type and depths."""
    summary = {"path": str(info.path), "sha256": info.sha256(), "model_type": info.model_type,
               "layers": info.num_layers}
    further = info.further_depths
    return {**summary, "stack_layers": further} if further else summary

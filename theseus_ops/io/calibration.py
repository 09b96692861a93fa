"""Calibration sets: ``input_ids`` [N, L] (+ ``attention_mask``, ``labels``) or ``pixel_values``
[N, C, H, W] in a safetensors file, with its fingerprint for provenance.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from theseus_ops.errors import InputError
from theseus_ops.io.safetensors_header import read_header

# safetensors metadata key of a calibration file theseus-ops built from a recipe (evaluation.calibration):
# the recipe and the rows each source gave, carried into the alignment's provenance
RECIPE_METADATA_KEY = "theseus.calibration_recipe"
KNOWN_KEYS = ("input_ids", "attention_mask", "pixel_values", "labels")
# What an encoder-decoder (T5) also takes: the decoder's tokens, or labels that give them.
DECODER_KEYS = ("decoder_input_ids", "decoder_attention_mask")
# what an embedding lookup accepts; the LM loss needs int64 labels (-100 marks ignored positions)
ID_DTYPES = (torch.int64, torch.int32)
MASK_DTYPES = (torch.int64, torch.int32, torch.bool)


@dataclass(frozen=True)
class Calibration:
    """The examples one model sees, and a fingerprint of exactly those bytes."""

    tensors: dict[str, torch.Tensor]
    fingerprint: str
    path: str
    recipe: dict | None = None  # how the set was built, when theseus-ops built it (evaluation.recipe)

    @property
    def rows(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def inputs(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.tensors.items() if k != "labels"}

    def head(self, rows: int) -> Calibration:
        return Calibration({k: v[:rows] for k, v in self.tensors.items()}, self.fingerprint + f":{rows}", self.path,
                           self.recipe)


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].contiguous()
        digest.update(f"{key}:{value.dtype}:{list(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def load_calibration(path: str | Path, input_kind: str, decoder_start: int | None = None) -> Calibration:
    """Load and validate; ``input_kind`` is the architecture's ``tokens`` or ``pixels``.

    ``decoder_start`` (an encoder-decoder's decoder start token) makes the decoder's tokens part of
    the examples: ``decoder_input_ids`` as given, or the labels shifted right behind the start token,
    as the model's own loss would feed them. Statistics of decoder spaces need one or the other.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"calibration file {path} does not exist")
    header = read_header(path, follow_symlink=True)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
    main = "input_ids" if input_kind == "tokens" else "pixel_values"
    if main not in tensors:
        raise InputError(f"{path}: a {input_kind} model needs '{main}' in its calibration file; "
                         f"found {sorted(tensors)}")
    allowed = KNOWN_KEYS + (DECODER_KEYS if decoder_start is not None else ())
    unknown = sorted(set(tensors) - set(allowed))
    if unknown:
        decoder = " (decoder inputs are for encoder-decoder models)" if set(unknown) & set(DECODER_KEYS) else ""
        raise InputError(f"{path}: unexpected calibration tensor(s) {unknown}; allowed: {list(allowed)}{decoder}")
    value = tensors[main]
    expected_dims = 2 if main == "input_ids" else 4
    if value.dim() != expected_dims:
        raise InputError(f"{path}: '{main}' must have {expected_dims} dimensions, got shape {list(value.shape)}")
    if main == "input_ids" and value.dtype not in ID_DTYPES:
        raise InputError(f"{path}: 'input_ids' must be int64 or int32 token ids, got {_dtype(value)}")
    if main == "pixel_values" and not value.is_floating_point():
        raise InputError(f"{path}: 'pixel_values' must be floating point, got {_dtype(value)}")
    if main == "pixel_values" and not bool(torch.isfinite(value).all()):
        raise InputError(f"{path}: 'pixel_values' contains NaN or Inf")
    rows = value.shape[0]
    if rows == 0:
        raise InputError(f"{path}: the calibration set is empty")
    if 0 in value.shape:
        raise InputError(f"{path}: '{main}' has shape {list(value.shape)}; every example needs at least one "
                         f"{'token' if main == 'input_ids' else 'pixel'}")
    for key, tensor in tensors.items():
        if tensor.dim() == 0 or tensor.shape[0] != rows:
            raise InputError(f"{path}: '{key}' has {tensor.shape[0] if tensor.dim() else 0} rows but '{main}' "
                             f"has {rows}")
    mask = tensors.get("attention_mask")
    if mask is not None:
        if main != "input_ids":
            raise InputError(f"{path}: 'attention_mask' belongs with 'input_ids', not '{main}'")
        if mask.shape != value.shape:
            raise InputError(f"{path}: 'attention_mask' shape {list(mask.shape)} differs from "
                             f"'input_ids' {list(value.shape)}")
        if mask.dtype not in MASK_DTYPES or not bool(((mask == 0) | (mask == 1)).all()):
            raise InputError(f"{path}: 'attention_mask' must hold 0/1 (int64, int32 or bool), got {_dtype(mask)}")
    labels = tensors.get("labels")
    if labels is not None:
        if labels.dtype != torch.int64:
            raise InputError(f"{path}: 'labels' must be int64 (-100 marks ignored positions), got {_dtype(labels)}")
        if decoder_start is not None and labels.dim() != 2:
            raise InputError(f"{path}: 'labels' must be [examples, target length], got shape {list(labels.shape)}")
        if decoder_start is None and main == "input_ids" and labels.shape != value.shape:
            raise InputError(f"{path}: 'labels' shape {list(labels.shape)} differs from 'input_ids' "
                             f"{list(value.shape)}")
        if labels.numel() and int(labels.min()) < -100:
            raise InputError(f"{path}: 'labels' holds {int(labels.min())}; labels are ids >= 0, or -100 (ignored)")
    if decoder_start is not None:
        tensors = _with_decoder_inputs(tensors, decoder_start, path)
    return Calibration(tensors, fingerprint(tensors), str(path), _recipe_of(header.metadata))


def _recipe_of(metadata: dict[str, str]) -> dict | None:
    """The recipe record a built calibration file carries (``RECIPE_METADATA_KEY``)."""
    raw = metadata.get(RECIPE_METADATA_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _with_decoder_inputs(tensors: dict[str, torch.Tensor], start: int, path: Path) -> dict[str, torch.Tensor]:
    """Check the decoder's ids and mask, or derive them from the labels (shifted right behind ``start``)."""
    ids = tensors.get("decoder_input_ids")
    if ids is None:
        labels = tensors.get("labels")
        if labels is None:
            raise InputError(f"{path}: an encoder-decoder model needs 'decoder_input_ids' or 'labels' in its "
                             "calibration file (the decoder's tokens); found neither")
        if "decoder_attention_mask" in tensors:
            raise InputError(f"{path}: 'decoder_attention_mask' belongs with 'decoder_input_ids'")
        shifted = torch.cat([torch.full_like(labels[:, :1], start), labels[:, :-1]], dim=1)
        mask = (shifted != -100).to(torch.int64)
        return {**tensors, "decoder_input_ids": shifted.masked_fill(shifted == -100, start),
                "decoder_attention_mask": mask}
    if ids.dim() != 2 or ids.dtype not in ID_DTYPES or 0 in ids.shape:
        raise InputError(f"{path}: 'decoder_input_ids' must be [examples, length] int64 or int32 token ids, got "
                         f"{_dtype(ids)} of shape {list(ids.shape)}")
    mask = tensors.get("decoder_attention_mask")
    if mask is not None and (mask.shape != ids.shape or mask.dtype not in MASK_DTYPES
                             or not bool(((mask == 0) | (mask == 1)).all())):
        raise InputError(f"{path}: 'decoder_attention_mask' must be 0/1 of the shape of 'decoder_input_ids' "
                         f"{list(ids.shape)}, got {_dtype(mask)} of shape {list(mask.shape)}")
    return tensors


def check_vocabulary(calibration: Calibration, vocab_size: object, where: str, side: str = "") -> None:
    """Token ids, and labels other than -100, must index a vocabulary of ``vocab_size``.

    Otherwise the forward pass (ids) or the loss (labels) fails midway with an IndexError. ``where``
    names the model whose vocabulary this is; ``side`` (source, target) starts the message.
    """
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        return
    for key in ("input_ids", "labels", "decoder_input_ids"):
        ids = calibration.tensors.get(key)
        if ids is None or ids.dtype.is_floating_point:
            continue
        ids = ids[ids != -100] if key == "labels" else ids
        if ids.numel() == 0:
            continue
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            raise InputError(f"{side + ' ' if side else ''}calibration {calibration.path}: {key} span {low}..{high}, "
                             f"outside the vocabulary of {vocab_size} of {where}")


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def check_paired(source: Calibration, target: Calibration) -> None:
    """Source and target calibration must hold the same examples, row for row."""
    if source.rows != target.rows:
        raise InputError(f"calibration row counts differ: source {source.path} has {source.rows}, "
                         f"target {target.path} has {target.rows}; both must hold the same examples")

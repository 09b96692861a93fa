"""Calibration sets: ``input_ids`` [N, L] (+ ``attention_mask``, ``labels``) or ``pixel_values``
[N, C, H, W] in a safetensors file, with its fingerprint for provenance.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from theseus_ops.errors import InputError

KNOWN_KEYS = ("input_ids", "attention_mask", "pixel_values", "labels")


@dataclass(frozen=True)
class Calibration:
    """The examples one model sees, and a fingerprint of exactly those bytes."""

    tensors: dict[str, torch.Tensor]
    fingerprint: str
    path: str

    @property
    def rows(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def inputs(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.tensors.items() if k != "labels"}

    def head(self, rows: int) -> Calibration:
        return Calibration({k: v[:rows] for k, v in self.tensors.items()}, self.fingerprint + f":{rows}", self.path)


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].contiguous()
        digest.update(f"{key}:{value.dtype}:{list(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def load_calibration(path: str | Path, input_kind: str) -> Calibration:
    """Load and validate; ``input_kind`` is the family's ``tokens`` or ``pixels``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"calibration file {path} does not exist")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
    main = "input_ids" if input_kind == "tokens" else "pixel_values"
    if main not in tensors:
        raise InputError(f"{path}: a {input_kind} model needs '{main}' in its calibration file; "
                         f"found {sorted(tensors)}")
    unknown = sorted(set(tensors) - set(KNOWN_KEYS))
    if unknown:
        raise InputError(f"{path}: unexpected calibration tensor(s) {unknown}; allowed: {list(KNOWN_KEYS)}")
    value = tensors[main]
    expected_dims = 2 if main == "input_ids" else 4
    if value.dim() != expected_dims:
        raise InputError(f"{path}: '{main}' must have {expected_dims} dimensions, got shape {list(value.shape)}")
    if main == "input_ids" and value.is_floating_point():
        raise InputError(f"{path}: 'input_ids' must be integers")
    if main == "pixel_values" and not bool(torch.isfinite(value).all()):
        raise InputError(f"{path}: 'pixel_values' contains NaN or Inf")
    rows = value.shape[0]
    if rows == 0:
        raise InputError(f"{path}: the calibration set is empty")
    for key, tensor in tensors.items():
        if tensor.shape[0] != rows:
            raise InputError(f"{path}: '{key}' has {tensor.shape[0]} rows but '{main}' has {rows}")
    mask = tensors.get("attention_mask")
    if mask is not None and mask.shape != value.shape:
        raise InputError(f"{path}: 'attention_mask' shape {list(mask.shape)} differs from "
                         f"'input_ids' {list(value.shape)}")
    return Calibration(tensors, fingerprint(tensors), str(path))


def check_paired(source: Calibration, target: Calibration) -> None:
    """Source and target calibration must hold the same examples, row for row."""
    if source.rows != target.rows:
        raise InputError(f"calibration row counts differ: source {source.path} has {source.rows}, "
                         f"target {target.path} has {target.rows}; both must hold the same examples")

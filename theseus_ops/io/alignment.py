"""Alignment files: the per-space maps of one (source, target, calibration, options) and their
provenance, so that one ``prepare`` serves every task vector on the same pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from theseus_ops.errors import InputError
from theseus_ops.io.atomic import atomic_path

META_KEY = "theseus.alignment"
ALIGNMENT_VERSION = "1"


@dataclass
class Alignment:
    """Maps keyed by target space (``layers.3.q``), per-space quality, and provenance."""

    maps: dict[str, torch.Tensor]
    quality: dict[str, dict]
    provenance: dict

    def save(self, path: str | Path) -> None:
        meta = {META_KEY: json.dumps({"version": ALIGNMENT_VERSION, "provenance": self.provenance,
                                      "quality": self.quality}, sort_keys=True)}
        tensors = {f"map.{k}": v.contiguous().float().cpu() for k, v in self.maps.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> Alignment:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"alignment file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = (fh.metadata() or {}).get(META_KEY)
                maps = {k.removeprefix("map."): fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable alignment file ({exc})") from exc
        if meta is None:
            raise InputError(f"{path}: a safetensors file but not a theseus-ops alignment (no {META_KEY} metadata)")
        data = json.loads(meta)
        return cls(maps, data["quality"], data["provenance"])

"""Alignment files: the per-space maps of one (source, target, calibration, options) and their
provenance, so that one ``prepare`` serves every task vector on the same pair.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from theseus_ops.errors import InputError
from theseus_ops.io.atomic import atomic_path
from theseus_ops.io.display import shown
from theseus_ops.io.map_store import SpilledMaps, StoredMaps, save_tensors_one_by_one
from theseus_ops.io.safetensors_header import read_header
from theseus_ops.transport.layer_map import SCHEME_KEY

META_KEY = "theseus.alignment"
ALIGNMENT_VERSION = "1"


@dataclass
class Alignment:
    """Maps keyed by target space (``layers.3.q``), per-space quality, and provenance."""

    maps: Mapping[str, torch.Tensor]  # a dict, or (a streamed prepare) maps read from a file one at a time
    quality: dict[str, dict]
    provenance: dict

    def save(self, path: str | Path) -> None:
        meta = {META_KEY: json.dumps({"version": ALIGNMENT_VERSION, "provenance": self.provenance,
                                      "quality": self.quality}, sort_keys=True)}
        if isinstance(self.maps, SpilledMaps):  # a streamed prepare's: written one map at a time from its file
            spilled = self.maps
            save_tensors_one_by_one(lambda name: spilled[name.removeprefix("map.")],
                                    {f"map.{k}": spilled.shape(k) for k in spilled}, path, meta)
            self.maps = StoredMaps(path, {k: f"map.{k}" for k in spilled})
            spilled.close()
            return
        tensors = {f"map.{k}": v.contiguous().float().cpu() for k, v in self.maps.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> Alignment:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"alignment file {path} does not exist")
        read_header(path, follow_symlink=True)
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = (fh.metadata() or {}).get(META_KEY)
                maps = {k.removeprefix("map."): fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable alignment file ({exc})") from exc
        if meta is None:
            raise InputError(f"{path}: a safetensors file but not a theseus-ops alignment (no {META_KEY} metadata)")
        data = parse_metadata(meta, str(path))
        for key, value in maps.items():
            if value.dim() != 2 or not value.is_floating_point() or 0 in value.shape:
                raise InputError(f"{path}: map {shown(key)} must be a non-empty 2-D float matrix, "
                                 f"got shape {list(value.shape)[:8]}")
            if not bool(torch.isfinite(value).all()):
                raise InputError(f"{path}: map {shown(key)} contains NaN or Inf")
        return cls(maps, data["quality"], data["provenance"])


# provenance fields the transport reads to check an alignment belongs to its model pair and options
_PROVENANCE = {("source", "sha256"): str, ("source", "path"): str, ("target", "sha256"): str,
               ("target", "path"): str, ("layer_map", SCHEME_KEY): str, ("layer_map", "sources"): list,
               ("options", "method"): str}


def parse_metadata(text: str, where: str) -> dict:
    """The alignment's JSON metadata, checked for every field transport and ``inspect`` read."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise InputError(f"{where}: corrupt alignment metadata (nested too deeply)") from None
    except ValueError as exc:
        raise InputError(f"{where}: corrupt alignment metadata (not JSON: {str(exc)[:200]})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{where}: corrupt alignment metadata (not a JSON object)")
    if data.get("version") != ALIGNMENT_VERSION:
        raise InputError(f"{where}: alignment format version {str(data.get('version'))[:20]!r} is not supported "
                         f"(expected {ALIGNMENT_VERSION}); prepare it again")
    quality, provenance = data.get("quality"), data.get("provenance")
    if not isinstance(quality, dict) or not isinstance(provenance, dict):
        raise InputError(f"{where}: corrupt alignment metadata ('quality' and 'provenance' must be objects)")
    for (section, key), expected in _PROVENANCE.items():
        value = provenance.get(section)
        if not isinstance(value, dict) or not isinstance(value.get(key), expected):
            raise InputError(f"{where}: corrupt alignment metadata (provenance {section}.{key} is missing or "
                             f"not a {expected.__name__})")
    for space, q in quality.items():
        residual = q.get("residual") if isinstance(q, dict) else None
        if not (isinstance(residual, int | float) and not isinstance(residual, bool)) or not isinstance(
                q.get("underdetermined"), bool):
            raise InputError(f"{where}: corrupt alignment metadata (quality of {shown(space)} needs a numeric "
                             "'residual' and a boolean 'underdetermined')")
    return data

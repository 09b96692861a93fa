"""Depth handling: which source layer feeds each target layer.

Theseus pairs layer i with layer i. Any other pairing is an explicit, reported choice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from theseus_ops.errors import InputError


@dataclass(frozen=True)
class LayerMap:
    """``sources[j]`` is the source layer that feeds target layer j, or None."""

    kind: str
    source_depth: int
    target_depth: int
    sources: tuple[int | None, ...]

    def targets_of(self, source_layer: int) -> list[int]:
        return [j for j, s in enumerate(self.sources) if s == source_layer]

    @property
    def unmapped_targets(self) -> list[int]:
        return [j for j, s in enumerate(self.sources) if s is None]

    @property
    def unused_sources(self) -> list[int]:
        used = set(self.sources)
        return [i for i in range(self.source_depth) if i not in used]

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "source_depth": self.source_depth,
            "target_depth": self.target_depth,
            "sources": list(self.sources),
            "unmapped_target_layers": self.unmapped_targets,
            "unused_source_layers": self.unused_sources,
        }


def uniform_sources(source_depth: int, target_depth: int) -> tuple[int, ...]:
    """Source layer round(j·(D_A−1)/(D_B−1)) feeds target layer j, so first and last layers pair."""
    if target_depth == 1:
        return (0,)
    return tuple(round(j * (source_depth - 1) / (target_depth - 1)) for j in range(target_depth))


def build_layer_map(spec: str, source_depth: int, target_depth: int) -> LayerMap:
    """Parse ``identity``, ``uniform`` or a JSON file ``{"target layer": source layer or null}``."""
    if spec == "identity":
        if source_depth != target_depth:
            raise InputError(
                f"source has {source_depth} layers and target has {target_depth}; "
                "pass --layer-map uniform or --layer-map FILE.json to pair layers of different depth"
            )
        return LayerMap("identity", source_depth, target_depth, tuple(range(target_depth)))
    if spec == "uniform":
        return LayerMap("uniform", source_depth, target_depth, uniform_sources(source_depth, target_depth))
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--layer-map {spec!r}: expected identity, uniform or an existing JSON file")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"layer map {path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise InputError(f"layer map {path}: expected an object mapping target layer to source layer")
    sources: list[int | None] = [None] * target_depth
    for key, value in raw.items():
        try:
            j = int(key)
        except ValueError:
            raise InputError(f"layer map {path}: key {key!r} is not a target layer index") from None
        if not 0 <= j < target_depth:
            raise InputError(f"layer map {path}: target layer {j} outside 0..{target_depth - 1}")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not 0 <= value < source_depth):
            raise InputError(f"layer map {path}: source layer {value!r} outside 0..{source_depth - 1}")
        sources[j] = value
    return LayerMap(f"file:{path.name}", source_depth, target_depth, tuple(sources))

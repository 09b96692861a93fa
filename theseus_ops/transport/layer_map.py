"""Depth handling: which source layer feeds each target layer.

Theseus pairs layer i with layer i. Any other pairing is an explicit, reported choice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from theseus_ops.errors import InputError

# The scheme's key in ``describe()`` (the alignment provenance, the report): "kind", as it always was.
SCHEME_KEY = "kind"


@dataclass(frozen=True)
class LayerMap:
    """``sources[j]`` is the source layer that feeds target layer j, or None.

    ``scheme`` says how it was made: ``identity``, ``uniform`` or ``file:<name>``.

    This is the main stack's map; an encoder-decoder's further stacks (T5's decoder) each have their
    own, in ``stacks``, since their depths differ and each pairs its own layers.
    """

    scheme: str
    source_depth: int
    target_depth: int
    sources: tuple[int | None, ...]
    stacks: tuple[tuple[str, LayerMap], ...] = ()

    def for_stack(self, stack: str) -> LayerMap:
        """The map of one stack: this one for the main stack (``layers``)."""
        if stack == "layers":
            return self
        for name, found in self.stacks:
            if name == stack:
                return found
        raise KeyError(f"layer map has no stack {stack!r}")

    def each_stack(self) -> list[tuple[str, LayerMap]]:
        return [("layers", self), *self.stacks]

    def unused_by_stack(self) -> list[str]:
        """Every unused source layer, named with its stack when the model has several."""
        return [str(i) if name == "layers" else f"{name} {i}"
                for name, lm in self.each_stack() for i in lm.unused_sources]

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
        described = {
            SCHEME_KEY: self.scheme,
            "source_depth": self.source_depth,
            "target_depth": self.target_depth,
            "sources": list(self.sources),
            "unmapped_target_layers": self.unmapped_targets,
            "unused_source_layers": self.unused_sources,
        }
        if self.stacks:
            described["stacks"] = {name: lm.describe() for name, lm in self.stacks}
        return described


def uniform_sources(source_depth: int, target_depth: int) -> tuple[int, ...]:
    """Source layer round(j·(D_A−1)/(D_B−1)) feeds target layer j, so first and last layers pair."""
    if target_depth == 1:
        return (0,)
    return tuple(round(j * (source_depth - 1) / (target_depth - 1)) for j in range(target_depth))


def build_stacked_layer_map(spec: str, source_depths: Mapping[str, int], target_depths: Mapping[str, int]) -> LayerMap:
    """One layer map per stack (``layers`` first): ``identity`` and ``uniform`` apply to each stack; a JSON
    file for a model of several stacks maps stack name to ``{"target layer": source layer or null}``."""
    further = [name for name in source_depths if name != "layers"]
    if not further:
        return build_layer_map(spec, source_depths["layers"], target_depths["layers"])
    per_stack: dict[str, str | dict] = {name: spec for name in source_depths}
    if spec not in ("identity", "uniform"):
        raw = _read_json(Path(spec), spec)
        if not isinstance(raw, dict) or set(raw) != set(source_depths):
            raise InputError(f"layer map {spec}: this model has stacks {sorted(source_depths)}; the file must map "
                             "each stack name to an object of target layer -> source layer")
        per_stack = dict(raw)
    maps = {}
    for name in source_depths:
        where = f"{spec} (stack {name})"
        try:
            maps[name] = _build_one(per_stack[name], source_depths[name], target_depths[name], where)
        except InputError as exc:
            raise InputError(f"stack {name}: {exc}") from None
    main = maps.pop("layers")
    scheme = main.scheme if spec in ("identity", "uniform") else f"file:{Path(spec).name}"
    return LayerMap(scheme, main.source_depth, main.target_depth, main.sources, tuple(maps.items()))


def _read_json(path: Path, spec: str) -> object:
    if not path.is_file():
        raise InputError(f"--layer-map {spec!r}: expected identity, uniform or an existing JSON file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"layer map {path}: not valid JSON ({exc})") from exc


def build_layer_map(spec: str, source_depth: int, target_depth: int) -> LayerMap:
    """Parse ``identity``, ``uniform`` or a JSON file ``{"target layer": source layer or null}``."""
    return _build_one(spec, source_depth, target_depth, spec)


def _build_one(spec: str | dict, source_depth: int, target_depth: int, where: str) -> LayerMap:
    if isinstance(spec, dict):
        return _from_mapping(spec, source_depth, target_depth, where, "file")
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
    return _from_mapping(_read_json(path, spec), source_depth, target_depth, str(path), f"file:{path.name}")


def _from_mapping(raw: object, source_depth: int, target_depth: int, where: str, scheme: str) -> LayerMap:
    path = where
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
    return LayerMap(scheme, source_depth, target_depth, tuple(sources))

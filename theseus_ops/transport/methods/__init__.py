"""Transport methods, one module each, registered by name.

A *map method* turns a :class:`MapContext` into one map per coordinate space; the engine then
applies the family's rules. GradFix masks the vector in place and needs no maps.
"""

from __future__ import annotations

from dataclasses import dataclass

_REGISTRY: dict[str, MethodInfo] = {}


@dataclass(frozen=True)
class MethodInfo:
    """What the CLI and the API need to know about a method before running it."""

    name: str
    summary: str
    kind: str  # "maps" or "mask"
    same_shape_only: bool
    needs_calibration: bool
    needs_labels: bool = False
    supports_lora: bool = True


def register_method(info: MethodInfo) -> None:
    """Add a method; a second registration of one name is a programming error."""
    if info.name in _REGISTRY:
        raise ValueError(f"transport method {info.name!r} is already registered; pick another name")
    _REGISTRY[info.name] = info


def get_method(name: str) -> MethodInfo:
    from theseus_ops.errors import InputError

    if name not in _REGISTRY:
        raise InputError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    return sorted(_REGISTRY)


register_method(MethodInfo("theseus", "activation-aligned Procrustes maps per coordinate space", "maps",
                           same_shape_only=False, needs_calibration=True))
register_method(MethodInfo("theseus-data-free", "Procrustes maps from seeded probe inputs, no data", "maps",
                           same_shape_only=False, needs_calibration=False))
register_method(MethodInfo("gradfix", "keep coordinates that descend the target's task loss", "mask",
                           same_shape_only=True, needs_calibration=True, needs_labels=True, supports_lora=False))
register_method(MethodInfo("naive", "add the source vector unchanged", "maps",
                           same_shape_only=True, needs_calibration=False))
register_method(MethodInfo("pad", "zero-pad or truncate every tensor to the target's shape", "maps",
                           same_shape_only=False, needs_calibration=False))

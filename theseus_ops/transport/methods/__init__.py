"""Transport methods, one package each, found on their own and registered by name.

A method is a folder ``theseus_ops/transport/methods/<name>/`` with two files: ``config.py``, its
options as a dataclass checked in ``__post_init__`` (each field declared with
:func:`theseus_ops.transport.options.option`, so the CLI and the DAG Params offer it with its help),
and ``method.py``, which calls :func:`register_method` once. Folders are imported on first use of
the registry (:func:`discover`); nothing else lists methods. The method's name is its folder's with
``-`` for ``_`` (``theseus_data_free`` registers ``theseus-data-free``).

What a method needs and can do is declared as :class:`Capabilities`. Callers decide from those, never
from a name: what inputs to pass, whether ``prepare`` applies, and whether the method is *not
applicable* to a pair (checked before any work, raising :class:`~theseus_ops.errors.NotApplicableError`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from theseus_ops.transport.methods.base import Method
from theseus_ops.transport.options import OptionSpec, option_specs

__all__ = ["Capabilities", "Method", "MethodInfo", "discover", "get_method", "method_names", "register_method",
           "registered", "unregister_method"]

_REGISTRY: dict[str, MethodInfo] = {}
_DISCOVERED = False


@dataclass(frozen=True)
class Capabilities:
    """What a method needs and handles; every caller reads these instead of testing names.

    ``needs_calibration``: calibration examples (or, with ``estimates_maps``, maps prepared from them).
    ``needs_labels``: those examples must carry ``labels`` (a task loss on the target).
    ``same_shapes_only``: defined only between models of identical shapes and depth.
    ``handles_lora``: accepts LoRA adapters (else full deltas only).
    ``estimates_maps``: the maps are estimated from the two models, so ``prepare`` can write them once
    and ``transport --alignment`` reuse them.
    ``in_default_workflow``: tried by the workflow when no methods are configured (a new, still measured
    method says False and is run only when named).
    ``streams``: ``prepare --stream`` can run it one block of each model at a time (docs/memory.md).
    """

    needs_calibration: bool = False
    needs_labels: bool = False
    same_shapes_only: bool = False
    handles_lora: bool = True
    estimates_maps: bool = False
    in_default_workflow: bool = True
    streams: bool = False

    def __post_init__(self) -> None:
        if self.needs_labels and not self.needs_calibration:
            raise ValueError("needs_labels implies needs_calibration: labels come with the calibration examples")


@dataclass(frozen=True)
class MethodInfo:
    """One registered method: its name, options, capabilities and implementation.

    ``order`` places it in listings (the workflow's default methods, report tables).
    """

    name: str
    summary: str
    config_cls: type
    impl: Method
    capabilities: Capabilities
    order: int = 100

    @property
    def option_prefix(self) -> str:
        """``gradfix`` for flags ``--gradfix-mode`` and report keys ``gradfix_mode``."""
        return self.name.replace("-", "_")

    def options(self) -> list[OptionSpec]:
        return option_specs(self.config_cls)

    def option_values(self, config: object) -> dict[str, Any]:
        """The method's own options as flat ``<prefix>_<field>`` values (reports, provenance)."""
        return {f"{self.option_prefix}_{spec.name}": getattr(config, spec.name) for spec in self.options()}


def register_method(name: str, config_cls: type, impl: Method, *, summary: str,
                    capabilities: Capabilities, order: int = 100) -> MethodInfo:
    """Add a method. A name registered twice is refused: a second folder or a test's toy must pick another."""
    if name in _REGISTRY:
        raise ValueError(f"transport method {name!r} is already registered (by "
                         f"{type(_REGISTRY[name].impl).__module__}); pick another name")
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"method {name}: config_cls must be a dataclass, got {config_cls!r}")
    if not isinstance(impl, Method):
        raise TypeError(f"method {name}: impl must be a Method instance, got {type(impl).__name__}")
    option_specs(config_cls)  # every option has a default and a help text
    config_cls()  # its defaults are valid
    info = MethodInfo(name, summary, config_cls, impl, capabilities, order)
    _REGISTRY[name] = info
    return info


def unregister_method(name: str) -> None:
    """Remove a method (tests' toys); unknown names are a programming error."""
    del _REGISTRY[name]


@contextlib.contextmanager
def registered(name: str, config_cls: type, impl: Method, *, summary: str, capabilities: Capabilities,
               order: int = 100) -> Iterator[MethodInfo]:
    """A method registered for the duration of a ``with`` block (tests), removed again afterwards."""
    discover()
    info = register_method(name, config_cls, impl, summary=summary, capabilities=capabilities, order=order)
    try:
        yield info
    finally:
        unregister_method(name)


def discover() -> None:
    """Import every ``<folder>/method.py`` under this package once; each registers its method.

    Folders are found by looking for ``method.py`` (no ``__init__.py`` needed), on every entry of this
    package's ``__path__``, in name order.
    """
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True  # set first: a method module that reads the registry must not recurse
    try:
        folders = sorted({p.name for root in __path__ for p in Path(root).iterdir()
                          if p.is_dir() and (p / "method.py").is_file()})
        for folder in folders:
            importlib.import_module(f"{__name__}.{folder}.method")
    except BaseException:
        _DISCOVERED = False
        raise


def get_method(name: str) -> MethodInfo:
    from theseus_ops.errors import InputError

    discover()
    if name not in _REGISTRY:
        raise InputError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    """Every registered method, in listing order (``order``, then name)."""
    discover()
    return [info.name for info in sorted(_REGISTRY.values(), key=lambda i: (i.order, i.name))]

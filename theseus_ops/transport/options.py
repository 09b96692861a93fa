"""Options declared once: a dataclass field carries its default, its help text and its choices.

The CLI (:mod:`theseus_ops.cli`) and the workflow's DAG Params read these declarations, so a flag's
help or default is never written a second time. Plain dataclasses, no argparse: the engine stays
free of the command line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


def option(default: Any, help: str, *, metavar: str | None = None, choices: tuple | None = None,
           type: type | None = None) -> Any:
    """A dataclass field with its help text (and, where the default does not say, its value type)."""
    return dataclasses.field(default=default, metadata={"help": help, "metavar": metavar, "choices": choices,
                                                        "type": type})


@dataclass(frozen=True)
class OptionSpec:
    """One declared option, as the CLI and the DAG Params need it."""

    name: str
    default: Any
    help: str
    type: type
    metavar: str | None = None
    choices: tuple | None = None

    @property
    def flag_suffix(self) -> str:
        return self.name.replace("_", "-")


def option_specs(config_cls: type) -> list[OptionSpec]:
    """Every field of ``config_cls`` declared with :func:`option`; a field without help is a programming error."""
    specs = []
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        if "help" not in f.metadata:
            raise TypeError(f"{config_cls.__name__}.{f.name} needs option(default, help=...) so the CLI can offer it")
        if f.default is dataclasses.MISSING:
            raise TypeError(f"{config_cls.__name__}.{f.name} needs a default: a method runs with its defaults")
        value_type = f.metadata.get("type") or type(f.default)
        specs.append(OptionSpec(f.name, f.default, f.metadata["help"], value_type, f.metadata.get("metavar"),
                                f.metadata.get("choices")))
    return specs

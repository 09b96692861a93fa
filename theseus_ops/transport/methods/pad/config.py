"""The pad baseline has no options: E is fixed by the two widths."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PadConfig:
    """No options; kept so that every method has one config class."""

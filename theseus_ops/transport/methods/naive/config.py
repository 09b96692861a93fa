"""The naive baseline has no options."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NaiveConfig:
    """No options; kept so that every method has one config class."""

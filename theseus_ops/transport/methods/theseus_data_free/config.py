"""Theseus without data: its own options are none; the probe seed is a shared map option (``--probe-seed``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TheseusDataFreeConfig:
    """No method-specific options (yet); kept so that every method has one config class."""

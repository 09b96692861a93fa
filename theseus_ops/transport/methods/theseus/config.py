"""Theseus' own options: none beyond the map options every map-making run shares.

Centering, whitening, the rank tolerance, the fill and the solver shape every estimated map, so they
live in :class:`theseus_ops.config.MapSettings`, which ``prepare`` and ``transport`` share.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TheseusConfig:
    """No method-specific options (yet); kept so that every method has one config class."""

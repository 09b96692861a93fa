"""One error hierarchy for the whole library.

The CLI turns any :class:`TheseusError` into a single line on stderr and exit code 2, so every
message here must name the problem and, where there is one, the fix.
"""

from __future__ import annotations


class TheseusError(Exception):
    """Base class of every error theseus-ops raises on purpose."""


class InputError(TheseusError):
    """The user's input (files, options, model pair) cannot be used as given."""


class UnsupportedArchitectureError(InputError):
    """The model's architecture has no family description."""


class PartialTransportError(TheseusError):
    """Some task-vector parameters could not be transported and --allow-partial was not given."""

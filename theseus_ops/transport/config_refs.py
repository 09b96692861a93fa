"""Config references: how an architecture names a value of a model's config.json.

Kept apart from the architecture loader so that the transport rules and the head maps, which the loader's
rule table imports, can resolve references without importing the loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from theseus_ops.errors import InputError

# A value read from a model's config.json: a key (dotted for nested objects, e.g.
# ``rope_parameters.partial_rotary_factor``), a literal number, or a list of those tried in order.
ConfigRef = int | float | str | list

MISSING = object()


def lookup(config: Mapping[str, Any], key: str) -> Any:
    """The value at a (dotted) key, or ``MISSING``."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def config_value(config: Mapping[str, Any], ref: ConfigRef, what: str) -> Any:
    """The first of ``ref``'s alternatives that the config has (a number is its own value).

    Raises InputError naming the keys when none is present: an architecture reads widths it cannot guess.
    """
    for alternative in ref if isinstance(ref, list) else [ref]:
        if isinstance(alternative, bool) or not isinstance(alternative, int | float | str):
            raise InputError(f"{what}: bad config reference {alternative!r}")
        if not isinstance(alternative, str):
            return alternative
        value = lookup(config, alternative)
        if value is not MISSING and value is not None:
            return value
    raise InputError(f"{what}: config.json has none of {ref!r}")


def config_int(config: Mapping[str, Any], ref: ConfigRef, what: str) -> int:
    value = config_value(config, ref, what)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what}: config value {ref!r} must be a positive integer, got {value!r}")
    return value


def valid_ref(ref: Any) -> bool:
    """Whether ``ref`` is a config reference: a key or number, or a non-empty list of them."""
    items = ref if isinstance(ref, list) else [ref]
    return bool(items) and all(isinstance(r, int | float | str) and not isinstance(r, bool) for r in items)

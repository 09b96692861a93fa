"""Untrusted names (tensor keys, file names, JSON values) shown inside a one-line error message."""

from __future__ import annotations


def shown(value: object, limit: int = 120) -> str:
    """``value`` as is when it is a short printable string, else its (shortened) ``repr``.

    A tensor name or JSON value may hold a newline or escape codes; printed raw it would split the
    error line the CLI promises, or rewrite the terminal.
    """
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

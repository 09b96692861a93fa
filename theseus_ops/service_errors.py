"""Errors of the catalog (MLflow) and the landing zone (S3 or a local directory).

All are :class:`~theseus_ops.errors.InputError` subclasses, so the CLI prints them as one line
and exits with code 2, like every other error theseus-ops raises on purpose.
"""

from __future__ import annotations

from theseus_ops.errors import InputError


class ServiceUnavailableError(InputError):
    """A remote service (MLflow, S3) stayed unreachable through every retry."""


class IntegrityError(InputError):
    """Downloaded or landed content does not match its recorded sha256 checksums."""


class CatalogError(InputError):
    """The catalog lacks an entry the request needs, or holds one that contradicts it."""

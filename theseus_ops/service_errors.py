"""Errors of the catalog (MLflow) and the landing zone (S3 or a local directory).

Only :class:`ServiceUnavailableError` is a :class:`~theseus_ops.errors.ServiceError` (exit 3,
retried by Airflow): the service did not answer. The others are
:class:`~theseus_ops.errors.InputError` subclasses (exit 2, never retried): the registry or the
zone answered, and what it holds contradicts the request, so a retry would fail the same way.
"""

from __future__ import annotations

from theseus_ops.errors import InputError, ServiceError


class ServiceUnavailableError(ServiceError):
    """A remote service (MLflow, S3) stayed unreachable through every retry."""


class IntegrityError(InputError):
    """Downloaded or landed content does not match its recorded sha256 checksums."""


class CatalogError(InputError):
    """The catalog lacks an entry the request needs, or holds one that contradicts it."""


class ConflictError(CatalogError):
    """Another writer holds this immutable entry (a base release, a landed release) with other content.

    Raised to every writer but the one that won, naming the content hash that is there.
    """

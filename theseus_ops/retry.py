"""Bounded retries with exponential backoff, for transient errors of remote services only.

A transient error is one a retry can plausibly cure: a refused or reset connection, a timeout,
HTTP 408/429/5xx, or S3 throttling. Everything else (a missing object, a bad request, an auth
failure) is raised at once. When every attempt fails, :class:`ServiceUnavailableError` says
which service was unreachable, how often it was tried, and the last error. It is a
:class:`~theseus_ops.errors.ServiceError`, not an input error: the CLI exits with code 3, and an
Airflow step lets it propagate so that Airflow retries the task later, with its own backoff.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from theseus_ops.service_errors import ServiceUnavailableError

log = logging.getLogger("theseus_ops")
T = TypeVar("T")

_TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}
_TRANSIENT_CODES = {
    # S3 / botocore error codes
    "RequestTimeout", "RequestTimeoutException", "SlowDown", "Throttling", "ThrottlingException",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequestsException",
    "ConditionalRequestConflict",  # S3: a concurrent conditional write to the key is in flight (409)
    # MLflow REST error codes (INTERNAL_ERROR only when the server sent it: see is_transient)
    "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED",
}


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the delay before try n+1 is ``base_delay * factor**(n-1)``, capped.

    Env defaults: ``THESEUS_RETRY_ATTEMPTS`` (4), ``THESEUS_RETRY_BASE_DELAY`` (0.5 s).
    """

    attempts: int = 4
    base_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 10.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be at least 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0 or self.factor < 1 or self.jitter < 0:
            raise ValueError("retry delays must be non-negative and the factor at least 1")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        return cls(attempts=int(os.environ.get("THESEUS_RETRY_ATTEMPTS", "4")),
                   base_delay=float(os.environ.get("THESEUS_RETRY_BASE_DELAY", "0.5")))

    def delay(self, failed_attempts: int) -> float:
        base = min(self.max_delay, self.base_delay * self.factor ** (failed_attempts - 1))
        return base * (1 + random.uniform(0, self.jitter))


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying; walks the exception's cause/context chain."""
    for e in _chain(exc):
        if isinstance(e, ConnectionError | TimeoutError):
            return True
        module = type(e).__module__ or ""
        name = type(e).__name__
        if module.startswith(("requests", "urllib3")) and name in (
            "ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "RetryError", "MaxRetryError",
            "NewConnectionError", "ProtocolError", "ChunkedEncodingError",
        ):
            return True
        if module.startswith("botocore") and name in (
            "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
            "ConnectionError", "ResponseStreamingError", "IncompleteReadError",
        ):
            return True
        response = getattr(e, "response", None)
        if isinstance(response, dict):  # botocore ClientError
            if response.get("Error", {}).get("Code") in _TRANSIENT_CODES:
                return True
            if response.get("ResponseMetadata", {}).get("HTTPStatusCode") in _TRANSIENT_HTTP:
                return True
        error_code = getattr(e, "error_code", None)  # MlflowException
        if isinstance(error_code, str) and error_code in _TRANSIENT_CODES:
            return True
        if error_code == "INTERNAL_ERROR" and (name == "RestException" or "failed with error code 5" in str(e)):
            return True  # an HTTP 500 from the server, not a client-side MlflowException
        status = getattr(e, "status_code", None) or getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int) and status in _TRANSIENT_HTTP:
            return True
    return False


def call_with_retry(fn: Callable[[], T], what: str, policy: RetryPolicy | None = None,
                    transient: Callable[[BaseException], bool] = is_transient,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``fn``; retry transient failures per ``policy``; other errors propagate unchanged."""
    policy = policy or RetryPolicy()
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not transient(exc):
                raise
            if attempt == policy.attempts:
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise ServiceUnavailableError(
                    f"{what}: unreachable after {policy.attempts} attempt(s) ({first_line})") from exc
            wait = policy.delay(attempt)
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, type(exc).__name__, attempt,
                        policy.attempts - 1, wait)
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover

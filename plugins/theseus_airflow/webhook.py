"""Parsing an MLflow webhook delivery: its signature headers and its body, all untrusted input.

Kept apart from the views (and free of Airflow imports) so that the rules are one pure function,
``parse_delivery``, that either returns a verified ``Delivery`` or raises an ``HTTPException``
with a 400 or 401 and a one-line reason: never another exception, whatever the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import HTTPException

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
MAX_CLOCK_SKEW_S = 300
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def reject(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


@dataclass(frozen=True)
class Delivery:
    """A verified MLflow webhook delivery: signed, fresh and of the documented shape."""

    delivery_id: str
    timestamp: int
    entity: str
    action: str
    data: dict

    @property
    def is_version_created(self) -> bool:
        return (self.entity, self.action) == ("model_version", "created")


def expected_signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's scheme: ``v1,`` + base64(HMAC-SHA256(secret, "<delivery id>.<timestamp>.<body>"))."""
    signed = f"{delivery_id}.{timestamp}.".encode("utf-8", "surrogatepass") + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> tuple[str, int]:
    """The (delivery id, timestamp) of a fresh request with a matching MLflow signature; else 401.

    Every header is untrusted text: a missing one, a timestamp that is not plain digits, one outside
    the window, or a signature that is not ASCII (``compare_digest`` refuses non-ASCII str) is a
    401 with a one-line reason, never an exception.
    """
    signature = headers.get(SIGNATURE_HEADER)
    delivery_id = headers.get(DELIVERY_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not (signature and delivery_id and timestamp):
        raise reject(401, "missing MLflow signature headers")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise reject(401, "malformed MLflow timestamp: not a unix time in seconds")
    if not (signature.isascii() and delivery_id.isascii()):
        raise reject(401, "malformed MLflow signature headers: not ASCII")
    stamp = int(timestamp)
    if abs((time.time() if now is None else now) - stamp) > MAX_CLOCK_SKEW_S:
        raise reject(401, "MLflow timestamp outside the accepted window")
    if not hmac.compare_digest(signature.encode(), expected_signature(secret, delivery_id, timestamp, body).encode()):
        raise reject(401, "bad MLflow signature")
    return delivery_id, stamp


def parse_delivery(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> Delivery:
    """Verify the signature (401), then the payload's shape (400): what the endpoint acts on.

    The shape is checked only after the signature, so an unsigned caller learns nothing about it.
    A ``model_version.created`` payload must name the version (``data.name`` a string,
    ``data.version`` a string or an integer).
    """
    delivery_id, stamp = verify_signature(secret, headers, body, now)
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or nested too deep
        raise reject(400, f"not an MLflow webhook payload: the body is not JSON ({type(exc).__name__})") from None
    if not isinstance(payload, dict):
        raise reject(400, f"not an MLflow webhook payload: a JSON {type(payload).__name__}, not an object")
    entity, action, data = payload.get("entity"), payload.get("action"), payload.get("data")
    if not (isinstance(entity, str) and isinstance(action, str) and isinstance(data, dict)):
        raise reject(400, "not an MLflow webhook payload: needs string 'entity' and 'action' and an object 'data'")
    delivery = Delivery(delivery_id, stamp, entity, action, data)
    if delivery.is_version_created:
        name, version = data.get("name"), data.get("version")
        if not isinstance(name, str) or isinstance(version, bool) or not isinstance(version, str | int):
            raise reject(400, "model_version.created needs a string data.name and a data.version")
    return delivery

"""Replay protection for the MLflow webhook: each signed delivery is acted on once.

A signed request stays valid for the whole clock-skew window, so a captured one could be sent again
and announce a release twice. Each delivery id (it is covered by the signature, so it cannot be
changed without the secret) is claimed by an INSERT on a primary key in a small table of Airflow's
metadata database, which every api-server worker process and replica shares: exactly one claim
wins, under any concurrency, and the others are replays. A row is kept until its timestamp has
left the window, after which the time check alone rejects the request, so the table stays small.
"""

from __future__ import annotations

import hashlib
import threading
import time

from sqlalchemy import BigInteger, Column, MetaData, String, Table, delete, insert, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

TABLE_NAME = "theseus_webhook_delivery"
_metadata = MetaData()
DELIVERIES = Table(TABLE_NAME, _metadata,
                   Column("delivery_key", String(64), primary_key=True),  # sha256 of the delivery id
                   Column("expires_at", BigInteger, nullable=False))  # unix seconds: the request is stale then
_created: set[int] = set()
_create_lock = threading.Lock()


def _engine(engine: Engine | None) -> Engine:
    if engine is not None:
        return engine
    from airflow import settings

    return settings.get_engine()


def _ensure_table(engine: Engine) -> None:
    """Create the table once per engine; a worker that loses the creation race finds it there."""
    if id(engine) in _created:
        return
    with _create_lock:
        if id(engine) in _created:
            return
        try:
            _metadata.create_all(engine, checkfirst=True)
        except DBAPIError:
            if not inspect(engine).has_table(TABLE_NAME):
                raise
        _created.add(id(engine))


def delivery_key(delivery_id: str) -> str:
    """A fixed-size key: delivery ids are sender-chosen strings of any length."""
    return hashlib.sha256(delivery_id.encode("utf-8", "surrogatepass")).hexdigest()


def claim(delivery_id: str, expires_at: int, now: float | None = None, engine: Engine | None = None) -> bool:
    """True for the first claim of ``delivery_id``; False when it was already claimed (a replay).

    Expired rows are removed first, in their own transaction; the claim is its own transaction, so
    a lost race (IntegrityError on the primary key) leaves nothing half done.
    """
    eng = _engine(engine)
    _ensure_table(eng)
    now = time.time() if now is None else now
    with eng.begin() as conn:
        conn.execute(delete(DELIVERIES).where(DELIVERIES.c.expires_at < int(now)))
    try:
        with eng.begin() as conn:
            conn.execute(insert(DELIVERIES).values(delivery_key=delivery_key(delivery_id), expires_at=int(expires_at)))
    except IntegrityError:
        return False
    return True


def release(delivery_id: str, engine: Engine | None = None) -> None:
    """Forget a claim whose delivery was not handled, so the sender's retry of it gets through."""
    eng = _engine(engine)
    _ensure_table(eng)
    with eng.begin() as conn:
        conn.execute(delete(DELIVERIES).where(DELIVERIES.c.delivery_key == delivery_key(delivery_id)))

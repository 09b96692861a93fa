"""The MLflow webhook's untrusted edges, without an api-server: the header and body parser, and the
replay log under real concurrency (processes racing on SQLite and on PostgreSQL).

The parser is signed with MLflow's own sender code, so the two cannot drift apart. The endpoint
itself, with the same cases over HTTP, is tested in ``test_airflow.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fastapi import HTTPException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.webhooks.delivery import _generate_hmac_signature
from starlette.datastructures import Headers

from tests.conftest_servers import PG, postgres_reachable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
from theseus_airflow import deliveries  # noqa: E402
from theseus_airflow.webhook import (  # noqa: E402
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Delivery,
    parse_delivery,
)

sys.path.remove(str(ROOT / "plugins"))
SECRET = "webhook-test-secret"
CREATED = {"entity": "model_version", "action": "created", "data": {"name": "fam", "version": "2"}}


def mlflow_headers(body: bytes, delivery: str | None = None, stamp: str | None = None,
                   secret: str = SECRET) -> dict[str, str]:
    """The headers MLflow's own delivery code sends for ``body`` (which it always sends as UTF-8; other
    bytes are signed by the same scheme over the raw bytes, as a hostile sender with the secret would)."""
    delivery = delivery or str(uuid.uuid4())
    stamp = stamp or str(int(time.time()))
    try:
        signature = _generate_hmac_signature(secret, delivery, stamp, body.decode("utf-8"))
    except UnicodeError:
        digest = hmac.new(secret.encode(), f"{delivery}.{stamp}.".encode() + body, hashlib.sha256).digest()
        signature = "v1," + base64.b64encode(digest).decode()
    return {"Content-Type": "application/json", DELIVERY_HEADER: delivery, TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: signature}


def as_received(headers: dict[str, str]):
    """Starlette's case-insensitive headers, as the endpoint gets them; a plain dict for text no HTTP
    request can carry (beyond latin-1), since the parser takes any mapping."""
    try:
        return Headers(headers=headers)
    except UnicodeEncodeError:
        return headers


def rejection(headers: dict[str, str], body: bytes) -> tuple[int, str]:
    with pytest.raises(HTTPException) as info:
        parse_delivery(SECRET, as_received(headers), body)
    return info.value.status_code, info.value.detail


def test_a_delivery_signed_by_mlflow_is_accepted():
    body = json.dumps(CREATED).encode()
    headers = mlflow_headers(body)
    got = parse_delivery(SECRET, Headers(headers=headers), body)
    assert got == Delivery(headers[DELIVERY_HEADER], int(headers[TIMESTAMP_HEADER]), "model_version", "created",
                           CREATED["data"])
    assert got.is_version_created


def _with(headers: dict[str, str], **changes: str | None) -> dict[str, str]:
    out = dict(headers)
    for key, value in changes.items():
        name = {"signature": SIGNATURE_HEADER, "timestamp": TIMESTAMP_HEADER, "delivery": DELIVERY_HEADER}[key]
        if value is None:
            out.pop(name)
        else:
            out[name] = value
    return out


@pytest.mark.parametrize(("changes", "reason"), [
    ({"signature": "v1,\u00e9t\u00e9"}, "not ASCII"),  # compare_digest raised TypeError on this: a 500
    ({"delivery": "d\u00e9livery"}, "not ASCII"),
    ({"timestamp": None}, "missing"),
    ({"signature": None}, "missing"),
    ({"delivery": None}, "missing"),
    ({"timestamp": "soon"}, "malformed MLflow timestamp"),
    ({"timestamp": "+1733100000"}, "malformed MLflow timestamp"),  # int() takes these; a timestamp is digits
    ({"timestamp": " 1733100000"}, "malformed MLflow timestamp"),
    ({"timestamp": "1_733_100_000"}, "malformed MLflow timestamp"),
    ({"timestamp": "\u0661\u0667\u0663\u0663"}, "malformed MLflow timestamp"),  # Arabic-Indic digits
    ({"timestamp": "9" * 400}, "malformed MLflow timestamp"),
    ({"timestamp": "1"}, "outside the accepted window"),
    ({"signature": "v1,AAAA"}, "bad MLflow signature"),
])
def test_malformed_signature_headers_are_401_with_one_line(changes, reason):
    body = json.dumps(CREATED).encode()
    status, detail = rejection(_with(mlflow_headers(body), **changes), body)
    assert status == 401 and reason in detail and "\n" not in detail


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "not JSON"),
    (b"not json", "not JSON"),
    (b"\xff\xfe{}", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # json.loads raises RecursionError, not ValueError
    (b"[1, 2]", "a JSON list, not an object"),
    (b'"model_version"', "a JSON str, not an object"),
    (b"null", "a JSON NoneType, not an object"),
    (b'{"entity": "model_version", "action": "created"}', "an object 'data'"),
    (b'{"entity": "model_version", "action": "created", "data": "x"}', "an object 'data'"),
    (b'{"entity": ["model_version"], "action": "created", "data": {}}', "string 'entity'"),
    (b'{"entity": "model_version", "action": "created", "data": {}}', "string data.name"),
    (b'{"entity": "model_version", "action": "created", "data": {"name": 3, "version": "1"}}', "data.name"),
    (b'{"entity": "model_version", "action": "created", "data": {"name": "f", "version": true}}', "data.version"),
    (b'{"entity": "model_version", "action": "created", "data": {"name": "f", "version": [1]}}', "data.version"),
])
def test_a_signed_body_of_the_wrong_shape_is_400(body, reason):
    status, detail = rejection(mlflow_headers(body), body)
    assert status == 400 and reason in detail and "\n" not in detail


def test_other_events_parse_and_are_not_version_creations():
    body = json.dumps({"entity": "registered_model", "action": "created", "data": {"name": "x"}}).encode()
    assert not parse_delivery(SECRET, Headers(headers=mlflow_headers(body)), body).is_version_created


# -- property: any bytes and any headers give a Delivery or a clean 400/401 -----------------------
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                     max_leaves=12)
_payload = st.fixed_dictionaries({}, optional={
    "entity": st.sampled_from(["model_version", "registered_model"]) | _json,
    "action": st.sampled_from(["created", "updated"]) | _json,
    "data": st.fixed_dictionaries({}, optional={"name": st.text(max_size=10) | _json,
                                                 "version": st.text(max_size=4) | st.integers() | _json}) | _json,
}) | _json
_body = st.one_of(st.binary(max_size=200), _payload.map(lambda p: json.dumps(p).encode()))
_header = st.text(st.characters(max_codepoint=255), max_size=40) | st.text(max_size=10)  # latin-1, as Starlette decodes


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_body, signed=st.booleans(), delivery=st.none() | _header, stamp=st.none() | _header | st.just("now"),
       signature=st.none() | _header)
def test_parser_never_raises_anything_but_a_400_or_401(body, signed, delivery, stamp, signature):
    """Half the cases carry a valid signature, so the body parser sees every shape of body."""
    if signed:
        headers = mlflow_headers(body)
    else:
        parts = {DELIVERY_HEADER: delivery, SIGNATURE_HEADER: signature,
                 TIMESTAMP_HEADER: str(int(time.time())) if stamp == "now" else stamp}
        headers = {k: v for k, v in parts.items() if v is not None}
    try:
        got = parse_delivery(SECRET, as_received(headers), body)
    except HTTPException as exc:
        assert exc.status_code == 400 if signed else exc.status_code == 401
        assert exc.detail and "\n" not in exc.detail
        return
    assert signed and isinstance(got, Delivery) and isinstance(got.data, dict)
    assert got.delivery_id == headers[DELIVERY_HEADER]
    assert isinstance(got.entity, str) and isinstance(got.action, str)
    if got.is_version_created:
        assert isinstance(got.data["name"], str) and isinstance(got.data["version"], str | int)


# -- the replay log: one winner across processes ---------------------------------------------------
_CLAIMER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from sqlalchemy import create_engine
from theseus_airflow import deliveries
url, go, delivery = sys.argv[2], Path(sys.argv[3]), sys.argv[4]
engine = create_engine(url, connect_args={"timeout": 60} if url.startswith("sqlite") else {})
deliveries._ensure_table(engine)
while not go.exists():
    time.sleep(0.005)
print("won" if deliveries.claim(delivery, int(time.time()) + 300, engine=engine) else "replay", flush=True)
"""


def race(url: str, tmp: Path, delivery: str, n: int = 6) -> list[str]:
    go = tmp / f"go-{uuid.uuid4().hex}"
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, str(ROOT / "plugins"), url, str(go), delivery],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    time.sleep(3)  # every process is importing or waiting at the line
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        results.append(out.strip())
    return results


@pytest.fixture(params=["sqlite", "postgresql"])
def delivery_db(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'airflow.db'}"
        return
    if not postgres_reachable():
        pytest.skip(f"PostgreSQL is not reachable at {PG['host']}:{PG['port']}")
    import psycopg2

    db = f"theseus_test_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(dbname="postgres", **PG)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{db}"')
    try:
        yield f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{db}"
    finally:
        conn.cursor().execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.close()


def test_concurrent_claims_of_one_delivery_have_one_winner(delivery_db, tmp_path):
    delivery = str(uuid.uuid4())
    assert sorted(race(delivery_db, tmp_path, delivery)) == ["replay"] * 5 + ["won"]
    assert sorted(race(delivery_db, tmp_path, delivery, n=2)) == ["replay", "replay"]  # still remembered
    assert sorted(race(delivery_db, tmp_path, str(uuid.uuid4()), n=2)) == ["replay", "won"]  # another id is not


def test_a_claim_is_kept_for_the_window_then_forgotten_and_can_be_given_back(delivery_db):
    from sqlalchemy import create_engine, func, select

    engine = create_engine(delivery_db)
    now = 2_000_000_000
    assert deliveries.claim("a", now + 300, now=now, engine=engine)
    assert not deliveries.claim("a", now + 300, now=now + 299, engine=engine)  # inside the window: a replay
    assert deliveries.claim("a", now + 900, now=now + 301, engine=engine)  # expired row pruned: the time check rules
    deliveries.release("a", engine=engine)
    assert deliveries.claim("a", now + 900, now=now + 302, engine=engine)  # a failed delivery's retry gets through
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(deliveries.DELIVERIES)).scalar() == 1
    engine.dispose()

"""The theseus-ops web app inside the Airflow api-server: the releases view and the MLflow webhook.

``GET /theseus/`` (Airflow login required) lists base releases, newest first, with the transport
summary table of each processed one. ``POST /theseus/webhooks/mlflow`` receives MLflow's
``model_version.created`` webhook, checks its HMAC signature against ``THESEUS_WEBHOOK_SECRET``
(401 when it does not match) and, when the new version is a pending base release, emits the same
Asset event the watcher would, so the transport starts without waiting for the next watch.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import os
import time

from airflow.api_fastapi.core_api.security import GetUserDep  # logged-in user (JWT or UI cookie), else 401
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

from theseus_ops.errors import TheseusError
from theseus_ops.workflow import WorkflowConfig, mark_announced, release_of_version, release_overview

log = logging.getLogger("theseus_ops")
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
MAX_CLOCK_SKEW_S = 300
RELEASE_ASSET_NAME = "theseus_base_release"

app = FastAPI(title="theseus-ops", description="Releases, transport summaries and the MLflow webhook")


# -- the releases view ----------------------------------------------------------------------------
_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}
h2{font-size:1.1em;margin-top:1.6em}table{border-collapse:collapse;font-size:.85em}
td,th{border:1px solid #bbb;padding:3px 7px;text-align:left}th{background:#e8eaf2}
.status{padding:1px 6px;border-radius:3px;background:#eee}.processed{background:#cfe9cf}
.pending{background:#f6e3b4}.failed{color:#a00}"""


def _table_html(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='summary'><tr>{cells}</tr>{body}</table>"


def render_releases(releases: list[dict]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>theseus-ops releases</title>"
             f"<style>{_STYLE}</style></head><body><h1>theseus-ops: base releases and transport summaries</h1>"]
    if not releases:
        parts.append("<p>No base release is registered yet.</p>")
    for r in releases:
        title = f"{r['family']} version {r['version']} ({r.get('release') or '?'})"
        since = f" from version {r['supersedes']}" if r.get("supersedes") else ""
        parts.append(f"<h2 class='release'>{html.escape(title)}{html.escape(since)} "
                     f"<span class='status {r['status']}'>{r['status']}</span></h2>")
        if r.get("summary_run"):
            parts.append(f"<p>summary run <code>{html.escape(r['summary_run'])}</code></p>")
        if r.get("error"):
            parts.append(f"<p class='failed'>{html.escape(r['error'])}</p>")
        if r.get("table"):
            head, rows, failed = r["table"]
            parts.append(_table_html(head, rows))
            if failed:
                items = "".join(f"<li>{html.escape(v)}: {html.escape(e)}</li>" for v, e in failed)
                parts.append(f"<p class='failed'>Failed task vectors:</p><ul class='failed'>{items}</ul>")
    parts.append("</body></html>")
    return "".join(parts)


@app.get("/", response_class=HTMLResponse)
def releases_view(user: GetUserDep, family: str | None = None) -> str:
    try:
        return render_releases(release_overview(WorkflowConfig.from_env(), family))
    except TheseusError as exc:
        raise HTTPException(status_code=503, detail=str(exc).splitlines()[0]) from exc


@app.get("/releases.json")
def releases_json(user: GetUserDep, family: str | None = None) -> list[dict]:
    try:
        return release_overview(WorkflowConfig.from_env(), family)
    except TheseusError as exc:
        raise HTTPException(status_code=503, detail=str(exc).splitlines()[0]) from exc


# -- the MLflow webhook ---------------------------------------------------------------------------
def expected_signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's scheme: ``v1,`` + base64(HMAC-SHA256(secret, "<delivery id>.<timestamp>.<body>"))."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_signature(secret: str, headers, body: bytes, now: float | None = None) -> None:
    """Raise 401 unless the request carries a fresh, matching MLflow signature."""
    signature = headers.get(SIGNATURE_HEADER)
    delivery_id = headers.get(DELIVERY_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not (signature and delivery_id and timestamp):
        raise HTTPException(status_code=401, detail="missing MLflow signature headers")
    try:
        skew = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        raise HTTPException(status_code=401, detail="malformed MLflow timestamp") from None
    if skew > MAX_CLOCK_SKEW_S:
        raise HTTPException(status_code=401, detail="MLflow timestamp outside the accepted window")
    if not hmac.compare_digest(signature, expected_signature(secret, delivery_id, timestamp, body)):
        raise HTTPException(status_code=401, detail="bad MLflow signature")


def emit_release_event(release: dict) -> int:
    """Record the Asset event (as the watcher's ``announce`` does) and queue the transport DAG; its id."""
    from airflow.assets.manager import asset_manager
    from airflow.models.asset import AssetModel
    from airflow.utils import timezone
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        asset = session.scalar(select(AssetModel).where(AssetModel.name == RELEASE_ASSET_NAME).limit(1))
        if asset is None:
            raise HTTPException(status_code=503, detail=f"asset {RELEASE_ASSET_NAME} is unknown: are the DAGs parsed?")
        event = asset_manager.register_asset_change(
            asset=asset, timestamp=timezone.utcnow(), session=session, source_is_api=True,
            extra={k: release.get(k) for k in ("family", "version", "supersedes", "release")} | {"via": "webhook"})
        if event is None:
            raise HTTPException(status_code=503, detail=f"asset {RELEASE_ASSET_NAME} did not take the event")
        session.flush()
        return int(event.id)


@app.post("/webhooks/mlflow")
async def mlflow_webhook(request: Request) -> dict:
    secret = os.environ.get("THESEUS_WEBHOOK_SECRET")
    if not secret:
        raise HTTPException(status_code=503, detail="THESEUS_WEBHOOK_SECRET is not set; the webhook is disabled")
    body = await request.body()
    verify_signature(secret, request.headers, body)
    try:
        payload = json.loads(body)
        entity, action, data = payload["entity"], payload["action"], payload["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise HTTPException(status_code=400, detail=f"not an MLflow webhook payload ({exc})") from exc
    if (entity, action) != ("model_version", "created"):
        return {"ignored": f"{entity}.{action} is not model_version.created"}
    cfg = WorkflowConfig.from_env()
    try:
        release = release_of_version(cfg, str(data.get("name", "")), str(data.get("version", "")))
        if release is None:
            return {"ignored": f"{data.get('name')}/{data.get('version')} is not a pending base release"}
        event_id = emit_release_event(release)
        mark_announced(cfg, release["family"], release["version"])
    except TheseusError as exc:
        raise HTTPException(status_code=503, detail=str(exc).splitlines()[0]) from exc
    log.info("webhook: announced %s/%s (asset event %d)", release["family"], release["version"], event_id)
    return {"announced": release, "asset_event": event_id}

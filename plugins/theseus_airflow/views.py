"""The theseus-ops web app inside the Airflow api-server: the releases view and the MLflow webhook.

``GET /theseus/`` (Airflow login required) lists base releases, newest first, with the transport
summary table of each processed one. ``POST /theseus/webhooks/mlflow`` receives MLflow's
``model_version.created`` webhook, checks its HMAC signature against ``THESEUS_WEBHOOK_SECRET``
(401 when it does not match, is stale or is malformed; 400 for a signed body of the wrong shape;
409 for a delivery id already received, see ``deliveries``) and, when the new version is a pending
base release not yet announced, records the announcement and emits the same Asset event the
watcher would, so the transport starts without waiting for the next watch.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os

from airflow.api_fastapi.core_api.security import GetUserDep  # logged-in user (JWT or UI cookie), else 401
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from theseus_airflow import deliveries
from theseus_airflow.webhook import MAX_CLOCK_SKEW_S, Delivery, parse_delivery, reject
from theseus_ops.catalog import Catalog, VersionRef
from theseus_ops.errors import TheseusError
from theseus_ops.workflow import ANNOUNCED_TAG, WorkflowConfig, mark_announced, release_of_version, release_overview

log = logging.getLogger("theseus_ops")
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
                     f"<span class='status {html.escape(r['status'])}'>{html.escape(r['status'])}</span></h2>")
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


def _unmark_announced(cfg: WorkflowConfig, family: str, version: str) -> None:
    catalog = Catalog(cfg.catalog)
    catalog.call("delete tag", catalog.client.delete_model_version_tag, family, version, ANNOUNCED_TAG)


def announce_version(delivery: Delivery) -> dict:
    """Announce the pending release a new model version starts, once.

    The announcement is recorded (``theseus.announced_at``) before the Asset event goes out, as
    the watcher's ``announce`` task does, so whoever sees the event also sees the record and the
    watcher does not announce the release a second time. A release already announced (by the
    watcher, or by an earlier delivery) is not announced again; if the event cannot be emitted the
    record is taken back, so the sender's retry or the next watcher run announces it.
    """
    if not delivery.is_version_created:
        return {"ignored": f"{delivery.entity}.{delivery.action} is not model_version.created"}
    name, version = delivery.data["name"], str(delivery.data["version"])
    cfg = WorkflowConfig.from_env()
    try:
        release = release_of_version(cfg, name, version)
        if release is None:
            return {"ignored": f"{name}/{version} is not a pending base release"}
        tags = Catalog(cfg.catalog).get_version(VersionRef(release["family"], release["version"])).tags or {}
        if tags.get(ANNOUNCED_TAG):
            return {"ignored": f"{name}/{version} was already announced at {tags[ANNOUNCED_TAG]}"}
        mark_announced(cfg, release["family"], release["version"])
        try:
            event_id = emit_release_event(release)
        except BaseException:
            with contextlib.suppress(TheseusError):
                _unmark_announced(cfg, release["family"], release["version"])
            raise
    except TheseusError as exc:
        raise HTTPException(status_code=503, detail=str(exc).splitlines()[0]) from exc
    except SQLAlchemyError as exc:  # the metadata database is busy or down: MLflow retries a 503
        raise reject(503, f"the Asset event could not be recorded ({type(exc).__name__})") from exc
    log.info("webhook: announced %s/%s (asset event %d)", release["family"], release["version"], event_id)
    return {"announced": release, "asset_event": event_id}


def handle_delivery(delivery: Delivery) -> dict:
    """Claim the delivery (409 on a replay, in any worker), then act on it.

    A delivery that fails (a 503 that MLflow retries with the same id) gives its claim back, so
    the retry is handled rather than refused as a replay.
    """
    try:
        first = deliveries.claim(delivery.delivery_id, delivery.timestamp + MAX_CLOCK_SKEW_S)
    except SQLAlchemyError as exc:  # e.g. SQLite's "database is locked": MLflow retries a 503
        raise reject(503, f"the webhook delivery log is unavailable ({type(exc).__name__})") from exc
    if not first:
        raise reject(409, f"delivery {delivery.delivery_id} was already received: a replay")
    try:
        return announce_version(delivery)
    except BaseException:
        with contextlib.suppress(SQLAlchemyError):
            deliveries.release(delivery.delivery_id)
        raise


@app.post("/webhooks/mlflow")
async def mlflow_webhook(request: Request) -> dict:
    secret = os.environ.get("THESEUS_WEBHOOK_SECRET")
    if not secret:
        raise HTTPException(status_code=503, detail="THESEUS_WEBHOOK_SECRET is not set; the webhook is disabled")
    delivery = parse_delivery(secret, request.headers, await request.body())
    # registry and database calls block: keep them off the event loop the whole api-server shares
    return await run_in_threadpool(handle_delivery, delivery)

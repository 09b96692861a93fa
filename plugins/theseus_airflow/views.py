"""The theseus-ops web app inside the Airflow api-server: the releases view and the MLflow webhook.

``GET /theseus/`` (Airflow login required) lists base releases, newest first: for each processed
one a row per task vector with its latest outcome (across filtered runs), links to the summary and
outcome runs, model versions and aliases in the MLflow UI, and the α-sweep plot
(``/theseus/plots/<base line>/<version>/alpha-sweeps.png``); ``/theseus/releases.json`` is the same as JSON.

``POST /theseus/webhooks/mlflow`` receives MLflow's
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
import tempfile
import threading
from pathlib import Path
from typing import Annotated

from airflow.api_fastapi.core_api.security import GetUserDep  # logged-in user (JWT or UI cookie), else 401
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from theseus_airflow import deliveries
from theseus_airflow.webhook import MAX_CLOCK_SKEW_S, Delivery, parse_delivery, reject
from theseus_ops.catalog import Catalog, VersionRef
from theseus_ops.errors import TheseusError
from theseus_ops.workflow import (
    ANNOUNCED_TAG,
    BASE_LINE_KEY,
    Release,
    WorkflowConfig,
    mark_announced,
    release_of_version,
    release_overview,
)
from theseus_ops.workflow.summary import release_plot, ui_url_of

log = logging.getLogger("theseus_ops")
RELEASE_ASSET_NAME = "theseus_base_release"

# ``?family=NAME``: one base line only (the query parameter keeps its wire name, BASE_LINE_KEY)
BaseLineQuery = Annotated[str | None, Query(alias=BASE_LINE_KEY)]

app = FastAPI(title="theseus-ops", description="Releases, transport summaries and the MLflow webhook")


# -- the releases view ----------------------------------------------------------------------------
_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}
h2{font-size:1.1em;margin-top:1.6em}table{border-collapse:collapse;font-size:.85em}
td,th{border:1px solid #bbb;padding:3px 7px;text-align:left}th{background:#e8eaf2}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.sel{font-weight:bold;background:#eef7ee}
.status{padding:1px 6px;border-radius:3px;background:#eee}.processed,.success{background:#cfe9cf}
.pending{background:#f6e3b4}.failed{color:#a00}span.failed{background:#f4d0d0}.na{color:#888}
img.sweeps{max-width:100%;margin-top:.8em;border:1px solid #ddd}a{color:#1a56a8}"""
_plot_lock = threading.Lock()  # pyplot keeps global state: one figure at a time per process


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _link(url: str | None, text: object, cls: str = "") -> str:
    """``text`` linked to ``url`` in a new tab (the view is in an iframe), or just the text without a URL."""
    if not url or not str(url).startswith(("http://", "https://")):
        return _e(text)
    klass = f" class='{_e(cls)}'" if cls else ""
    return f"<a{klass} href='{_e(url)}' target='_blank' rel='noopener'>{_e(text)}</a>"


def _num(value: float | None) -> str:
    return "<td class='num'>–</td>" if value is None else f"<td class='num'>{value:.3f}</td>"


def _vectors_html(methods: list[str], rows: list[dict]) -> str:
    head = ["vector", "task", "metric", "base val", "base test"]
    for m in methods:
        head += [f"{m} α", f"{m} val", f"{m} test"]
    head += ["selected", "selected α", "test (selected)", "Δ general loss", "registered model", "aliases", "gate",
             "outcome run"]
    out = ["<table class='summary'><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    for r in rows:
        vector = f"<td class='vector'>{_link(r.get('vector_url'), r['vector'], 'vector')}</td>"
        if r["state"] != "success":
            out.append(f"<tr class='failed'>{vector}<td class='failed' colspan='{len(head) - 1}'>failed: "
                       f"{_e(r.get('error'))}</td></tr>")
            continue
        cells = [vector, f"<td>{_e(r['task'])}</td>", f"<td>{_e(r['metric'])}</td>", _num(r["base"]["val"]),
                 _num(r["base"]["test"])]
        for c in r["methods"]:
            if "val" in c:
                sel = " sel" if c["selected"] else ""
                cells += [f"<td class='num{sel}'>{c['alpha']:g}</td>", _num(c["val"]).replace("'num'", f"'num{sel}'"),
                          _num(c["test"]).replace("'num'", f"'num{sel}'")]
            else:
                cells.append(f"<td class='na' colspan='3' title='{_e(c['not_applicable'])}'>n/a: "
                             f"{_e(c['not_applicable'])}</td>")
        alpha = r.get("selected_alpha")
        aliases = ", ".join(_link(a["url"], f"@{a['alias']}", "alias") for a in r.get("aliases") or [])
        cells += [f"<td>{_e(r['selected'])}</td>", f"<td class='num'>{'–' if alpha is None else f'{alpha:g}'}</td>",
                  _num(r.get("selected_test")), _num(r.get("general_loss_change")),
                  f"<td>{_link(r.get('model_url'), r.get('model') or '–', 'model')}</td>", f"<td>{aliases or '–'}</td>",
                  f"<td>{_e((r.get('gate') or '–').replace('|', ' / '))}</td>",
                  f"<td>{_link(r.get('outcome_run_url'), (r.get('outcome_run') or '–')[:12], 'outcome-run')}</td>"]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def render_releases(releases: list[dict]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>theseus-ops releases</title>"
             f"<style>{_STYLE}</style></head><body><h1>theseus-ops: base releases and transport summaries</h1>"]
    if not releases:
        parts.append("<p>No base release is registered yet.</p>")
    for r in releases:
        title = f"{r[BASE_LINE_KEY]} version {r['version']} ({r.get('release') or '?'})"
        since = f" from version {r['supersedes']}" if r.get("supersedes") else ""
        state = ""
        if r.get("state"):
            n = len(r.get("vectors") or [])
            text = (f"failed: {r.get('vectors_failed', 0)} of {n} vectors" if r["state"] == "failed"
                    else f"success: {n} vectors")
            state = f" <span class='status state {_e(r['state'])}'>{_e(text)}</span>"
        parts.append(f"<h2 class='release'>{_link(r.get('url'), title, 'base')}{_e(since)} "
                     f"<span class='status {_e(r['status'])}'>{_e(r['status'])}</span>{state}</h2>")
        if r.get("summary_runs"):
            runs = ", ".join(_link(s.get("url"), s["run_id"], "summary-run") for s in r["summary_runs"])
            parts.append(f"<p>summary runs (newest first): {runs}</p>")
        elif r.get("summary_run"):
            parts.append(f"<p>summary run <code>{_e(r['summary_run'])}</code></p>")
        if r.get("error"):
            parts.append(f"<p class='failed'>{_e(r['error'])}</p>")
        if r.get("vectors"):
            parts.append(_vectors_html(r.get("methods") or [], r["vectors"]))
        if r.get("plot"):
            alt = f"α sweeps on val of {r[BASE_LINE_KEY]}/{r['version']}; the selection starred"
            parts.append(f"<img class='sweeps' src='{_e(r['plot'])}' loading='lazy' alt='{_e(alt)}'>")
    parts.append("</body></html>")
    return "".join(parts)


def _overview(base_line: str | None) -> list[dict]:
    cfg = WorkflowConfig.from_env()
    return release_overview(cfg, base_line, ui_url=ui_url_of(cfg, os.environ.get("THESEUS_MLFLOW_UI_URL")))


@app.get("/", response_class=HTMLResponse)
def releases_view(user: GetUserDep, base_line: BaseLineQuery = None) -> str:
    try:
        return render_releases(_overview(base_line))
    except TheseusError as exc:
        raise HTTPException(status_code=503, detail=str(exc).splitlines()[0]) from exc


@app.get("/releases.json")
def releases_json(user: GetUserDep, base_line: BaseLineQuery = None) -> list[dict]:
    try:
        return _overview(base_line)
    except TheseusError as exc:
        raise HTTPException(status_code=503, detail=str(exc).splitlines()[0]) from exc


@app.get("/plots/{base_line}/{version}/alpha-sweeps.png")
def release_plot_png(user: GetUserDep, base_line: str, version: str) -> Response:
    """The α sweeps of every vector's latest outcome of a release (the rows the view shows), as a PNG."""
    if not version.isdigit():
        raise HTTPException(status_code=404, detail=f"{version!r} is not a version number")
    try:
        with tempfile.TemporaryDirectory(prefix="theseus-plot-") as tmp, _plot_lock:
            path = release_plot(WorkflowConfig.from_env(), base_line, version, Path(tmp))
            data = path.read_bytes() if path is not None else None
    except TheseusError as exc:
        raise HTTPException(status_code=503, detail=str(exc).splitlines()[0]) from exc
    if data is None:
        raise HTTPException(status_code=404, detail=f"{base_line}/{version} has no α sweep to plot")
    return Response(content=data, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


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
            extra=Release.from_json(release).to_json() | {"via": "webhook"})  # the watcher's extra, and how
        if event is None:
            raise HTTPException(status_code=503, detail=f"asset {RELEASE_ASSET_NAME} did not take the event")
        session.flush()
        return int(event.id)


def _unmark_announced(cfg: WorkflowConfig, base_line: str, version: str) -> None:
    catalog = Catalog(cfg.catalog)
    catalog.call("delete tag", catalog.client.delete_model_version_tag, base_line, version, ANNOUNCED_TAG)


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
        tags = Catalog(cfg.catalog).get_version(VersionRef(release[BASE_LINE_KEY], release["version"])).tags or {}
        if tags.get(ANNOUNCED_TAG):
            return {"ignored": f"{name}/{version} was already announced at {tags[ANNOUNCED_TAG]}"}
        mark_announced(cfg, release[BASE_LINE_KEY], release["version"])
        try:
            event_id = emit_release_event(release)
        except BaseException:
            with contextlib.suppress(TheseusError):
                _unmark_announced(cfg, release[BASE_LINE_KEY], release["version"])
            raise
    except TheseusError as exc:
        raise HTTPException(status_code=503, detail=str(exc).splitlines()[0]) from exc
    except SQLAlchemyError as exc:  # the metadata database is busy or down: MLflow retries a 503
        raise reject(503, f"the Asset event could not be recorded ({type(exc).__name__})") from exc
    log.info("webhook: announced %s/%s (asset event %d)", release[BASE_LINE_KEY], release["version"], event_id)
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

"""Release summaries: one MLflow run per release with the per-task table and the α-sweep plots.

Also where failed task vectors are recorded (a run per failure, so the summary can say why a vector
has no outcome even when the orchestrator only knows that its task failed) and what the UI view
reads back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from pathlib import Path

from theseus_ops.catalog.client import check_model_name
from theseus_ops.errors import TheseusError
from theseus_ops.plots import SweepPanel, sweep_figure
from theseus_ops.workflow.config import WorkflowConfig
from theseus_ops.workflow.reconcile import PROCESSED_TAG, base_versions, catalog_of, families
from theseus_ops.workflow.release import _refs, parse_ref
from theseus_ops.workflow.runs import find_finished_run, log_run, read_text_artifact

log = logging.getLogger("theseus_ops")
SUMMARY_TAG = "theseus.release_summary"
SUMMARY_KEY_TAG = "theseus.release_summary_key"
FAILURE_TAG = "theseus.failed_vector"
SUMMARY_JSON = "summary.json"
NO_OUTCOME = "its task ended without an outcome or a recorded error (killed, or an upstream step failed)"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


_LONG_NUMBER = re.compile(r"-?\d+\.\d{4,}(?:e[-+]?\d+)?")


def round_numbers(text: str) -> str:
    """Numbers with more than three decimals (the gate's reason, e.g. ``0.0234375``) to three significant digits."""
    return _LONG_NUMBER.sub(lambda m: f"{float(m.group()):.3g}", text)


def not_applicable(reason: str) -> str:
    """``n/a`` with a short reason: why a method did not run on this pair (shapes differ, LoRA, ...)."""
    text = reason.splitlines()[0] if reason else ""
    if "identical shape" in text:
        short = "shapes differ"
    elif "LoRA adapter" in text:
        short = "LoRA adapter"
    else:
        short = text.split(";")[0].strip()
        short = short if len(short) <= 60 else short[:57] + "..."
    return f"n/a: {short}" if short else "n/a"


def aligned(head: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with every column padded to its widest cell (the terminal report)."""
    widths = [max(len(c) for c in col) for col in zip(head, *rows)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in (head, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def is_failure(outcome: dict) -> bool:
    return "error" in outcome or "methods" not in outcome


# -- failures -------------------------------------------------------------------------------------
def _failure_value(pair: dict, vector: str) -> str:
    _source, target = _refs(pair)
    return f"{target}|{parse_ref(vector)}"


def record_failure(cfg: WorkflowConfig, pair: dict, vector: str, error: BaseException | str) -> str:
    """Log why porting ``vector`` to the pair's target failed; the newest record is the one reported."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, BaseException) and not isinstance(error, TheseusError):
        text = f"{type(error).__name__}: {text}"
    _source, target = _refs(pair)
    return log_run(catalog_of(cfg), f"failed-{parse_ref(vector).name}-to-{target.name}-{target.version}",
                   {FAILURE_TAG: _failure_value(pair, vector)}, {"error.txt": text + "\n"})


def recorded_failure(cfg: WorkflowConfig, pair: dict, vector: str) -> str | None:
    catalog = catalog_of(cfg)
    run = find_finished_run(catalog, FAILURE_TAG, _failure_value(pair, vector), newest=True)
    if run is None:
        return None
    with tempfile.TemporaryDirectory(prefix="theseus-failure-") as tmp:
        return read_text_artifact(catalog, run.info.run_id, "error.txt", Path(tmp)).strip()


def collect_outcomes(cfg: WorkflowConfig, pair: dict, vectors: list[str], outcomes: list[dict]) -> list[dict]:
    """One entry per listed vector, in list order: its outcome, or ``{"vector", "error"}`` if it has none."""
    by_vector = {o["vector"]: o for o in outcomes if o and "vector" in o}
    return [by_vector.get(v) or {"vector": v, "error": recorded_failure(cfg, pair, v) or NO_OUTCOME}
            for v in vectors]


# -- tables and plots -----------------------------------------------------------------------------
def table(methods: list[str], outcomes: list[dict]) -> tuple[list[str], list[list[str]], list[tuple[str, str]]]:
    """(header, rows, failures): base and each method as val/test at its α, the selection, what was registered."""
    head = ["vector", "task", "metric", "base val/test", *[f"{m} val/test (α)" for m in methods],
            "selected", "test (selected)", "Δ general loss", "registered model", "gate"]
    rows, failed = [], []
    for o in outcomes:
        if is_failure(o):
            failed.append((o.get("vector", "?"), str(o.get("error", NO_OUTCOME)).splitlines()[0]))
            continue
        m = o["metric"]
        tie = "token_accuracy" if m == "exact_match" else "exact_match"  # the tie-breaker, shown on val
        cells = [o["vector"], o["task"], m,
                 f"{_fmt(o['base']['val'][m])}/{_fmt(o['base']['test'][m])} (val {tie} {_fmt(o['base']['val'][tie])})"]
        for method in methods:
            r = o["methods"].get(method, {})
            cells.append(f"{_fmt(r['val'][m])}/{_fmt(r['test'][m])} (α {r['alpha']:g}; val {tie} {_fmt(r['val'][tie])})"
                         if "val" in r else not_applicable(r.get("not_applicable", "")))
        reg = o["registered"]
        cells += [o["selected"], _fmt(o["selected_test"]), _fmt(o["general_loss_change"]), reg["model"] or "–",
                  round_numbers(reg["gate"] or "–").replace("|", "/")]
        rows.append(cells)
    return head, rows, failed


def markdown_table(cfg: WorkflowConfig, pair: dict, outcomes: list[dict]) -> str:
    source, target = _refs(pair)
    head, rows, failed = table(list(cfg.methods), outcomes)
    lines = [f"# {target.name} release {pair['target'].get('release')} ({target}) from {source}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    if failed:
        lines += ["", "## Failed task vectors", ""] + [f"- {vector}: {error}" for vector, error in failed]
    return "\n".join(lines) + "\n"


def sweep_plot(pair: dict, outcomes: list[dict], folder: Path) -> Path | None:
    """The release's α sweeps on val: a panel per task vector, the base's val score dashed."""
    _source, target = _refs(pair)
    panels = [SweepPanel(f"{o['task']} ({o['vector']})", {m: r.get("sweep") for m, r in o["methods"].items()},
                         ("target base", o["base"]["val"][o["metric"]]))
              for o in outcomes if not is_failure(o)]
    if not panels:
        return None
    metrics = {o["metric"] for o in outcomes if not is_failure(o)}
    metric = metrics.pop() if len(metrics) == 1 else "exact_match"
    return sweep_figure(panels, f"{target}: α sweeps on val", metric, folder / "alpha-sweeps.png")


# -- summaries ------------------------------------------------------------------------------------
def summarize_release(cfg: WorkflowConfig, pair: dict, outcomes: list[dict]) -> str:
    """One MLflow run per release and result set (table in Markdown and JSON, α-sweep PNG); its run id.

    Idempotent: the run is keyed by the release and by which outcome run (or error) each vector
    has, so a rerun that changed nothing returns the existing run, while a rerun that fixed a
    failed vector writes a new summary (the newest is the one the UI shows).
    """
    source, target = _refs(pair)
    catalog = catalog_of(cfg)
    value = f"{target.name}/{target.version}"
    results = sorted((o.get("vector", "?"), o.get("outcome_run") or f"error: {o.get('error')}") for o in outcomes)
    key = hashlib.sha256(json.dumps({"release": value, "results": results}).encode()).hexdigest()
    existing = find_finished_run(catalog, SUMMARY_KEY_TAG, key)
    if existing is not None:
        return existing.info.run_id
    ok = [o for o in outcomes if not is_failure(o)]
    payload = {"family": target.name, "source_base": str(source), "target_base": str(target),
               "release": pair["target"].get("release"), "methods": list(cfg.methods), "outcomes": outcomes}
    with tempfile.TemporaryDirectory(prefix="theseus-summary-") as tmp:
        plot = sweep_plot(pair, outcomes, Path(tmp))
        return log_run(catalog, f"release-{target.name}-{target.version}",
                       {SUMMARY_TAG: value, SUMMARY_KEY_TAG: key, "theseus.source_base": str(source),
                        "theseus.target_base": str(target)},
                       {"summary.md": markdown_table(cfg, pair, outcomes), SUMMARY_JSON: json.dumps(payload, indent=2)},
                       {"vectors_ok": len(ok), "vectors_failed": len(outcomes) - len(ok),
                        "models_candidate": sum(bool(o["registered"]["candidate"]) for o in ok)},
                       files=[plot] if plot else None)


def read_summary(cfg: WorkflowConfig, run_id: str) -> dict:
    """The ``summary.json`` payload of a release-summary run."""
    with tempfile.TemporaryDirectory(prefix="theseus-summary-") as tmp:
        return json.loads(read_text_artifact(catalog_of(cfg), run_id, SUMMARY_JSON, Path(tmp)))


def release_overview(cfg: WorkflowConfig, family: str | None = None, limit: int = 20) -> list[dict]:
    """Newest base releases first with their status and, once processed, their summary table.

    What the Airflow UI view shows; ``status`` is ``first`` (nothing to port from), ``pending`` or
    ``processed``. A summary that cannot be read is reported in ``error`` instead of hiding the row.
    """
    names = [check_model_name(family)] if family else families(cfg)
    catalog = catalog_of(cfg)
    releases = []
    for name in names:
        versions = base_versions(catalog, name)
        for index, mv in enumerate(versions):
            tags = mv.tags or {}
            run_id = tags.get(PROCESSED_TAG)
            status = "processed" if run_id else ("first" if index == 0 else "pending")
            releases.append({"family": name, "version": str(mv.version), "release": tags.get("theseus.release"),
                             "supersedes": str(versions[index - 1].version) if index else None,
                             "created": int(mv.creation_timestamp or 0), "status": status, "summary_run": run_id})
    releases.sort(key=lambda r: r["created"], reverse=True)
    releases = releases[:limit]
    from mlflow.exceptions import MlflowException  # the registry answered: no such run (deleted, hand-edited tag)

    for r in releases:
        if r["summary_run"]:
            try:
                summary = read_summary(cfg, r["summary_run"])
                r["table"] = table(summary.get("methods") or [], summary["outcomes"])
            except (TheseusError, MlflowException, KeyError, ValueError, OSError) as exc:
                r["error"] = f"summary run {r['summary_run']} is unreadable: {exc}"
    return releases


def mlflow_ui_links(cfg: WorkflowConfig, outcome: dict, ui_url: str | None) -> dict[str, str]:
    """MLflow UI links of an outcome: its run, and the registered model version when there is one."""
    if not ui_url:
        return {}
    ui = ui_url.rstrip("/")
    links = {}
    if outcome.get("outcome_run"):
        links["mlflow_run"] = f"{ui}/#/experiments/{catalog_of(cfg).experiment_id()}/runs/{outcome['outcome_run']}"
    model = (outcome.get("registered") or {}).get("model")
    if model:
        ref = parse_ref(model)
        links["model_version"] = f"{ui}/#/models/{ref.name}/versions/{ref.version}"
    return links


def ui_url_of(cfg: WorkflowConfig, env_value: str | None) -> str | None:
    """Where users open MLflow: ``THESEUS_MLFLOW_UI_URL``, else the tracking URI when it is a web server."""
    if env_value:
        return env_value
    uri = cfg.catalog.tracking_uri or ""
    return uri if uri.startswith(("http://", "https://")) else None


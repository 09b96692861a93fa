"""Release summaries: one MLflow run per release with the per-task table and the α-sweep plots.

Also where failed task vectors are recorded (a run per failure, so the summary can say why a vector
has no outcome even when the orchestrator only knows that its task failed) and what the UI view
reads back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import tempfile
from pathlib import Path

from theseus_ops.catalog.client import check_model_name
from theseus_ops.catalog.schema import (
    FAILURE_TAG,
    SOURCE_BASE_TAG,
    SUMMARY_KEY_TAG,
    SUMMARY_TAG,
    TARGET_BASE_TAG,
    BaseReleaseTags,
)
from theseus_ops.errors import TheseusError
from theseus_ops.plots import outcome_panel, sweep_figure
from theseus_ops.storage import BASE_LINE_KEY
from theseus_ops.workflow.config import WorkflowConfig
from theseus_ops.workflow.contracts import Failure, Outcome, Pair, Result
from theseus_ops.workflow.pairs import parse_ref
from theseus_ops.workflow.reconcile import PROCESSED_TAG, base_lines, base_versions, catalog_of
from theseus_ops.workflow.records import config_params
from theseus_ops.workflow.runs import find_finished_run, log_run, read_text_artifact

log = logging.getLogger("theseus_ops")
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
def _failure_value(pair: Pair, vector: str) -> str:
    return f"{pair.target_ref}|{parse_ref(vector)}"


def record_failure(cfg: WorkflowConfig, pair: Pair, vector: str, error: BaseException | str) -> str:
    """Log why porting ``vector`` to the pair's target failed; the newest record is the one reported."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, BaseException) and not isinstance(error, TheseusError):
        text = f"{type(error).__name__}: {text}"
    target = pair.target_ref
    return log_run(catalog_of(cfg), f"failed-{parse_ref(vector).name}-to-{target.name}-{target.version}",
                   {FAILURE_TAG: _failure_value(pair, vector)}, {"error.txt": text + "\n"})


def recorded_failure(cfg: WorkflowConfig, pair: Pair, vector: str) -> str | None:
    catalog = catalog_of(cfg)
    run = find_finished_run(catalog, FAILURE_TAG, _failure_value(pair, vector), newest=True)
    if run is None:
        return None
    with tempfile.TemporaryDirectory(prefix="theseus-failure-") as tmp:
        return read_text_artifact(catalog, run.info.run_id, "error.txt", Path(tmp)).strip()


def collect_outcomes(cfg: WorkflowConfig, pair: Pair, vectors: list[str], outcomes: list[Outcome]) -> list[Result]:
    """One entry per listed vector, in list order: its outcome, or a :class:`Failure` saying why it has none."""
    by_vector = {o.vector: o for o in outcomes}
    return [by_vector.get(v) or Failure(v, recorded_failure(cfg, pair, v) or NO_OUTCOME) for v in vectors]


# -- tables and plots -----------------------------------------------------------------------------
def _tie_metric(outcome: dict) -> str | None:
    """The metric that broke ties on the task metric; outcomes recorded before it was stored are generation's."""
    if "tie_metric" in outcome:
        return outcome["tie_metric"]
    return "token_accuracy" if outcome["metric"] == "exact_match" else "exact_match"


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
        tie = _tie_metric(o)  # the tie-breaker, shown on val

        def tie_note(val: dict, tie: str | None = tie) -> str:
            return f"val {tie} {_fmt(val[tie])}" if tie and tie in val else ""

        base_note = tie_note(o["base"]["val"])
        cells = [o["vector"], o["task"], m,
                 f"{_fmt(o['base']['val'][m])}/{_fmt(o['base']['test'][m])}" + (f" ({base_note})" if base_note else "")]
        for method in methods:
            r = o["methods"].get(method, {})
            if "val" not in r:
                cells.append(not_applicable(r.get("not_applicable", "")))
                continue
            note = "; ".join(x for x in (f"α {r['alpha']:g}", tie_note(r["val"])) if x)
            cells.append(f"{_fmt(r['val'][m])}/{_fmt(r['test'][m])} ({note})")
        reg = o["registered"]
        cells += [o["selected"], _fmt(o["selected_test"]), _fmt(o["general_loss_change"]), reg["model"] or "–",
                  round_numbers(reg["gate"] or "–").replace("|", "/")]
        rows.append(cells)
    return head, rows, failed


def markdown_table(cfg: WorkflowConfig, pair: Pair, outcomes: list[dict]) -> str:
    """The release's table as Markdown (``summary.md``); ``outcomes`` as recorded (JSON)."""
    source, target = pair.source_ref, pair.target_ref
    head, rows, failed = table(list(cfg.methods), outcomes)
    lines = [f"# {target.name} release {pair.target.release} ({target}) from {source}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    if failed:
        lines += ["", "## Failed task vectors", ""] + [f"- {vector}: {error}" for vector, error in failed]
    return "\n".join(lines) + "\n"


def sweep_plot(pair: Pair, outcomes: list[dict], folder: Path) -> Path | None:
    """The release's α sweeps on val: a panel per task vector, the base's val score dashed, the selection starred."""
    return outcomes_plot(str(pair.target_ref), outcomes, folder)


def outcomes_plot(target: str, outcomes: list[dict], folder: Path) -> Path | None:
    panels = [outcome_panel(o) for o in outcomes if not is_failure(o)]
    if not panels:
        return None
    metrics = {o["metric"] for o in outcomes if not is_failure(o)}
    metric = metrics.pop() if len(metrics) == 1 else "exact_match"
    return sweep_figure(panels, f"{target}: α sweeps on val", metric, folder / "alpha-sweeps.png")


# -- summaries ------------------------------------------------------------------------------------
def summarize_release(cfg: WorkflowConfig, pair: Pair, results: list[Result]) -> str:
    """One MLflow run per release and result set (table in Markdown and JSON, α-sweep PNG); its run id.

    Idempotent: the run is keyed by the release and by which outcome run (or error) each vector
    has, so a rerun that changed nothing returns the existing run, while a rerun that fixed a
    failed vector writes a new summary (the newest is the one the UI shows).
    """
    source, target = pair.source_ref, pair.target_ref
    outcomes = [r.to_json() for r in results]  # the record's shape (summary.json), as the view reads it back
    catalog = catalog_of(cfg)
    value = f"{target.name}/{target.version}"
    keyed = sorted((o.get("vector", "?"), o.get("outcome_run") or f"error: {o.get('error')}") for o in outcomes)
    key = hashlib.sha256(json.dumps({"release": value, "results": keyed}).encode()).hexdigest()
    existing = find_finished_run(catalog, SUMMARY_KEY_TAG, key)
    if existing is not None:
        return existing.info.run_id
    ok = [o for o in outcomes if not is_failure(o)]
    payload = {BASE_LINE_KEY: target.name, "source_base": str(source), "target_base": str(target),
               "release": pair.target.release, "methods": list(cfg.methods), "outcomes": outcomes}
    with tempfile.TemporaryDirectory(prefix="theseus-summary-") as tmp:
        plot = sweep_plot(pair, outcomes, Path(tmp))
        return log_run(catalog, f"release-{target.name}-{target.version}",
                       {SUMMARY_TAG: value, SUMMARY_KEY_TAG: key, SOURCE_BASE_TAG: str(source),
                        TARGET_BASE_TAG: str(target)},
                       {"summary.md": markdown_table(cfg, pair, outcomes), SUMMARY_JSON: json.dumps(payload, indent=2)},
                       {"vectors_ok": len(ok), "vectors_failed": len(outcomes) - len(ok),
                        "models_candidate": sum(bool(o["registered"]["candidate"]) for o in ok)},
                       files=[plot] if plot else None,
                       params={**config_params(cfg, source, target), "release": pair.target.release,
                               "vectors": ",".join(sorted(o.get("vector", "?") for o in outcomes))})


def read_summary(cfg: WorkflowConfig, run_id: str) -> dict:
    """The ``summary.json`` payload of a release-summary run."""
    with tempfile.TemporaryDirectory(prefix="theseus-summary-") as tmp:
        return json.loads(read_text_artifact(catalog_of(cfg), run_id, SUMMARY_JSON, Path(tmp)))


def summary_runs(cfg: WorkflowConfig, base_line: str, version: str, limit: int = 100) -> list[str]:
    """Run ids of every FINISHED summary of ``base_line/version``, oldest first (a filtered run adds one)."""
    catalog = catalog_of(cfg)
    runs = catalog.call("search runs", catalog.client.search_runs, [catalog.experiment_id()],
                        filter_string=f"tags.`{SUMMARY_TAG}` = '{check_model_name(base_line)}/{int(version)}' "
                                      f"and attributes.status = 'FINISHED'",
                        max_results=limit, order_by=["attributes.start_time ASC"])
    return [r.info.run_id for r in runs]


def latest_outcomes(cfg: WorkflowConfig, run_ids: list[str]) -> tuple[list[str], list[dict], list[str], list[str]]:
    """(methods, outcomes, errors, read) over summaries ``run_ids`` (oldest first): each vector's newest outcome.

    A filtered manual run summarises only its vectors; the vectors it left out keep the outcome of
    the summary before, so the view shows every vector the release has, each as last computed.
    Each outcome carries ``summary_run``, the summary it was read from.
    """
    from mlflow.exceptions import MlflowException  # the registry answered: no such run (deleted, hand-edited tag)

    methods: list[str] = []
    by_vector: dict[str, dict] = {}
    errors, read = [], []
    for run_id in run_ids:
        try:
            summary = read_summary(cfg, run_id)
            outcomes = list(summary["outcomes"])
        except (TheseusError, MlflowException, KeyError, ValueError, TypeError, OSError) as exc:
            errors.append(f"summary run {run_id} is unreadable: {exc}")
            continue
        read.append(run_id)
        methods += [m for m in summary.get("methods") or [] if m not in methods]
        for o in outcomes:
            if isinstance(o, dict):
                by_vector.pop(str(o.get("vector", "?")), None)  # the newest goes last, in its run's order
                by_vector[str(o.get("vector", "?"))] = {**o, "summary_run": run_id}
    return methods, list(by_vector.values()), errors, read


def _method_cells(methods: list[str], o: dict) -> list[dict]:
    m = o["metric"]
    cells = []
    for method in methods:
        r = o["methods"].get(method) or {}
        if "val" in r:
            cells.append({"method": method, "alpha": r["alpha"], "val": r["val"][m], "test": r["test"][m],
                          "general_loss": r.get("general_loss"), "selected": method == o.get("selected")})
        else:
            cells.append({"method": method, "not_applicable": r.get("not_applicable") or "not run"})
    return cells


def vector_rows(cfg: WorkflowConfig, methods: list[str], outcomes: list[dict], ui: str | None) -> list[dict]:
    """One row per vector for the view: numbers in their own fields, with MLflow UI links."""
    catalog = catalog_of(cfg)
    rows = []
    for o in outcomes:
        vector = str(o.get("vector", "?"))
        row: dict = {"vector": vector, "vector_url": _version_url(ui, vector), "summary_run": o.get("summary_run"),
                     "summary_run_url": run_url(cfg, ui, o.get("summary_run"))}
        if is_failure(o):
            rows.append({**row, "state": "failed", "error": str(o.get("error", NO_OUTCOME)).splitlines()[0]})
            continue
        m, reg = o["metric"], o.get("registered") or {}
        links = mlflow_ui_links(cfg, o, ui)
        aliases = []
        if reg.get("model"):
            with contextlib.suppress(Exception):  # the model may have been deleted since: no aliases then
                aliases = sorted(catalog.get_version(parse_ref(reg["model"])).aliases or [])
        rows.append({**row, "state": "success", "task": o["task"], "metric": m,
                     "outcome_run": o.get("outcome_run"), "outcome_run_url": links.get("mlflow_run"),
                     "base": {"val": o["base"]["val"][m], "test": o["base"]["test"][m]},
                     "methods": _method_cells(methods, o), "selected": o["selected"],
                     "selected_alpha": o.get("selected_alpha"), "selected_test": o.get("selected_test"),
                     "general_loss_change": o.get("general_loss_change"), "model": reg.get("model"),
                     "model_url": links.get("model_version"), "gate": reg.get("gate"),
                     "aliases": [{"alias": a, "url": links.get("model_version")} for a in aliases]})
    return rows


def release_overview(cfg: WorkflowConfig, base_line: str | None = None, limit: int = 20,
                     ui_url: str | None = None) -> list[dict]:
    """Newest base releases first with their status and, once processed, every vector's latest outcome.

    What the Airflow UI view shows; ``status`` is ``first`` (nothing to port from), ``pending`` or
    ``processed``; ``state`` is what the transport DAG run reports for it: ``failed`` when any
    vector's latest outcome failed, else ``success`` (None before any summary). ``vectors`` has one
    row per vector (see ``vector_rows``), ``table`` the same as text cells. A summary that cannot be
    read is reported in ``error`` instead of hiding the row. Links go to the MLflow UI at ``ui_url``.
    """
    names = [check_model_name(base_line)] if base_line else base_lines(cfg)
    catalog = catalog_of(cfg)
    releases = []
    for name in names:
        versions = base_versions(catalog, name)
        for index, mv in enumerate(versions):
            tags = mv.tags or {}
            run_id = tags.get(PROCESSED_TAG)
            status = "processed" if run_id else ("first" if index == 0 else "pending")
            releases.append({BASE_LINE_KEY: name, "version": str(mv.version),
                             "release": BaseReleaseTags.read(tags, "release"),
                             "supersedes": str(versions[index - 1].version) if index else None,
                             "created": int(mv.creation_timestamp or 0), "status": status, "summary_run": run_id,
                             "url": _version_url(ui_url, f"{name}/{mv.version}")})
    releases.sort(key=lambda r: r["created"], reverse=True)
    releases = releases[:limit]
    for r in releases:
        r.update(state=None, summary_runs=[], vectors=[])
        if not r["summary_run"]:
            continue
        ids = summary_runs(cfg, r[BASE_LINE_KEY], r["version"])
        if r["summary_run"] not in ids:  # the marker names a run the search does not find: read it anyway
            ids.append(r["summary_run"])
        methods, outcomes, errors, read = latest_outcomes(cfg, ids)
        if errors:
            r["error"] = "; ".join(errors)
        r["summary_runs"] = [{"run_id": i, "url": run_url(cfg, ui_url, i)} for i in reversed(read)]
        r["summary_run_url"] = run_url(cfg, ui_url, r["summary_run"]) if r["summary_run"] in read else None
        if outcomes:
            r["table"] = table(methods, outcomes)
            r["methods"] = methods
            r["vectors"] = vector_rows(cfg, methods, outcomes, ui_url)
            failed = sum(is_failure(o) for o in outcomes)
            r["state"] = "failed" if failed else "success"
            r["vectors_failed"] = failed
            r["plot"] = f"plots/{r[BASE_LINE_KEY]}/{r['version']}/alpha-sweeps.png" if failed < len(outcomes) else None
    return releases


def release_plot(cfg: WorkflowConfig, base_line: str, version: str, folder: Path) -> Path | None:
    """The α-sweep PNG of every vector's latest outcome of ``base_line/version`` (what the view shows); None if none."""
    _methods, outcomes, _errors, _read = latest_outcomes(cfg, summary_runs(cfg, base_line, version))
    return outcomes_plot(f"{base_line}/{version}", outcomes, folder)


def run_url(cfg: WorkflowConfig, ui_url: str | None, run_id: str | None) -> str | None:
    if not ui_url or not run_id:
        return None
    return f"{ui_url.rstrip('/')}/#/experiments/{catalog_of(cfg).experiment_id()}/runs/{run_id}"


def _version_url(ui_url: str | None, ref: str) -> str | None:
    try:
        parsed = parse_ref(ref)
    except TheseusError:
        return None
    return f"{ui_url.rstrip('/')}/#/models/{parsed.name}/versions/{parsed.version}" if ui_url else None


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


"""Porting every task vector of a source base release to its successor, one DAG step per function.

Protocol per task vector (as ``bench quality``): calibrate on train, pick α per method on val,
report test at that α beside the general-capability LM loss, select the method best on val with
the untouched target base as a candidate too, so nothing worse than the target base is ever
registered. Every step is idempotent: registry writes are keyed (``theseus.idempotency_key``),
alignments are cached by (pair, calibration fingerprint), and a finished vector's outcome is
recorded in an MLflow run that a rerun returns instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from safetensors.torch import save_file

from theseus_ops import api
from theseus_ops.catalog import (
    Catalog,
    Evaluation,
    VersionRef,
    get_task_vector,
    register_transported_model,
    register_transported_vector,
)
from theseus_ops.catalog.client import check_model_name
from theseus_ops.catalog.schema import ROLE, ROLE_BASE, ROLE_TASK_VECTOR
from theseus_ops.config import CalibrationSpec, PrepareConfig, TransportConfig
from theseus_ops.errors import InputError, NotApplicableError, TheseusError
from theseus_ops.evaluation import NotApplicable, Selection, TaskConfig, evaluator_for, sweep_and_select
from theseus_ops.evaluation.config import resolve_metric
from theseus_ops.evaluation.protocol import Evaluator
from theseus_ops.io.atomic import normalize_modes, temp_file
from theseus_ops.io.calibration import fingerprint
from theseus_ops.io.models import inspect_model_dir
from theseus_ops.io.task_vectors import dense_deltas
from theseus_ops.transport.methods import get_method
from theseus_ops.workflow.config import WorkflowConfig
from theseus_ops.workflow.evaluation import dataset_dir, task_config  # noqa: F401 - dataset_dir: re-exported
from theseus_ops.workflow.reconcile import base_versions, catalog_of
from theseus_ops.workflow.runs import find_finished_run, log_run, read_text_artifact

log = logging.getLogger("theseus_ops")
WORKFLOW_FORMAT = "theseus-workflow/1"
OUTCOME_KEY_TAG = "theseus.outcome_key"
OUTCOME_FILE = "outcome.json"


# -- small helpers -------------------------------------------------------------------------------
def parse_ref(ref: str) -> VersionRef:
    """``name/version`` (what DAG steps pass around) to a VersionRef."""
    name, sep, version = str(ref).rpartition("/")
    if not sep or not name or not version.isdigit():
        raise InputError(f"{ref!r} is not a registry reference of the form name/version")
    return VersionRef(check_model_name(name), version)


def _sha(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# -- resolve_pair ----------------------------------------------------------------------------------
def _local_base(catalog: Catalog, cfg: WorkflowConfig, mv) -> dict:
    """Download a base version into the work dir once; reuse a copy whose weights hash still matches."""
    sha = mv.tags.get("theseus.sha256", "")
    dest = cfg.work_dir / "bases" / mv.name / f"{mv.version}-{sha[:16]}"
    if (dest / "config.json").is_file():
        try:
            if inspect_model_dir(dest).sha256() == sha:
                return {"version": str(mv.version), "release": mv.tags.get("theseus.release"), "sha256": sha,
                        "dir": str(dest.resolve())}
        except TheseusError:
            pass
        log.warning("local copy %s does not match %s/%s; downloading again", dest, mv.name, mv.version)
    if dest.exists():
        shutil.rmtree(dest)
    catalog.download(VersionRef(mv.name, str(mv.version)), dest)
    return {"version": str(mv.version), "release": mv.tags.get("theseus.release"), "sha256": sha,
            "dir": str(dest.resolve())}


def resolve_pair(cfg: WorkflowConfig, family: str, target_version: str, source_version: str | None = None) -> dict:
    """Both bases of a release step as local, verified directories: ``{"family", "source", "target"}``.

    The source defaults to the highest base version below the target (the release it supersedes).
    """
    catalog = catalog_of(cfg)
    versions = {str(v.version): v for v in base_versions(catalog, family)}
    target_version = str(target_version)
    if target_version not in versions:
        raise InputError(f"{family}/{target_version} is not a registered base release")
    if source_version is None:
        lower = [v for v in versions if int(v) < int(target_version)]
        if not lower:
            raise InputError(f"{family}/{target_version} has no earlier base release to port task vectors from")
        source_version = max(lower, key=int)
    source_version = str(source_version)
    if source_version not in versions:
        raise InputError(f"{family}/{source_version} is not a registered base release")
    if source_version == target_version:
        raise InputError(f"source and target are the same base version {family}/{target_version}")
    return {"family": family, "source": _local_base(catalog, cfg, versions[source_version]),
            "target": _local_base(catalog, cfg, versions[target_version])}


def local_pair(cfg: WorkflowConfig, pair: dict) -> dict:
    """``pair`` if both base directories exist on this machine, else the same pair resolved here.

    ``resolve_pair`` may run on another worker than the step using its result (Celery queues); the
    pair names versions and hashes, so any worker can fetch the identical bases again.
    """
    source, target = _refs(pair)
    if all(Path(pair[side].get("dir", "")).joinpath("config.json").is_file() for side in ("source", "target")):
        return pair
    local = resolve_pair(cfg, pair["family"], target.version, source.version)
    for side in ("source", "target"):
        if local[side]["sha256"] != pair[side]["sha256"]:
            raise InputError(f"{pair['family']}/{local[side]['version']} changed since the pair was resolved")
    return local


def _refs(pair: dict) -> tuple[VersionRef, VersionRef]:
    try:
        return (VersionRef(pair["family"], pair["source"]["version"]),
                VersionRef(pair["family"], pair["target"]["version"]))
    except (KeyError, TypeError) as exc:
        raise InputError(f"not a pair from resolve_pair: missing {exc}") from exc


# -- list_task_vectors -----------------------------------------------------------------------------
def list_task_vectors(cfg: WorkflowConfig, pair: dict, tasks: list[str] | None = None) -> list[str]:
    """``name/version`` of every task vector registered on the source base (only ``tasks`` if given)."""
    source, _target = _refs(pair)
    catalog = catalog_of(cfg)
    found = catalog.search_versions(tags={ROLE: ROLE_TASK_VECTOR, "theseus.base_model": source.name,
                                          "theseus.base_version": source.version})
    wanted = set(tasks) if tasks else None
    # registration order (the family's task order), so the DAG's mapped tasks and the summary agree
    found = sorted(found, key=lambda v: (int(v.creation_timestamp or 0), v.name, int(v.version)))
    return [f"{v.name}/{v.version}" for v in found if wanted is None or v.tags.get("theseus.task") in wanted]


# -- MLflow records of an outcome ------------------------------------------------------------------
def config_params(cfg: WorkflowConfig, source: VersionRef, target: VersionRef) -> dict[str, object]:
    """The configuration an outcome or summary was computed with, as MLflow params (run comparison)."""
    gate = cfg.gate
    return {"methods": ",".join(cfg.methods), "alphas": ",".join(f"{a:g}" for a in cfg.alphas),
            "gate.margin": repr(gate.margin), "gate.max_general_loss_increase": repr(gate.max_general_loss_increase),
            "gate.move_champion": str(gate.move_champion), "gate.higher_is_better": str(gate.higher_is_better),
            "calibration_rows": str(cfg.calibration_rows), "source_base": str(source), "target_base": str(target),
            "source_version": source.version, "target_version": target.version}


def outcome_metrics(outcome: dict) -> dict[str, float]:
    """An outcome's numbers as MLflow metrics: the selection, the base, and each method at its α."""
    m = outcome["metric"]
    out = {"selected_test": outcome["selected_test"], "base_test": outcome["base_test"],
           "selected_alpha": outcome["selected_alpha"], f"base_val_{m}": outcome["base"]["val"][m],
           f"base_test_{m}": outcome["base"]["test"][m]}
    if outcome.get("general_loss_change") is not None:
        out["general_loss_change"] = outcome["general_loss_change"]
    for method, r in outcome["methods"].items():
        if "val" in r:
            out.update({f"{method}.alpha": r["alpha"], f"{method}.val_{m}": r["val"][m],
                        f"{method}.test_{m}": r["test"][m]})
    return {k: float(v) for k, v in out.items() if v is not None}


def vector_plot(outcome: dict, folder: Path) -> Path | None:
    """This vector's α sweeps on val (selection starred) as ``alpha-sweep.png``; None when nothing was swept."""
    from theseus_ops.plots import outcome_panel, sweep_figure

    panel = outcome_panel(outcome)
    if not any(panel.sweeps.values()):
        return None
    try:
        return sweep_figure([panel], f"{outcome['vector']} -> {outcome['target_base']}: α sweeps on val",
                            outcome["metric"], folder / "alpha-sweep.png")
    except InputError as exc:  # no matplotlib: the record is still written, without its plot
        log.warning("no α-sweep plot for %s: %s", outcome["vector"], exc)
        return None


# -- process_task_vector ---------------------------------------------------------------------------
def _calibration(cfg: WorkflowConfig, pair: dict, evaluator: Evaluator) -> tuple[CalibrationSpec, str]:
    """Train inputs encoded by each base's own tokenizer or processor, saved once per fingerprint.

    A task whose evaluator cannot encode calibration inputs gets none: the methods that align on
    data are then not applicable to it.
    """
    sides = {}
    for side in ("source", "target"):
        tensors = evaluator.calibration(pair[side]["dir"], cfg.calibration_rows)
        if tensors is None:
            return CalibrationSpec(), ""
        sides[side] = tensors
    prints = {side: fingerprint(t) for side, t in sides.items()}
    fp = _sha(prints)
    folder = cfg.work_dir / "calibration"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for side, tensors in sides.items():
        path = folder / f"{prints[side][:24]}.safetensors"
        if not path.is_file():
            tmp = temp_file(path)
            try:
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
                normalize_modes(tmp)  # save_file writes 0600; outputs get the umask's mode
                tmp.replace(path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        paths[side] = str(path)
    if prints["source"] == prints["target"]:
        return CalibrationSpec(both=paths["source"]), fp
    return CalibrationSpec(source=paths["source"], target=paths["target"]), fp


def _alignment(cfg: WorkflowConfig, pair: dict, method: str, spec: CalibrationSpec, cal_fp: str) -> str:
    """Prepare once per (pair, method, calibration fingerprint) and cache under the work dir."""
    src, tgt = pair["source"], pair["target"]
    uses_data = get_method(method).capabilities.needs_calibration
    suffix = f"-{cal_fp[:16]}" if uses_data else ""
    name = f"{src['sha256'][:12]}-{tgt['sha256'][:12]}-{method}{suffix}.safetensors"
    path = cfg.work_dir / "alignments" / pair["family"] / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        prep = PrepareConfig(src["dir"], tgt["dir"], spec if uses_data else CalibrationSpec(), method=method,
                             device=cfg.device)
        api.prepare(prep, path)
    return str(path.resolve())


def _transport(cfg: WorkflowConfig, pair: dict, method: str, tv_path: Path, spec: CalibrationSpec, cal_fp: str,
               out_dir: Path) -> tuple[Path, str]:
    """(transported vector, alignment URI) for one method; its capabilities say which inputs it gets."""
    caps = get_method(method).capabilities
    kwargs: dict = {}
    alignment_uri = f"none://{method}"
    if caps.estimates_maps:  # prepared once per pair and calibration, reused by every task vector
        path = _alignment(cfg, pair, method, spec, cal_fp)
        kwargs["alignment"] = path
        alignment_uri = Path(path).as_uri()
    elif caps.needs_calibration:
        kwargs["calibration"] = spec
    dest = out_dir / (method if tv_path.is_dir() else f"{method}.safetensors")
    api.transport(TransportConfig(pair["source"]["dir"], pair["target"]["dir"], method, task_vector=str(tv_path),
                                  device=cfg.device, **kwargs), dest, out_dir / f"{method}.report.json")
    return dest, alignment_uri


def transported_delta(cfg: WorkflowConfig, pair: dict, method: str, tv_path: Path, spec: CalibrationSpec,
                      cal_fp: str, out_dir: Path, paths: dict[str, tuple[Path, str]]):
    """One method's transported vector as dense deltas on the target, or :class:`NotApplicable`.

    Only a :class:`NotApplicableError` (the method's declared requirements rule it out: identical
    shapes, calibration, labels, LoRA support) makes a method "not applicable". Any other error (a
    corrupt vector, a bad alignment) propagates and fails the task, so it can never drop every method
    and quietly keep the base. ``paths`` records (vector path, alignment URI) per method that ran.
    """
    try:
        paths[method] = _transport(cfg, pair, method, tv_path, spec, cal_fp, out_dir)
    except NotApplicableError as exc:
        log.info("%s is not applicable to %s -> %s: %s", method, pair["source"]["version"],
                 pair["target"]["version"], exc)
        return NotApplicable(method, str(exc).splitlines()[0])
    return dense_deltas(paths[method][0], pair["target"]["dir"])


def _recorded_outcome(catalog: Catalog, key: str) -> dict | None:
    run = find_finished_run(catalog, OUTCOME_KEY_TAG, key)
    if run is None:
        return None
    with tempfile.TemporaryDirectory(prefix="theseus-outcome-") as tmp:
        outcome = json.loads(read_text_artifact(catalog, run.info.run_id, OUTCOME_FILE, Path(tmp)))
    return {**outcome, "reused": True, "outcome_run": run.info.run_id}


def _evaluate(cfg: WorkflowConfig, pair: dict, ref: VersionRef, config: TaskConfig, tv_path: Path,
              scratch: Path, started: float) -> tuple[Selection, dict[str, tuple[Path, str]], str]:
    """Transport with every method and sweep-and-select on the target loaded once; (selection, paths, cal fp)."""
    evaluator = evaluator_for(config, report=lambda m: log.info("%s: %s", ref, m))
    spec, cal_fp = _calibration(cfg, pair, evaluator)
    model = evaluator.load(pair["target"]["dir"])
    paths: dict[str, tuple[Path, str]] = {}

    def delta_of(method: str):
        return transported_delta(cfg, pair, method, tv_path, spec, cal_fp, scratch / "transported", paths)

    selection = sweep_and_select(evaluator, model, cfg.methods, cfg.alphas, delta_of,
                                 report=lambda m: log.info("%s: %s (%.1fs)", ref, m, time.perf_counter() - started))
    return selection, paths, cal_fp


def _register(cfg: WorkflowConfig, catalog: Catalog, pair: dict, ref: VersionRef, target_ref: VersionRef,
              selection: Selection, paths: dict[str, tuple[Path, str]], cal_fp: str, scratch: Path) -> dict:
    """Register the selected vector and its merged model (gated); nothing when the base was kept."""
    registered: dict = {"task_vector": None, "model": None, "gate": None, "candidate": False, "champion": False}
    if selection.selected == "base":
        return registered
    chosen, metric = selection.chosen, selection.metric
    path, alignment_uri = paths[selection.selected]
    options = {"workflow": WORKFLOW_FORMAT,
               "calibration_sha256": cal_fp if get_method(selection.selected).capabilities.needs_calibration else None}
    vec = register_transported_vector(catalog, ref, target_ref, path, method=selection.selected, alpha=chosen.alpha,
                                      alignment=alignment_uri, options=options)
    model_dir = api.apply_task_vector(pair["target"]["dir"], path, chosen.alpha, scratch / "model")
    evaluation = Evaluation(val_metric=chosen.val[metric], test_metric=chosen.test[metric],
                            base_test_metric=selection.base.test[metric], general_loss=chosen.general_loss,
                            base_general_loss=selection.base.general_loss)
    gate = replace(cfg.gate, higher_is_better=selection.higher_is_better)  # the metric's direction decides
    model = register_transported_model(catalog, f"{ref.name}{cfg.serving_suffix}", model_dir, source_vector=ref,
                                       target_base=target_ref, method=selection.selected, alpha=chosen.alpha,
                                       evaluation=evaluation, gate=gate, options=options)
    gate_tag = model.version.tags.get("theseus.gate")
    return {"task_vector": str(vec.ref), "model": str(model.ref), "gate": gate_tag,
            "candidate": bool(gate_tag and gate_tag.startswith("passed")),
            "champion": bool(model.decision and model.decision.champion)}


def outcome_of(selection: Selection, config: TaskConfig) -> dict:
    """The recorded shape of a selection: ``base``, ``methods`` (each at its α, or not applicable), the choice."""
    sel = selection.chosen
    base = selection.base
    general = sel.general or base.general
    return {
        "metric": selection.metric, "tie_metric": selection.tie_metric, "kind": config.kind,
        "general_metric": None if general is None else general.name,
        "base": base.as_dict(), "methods": {m: r.as_dict() for m, r in selection.methods.items()},
        "selected": selection.selected, "selected_alpha": sel.alpha, "selected_test": sel.test[selection.metric],
        "base_test": base.test[selection.metric],
        "general_loss_change": (None if sel.general_loss is None or base.general_loss is None
                                else sel.general_loss - base.general_loss),
    }


def process_task_vector(cfg: WorkflowConfig, pair: dict, tv_ref: str) -> dict:
    """Port one task vector with every configured method, evaluate, select, register; returns the outcome.

    Raises on any error of this vector (the DAG maps one task per vector and catches per task);
    a method that does not apply to the pair is recorded as ``not_applicable`` instead. The task's
    kind, metric and dataset come from the vector's catalog tags (docs/evaluation.md).
    """
    started = time.perf_counter()
    source_ref, target_ref = _refs(pair)
    ref = parse_ref(tv_ref)
    pair = local_pair(cfg, pair)
    catalog = catalog_of(cfg)
    tags = get_task_vector(catalog, ref)
    if tags.base != source_ref:
        raise InputError(f"task vector {ref} is on base {tags.base}, not on the pair's source {source_ref}")
    target_tags = catalog.get_version(target_ref, "base release").tags or {}
    if target_tags.get(ROLE) != ROLE_BASE or target_tags.get("theseus.sha256") != pair["target"]["sha256"]:
        raise InputError(f"target {target_ref} is not the base release the pair was resolved for")
    try:
        resolve_metric(tags.kind, tags.metric)
    except InputError as exc:
        raise InputError(f"task vector {ref}: {exc}") from None
    key = _sha({"format": WORKFLOW_FORMAT, "source_vector": str(ref), "target_base": str(target_ref),
                "target_sha256": pair["target"]["sha256"], "options": cfg.fingerprint_options()})
    recorded = _recorded_outcome(catalog, key)
    if recorded is not None:
        log.info("%s -> %s was already processed (run %s)", ref, target_ref, recorded["outcome_run"])
        return recorded

    config = task_config(tags)
    scratch = cfg.work_dir / "runs" / key[:16]
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    tv_path = Path(catalog.download(ref, scratch / "source-vector"))
    selection, paths, cal_fp = _evaluate(cfg, pair, ref, config, tv_path, scratch, started)
    registered = _register(cfg, catalog, pair, ref, target_ref, selection, paths, cal_fp, scratch)
    outcome = {
        "vector": str(ref), "task": tags.task, "dataset": tags.dataset,
        "source_base": str(source_ref), "target_base": str(target_ref), **outcome_of(selection, config),
        "registered": registered, "outcome_key": key, "reused": False,
        "seconds": round(time.perf_counter() - started, 3),
    }
    primary = selection.metric
    plots = [vector_plot(outcome, scratch)]
    run_id = log_run(catalog, f"outcome-{ref.name}-{ref.version}-to-{target_ref.name}-{target_ref.version}",
                     {OUTCOME_KEY_TAG: key, "theseus.source_vector": str(ref), "theseus.target_base": str(target_ref),
                      "theseus.selected": selection.selected},
                     {OUTCOME_FILE: json.dumps(outcome, indent=2)},
                     outcome_metrics(outcome), files=[p for p in plots if p is not None],
                     params={**config_params(cfg, source_ref, target_ref), "source_vector": str(ref),
                             "task": tags.task, "metric": primary})
    shutil.rmtree(scratch, ignore_errors=True)
    return {**outcome, "outcome_run": run_id}

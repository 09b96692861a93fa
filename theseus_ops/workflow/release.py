"""Porting one task vector of a source base release to its successor: the mapped GPU step, in named parts.

Protocol per task vector (as ``bench quality``): calibrate on train, pick α per method on val,
report test at that α beside the general-capability LM loss, select the method best on val with
the untouched target base as a candidate too, so nothing worse than the target base is ever
registered. Every step is idempotent: registry writes are keyed (``theseus.idempotency_key``),
alignments are cached by (pair, calibration fingerprint), and a finished vector's outcome is
recorded in an MLflow run that a rerun returns instead of recomputing (``workflow/records.py``).
Pair resolution and listing live in ``workflow/pairs.py`` (re-exported here).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
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
    register_transported_adapter,
    register_transported_model,
    register_transported_vector,
)
from theseus_ops.catalog.schema import BaseReleaseTags, TaskVectorTags, TransportedModelTags
from theseus_ops.config import CalibrationSpec
from theseus_ops.errors import InputError, NotApplicableError
from theseus_ops.evaluation import NotApplicable, Selection, TaskConfig, evaluator_for, sweep_and_select
from theseus_ops.evaluation.calibration import build_calibration, shared_vocabulary
from theseus_ops.evaluation.config import resolve_metric
from theseus_ops.evaluation.protocol import Evaluator
from theseus_ops.io.atomic import replacing
from theseus_ops.io.calibration import fingerprint
from theseus_ops.service_errors import CatalogError
from theseus_ops.transport.methods import get_method
from theseus_ops.workflow.config import WorkflowConfig
from theseus_ops.workflow.contracts import Outcome, Pair, Registered
from theseus_ops.workflow.evaluation import dataset_dir, task_config  # noqa: F401 - dataset_dir: re-exported
from theseus_ops.workflow.pairs import list_task_vectors, local_pair, parse_ref, resolve_pair  # noqa: F401
from theseus_ops.workflow.porting import PortInputs, Transported
from theseus_ops.workflow.reconcile import catalog_of
from theseus_ops.workflow.records import (  # noqa: F401 - re-exported: their old home
    OUTCOME_FILE,
    OUTCOME_KEY_TAG,
    config_params,
    outcome_metrics,
    record_outcome,
    recorded_outcome,
    vector_plot,
)

log = logging.getLogger("theseus_ops")
WORKFLOW_FORMAT = "theseus-workflow/1"


def _sha(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# -- process_task_vector ---------------------------------------------------------------------------
def _calibration(cfg: WorkflowConfig, pair: Pair, evaluator: Evaluator) -> tuple[CalibrationSpec, str]:
    """The recipe's calibration set (``cfg.calibration``) in each base's own tokenizer or processor, saved
    once per fingerprint, with the recipe and the rows each source gave in the file's metadata.

    A task whose evaluator cannot encode calibration inputs gets none: the methods that align on
    data are then not applicable to it.
    """
    recipe = cfg.calibration
    dirs = {side: pair.side(side).dir for side in ("source", "target")}
    vocab = shared_vocabulary(*dirs.values()) if recipe.probe_rows else None
    sides = {}
    for side, model_dir in dirs.items():
        built = build_calibration(evaluator, model_dir, recipe, vocab=vocab, heldout=_heldout_of(evaluator))
        if built is None:
            return CalibrationSpec(), ""
        sides[side] = built
    log.info("calibration: %s (%s)", ", ".join(f"{k} {v}" for k, v in sides["source"].used.items()),
             json.dumps(recipe.as_dict(), sort_keys=True))
    prints = {side: fingerprint(b.tensors) for side, b in sides.items()}
    fp = _sha(prints)
    folder = cfg.work_dir / "calibration"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for side, built in sides.items():
        path = folder / f"{prints[side][:24]}.safetensors"
        if not path.is_file():
            with replacing(path, ".safetensors") as tmp:  # save_file writes 0600; replacing gives the umask's
                save_file(built.tensors, str(tmp), metadata=built.metadata(recipe))
        paths[side] = str(path)
    if prints["source"] == prints["target"]:
        return CalibrationSpec(both=paths["source"]), fp
    return CalibrationSpec(source=paths["source"], target=paths["target"]), fp


def _heldout_of(evaluator: Evaluator) -> Path | None:
    """The task's held-out text (text rows of the recipe), when its evaluator has a task config."""
    config = getattr(evaluator, "config", None)
    return getattr(config, "heldout", None)


def transported_delta(inputs: PortInputs, method: str, done: dict[str, Transported]):
    """One method's transported vector as dense deltas on the target, or :class:`NotApplicable`.

    Only a :class:`NotApplicableError` (the method's declared requirements rule it out: identical
    shapes, calibration, labels, LoRA support) makes a method "not applicable". Any other error (a
    corrupt vector, a bad alignment) propagates and fails the task, so it can never drop every method
    and quietly keep the base. ``done`` records each method that ran, its result kept in memory.
    """
    try:
        done[method] = inputs.transport(method)
    except NotApplicableError as exc:
        log.info("%s is not applicable to %s -> %s: %s", method, inputs.pair.source.version,
                 inputs.pair.target.version, exc)
        return NotApplicable(method, str(exc).splitlines()[0])
    return inputs.dense(done[method])


def _evaluate(cfg: WorkflowConfig, pair: Pair, ref: VersionRef, config: TaskConfig, tv_path: Path,
              started: float) -> tuple[Selection, PortInputs, dict[str, Transported]]:
    """Transport with every method and sweep-and-select on the target loaded once; the selection, the shared
    inputs and each method's result (in memory)."""
    evaluator = evaluator_for(config, report=lambda m: log.info("%s: %s", ref, m))
    spec, cal_fp = _calibration(cfg, pair, evaluator)
    inputs = PortInputs(cfg, pair, tv_path, spec, cal_fp)
    model = evaluator.load(pair.target.dir)
    done: dict[str, Transported] = {}
    selection = sweep_and_select(evaluator, model, cfg.methods, cfg.alphas,
                                 lambda method: transported_delta(inputs, method, done),
                                 report=lambda m: log.info("%s: %s (%.1fs)", ref, m, time.perf_counter() - started))
    return selection, inputs, done


def _register(cfg: WorkflowConfig, catalog: Catalog, pair: Pair, ref: VersionRef, selection: Selection,
              inputs: PortInputs, done: dict[str, Transported], scratch: Path) -> Registered:
    """Register the selected vector and its serving model (gated); nothing when the base was kept.

    The selected vector is written here, once, from memory. A full delta's serving model is the
    target merged with it, built without reading the vector back; a LoRA's is the written adapter,
    registered as a PEFT adapter on the target base (docs/catalog.md).
    """
    if selection.selected == "base":
        return Registered()
    target_ref = pair.target_ref
    chosen, metric = selection.chosen, selection.metric
    transported = done[selection.selected]
    path = scratch / "transported" / (selection.selected if transported.vector.vector_format == "lora"
                                      else f"{selection.selected}.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    api.publish_transport(transported.vector, transported.report, inputs.model_pair, selection.selected, path)
    calibrated = get_method(selection.selected).capabilities.needs_calibration
    options = {"workflow": WORKFLOW_FORMAT, "calibration_sha256": inputs.cal_fp if calibrated else None}
    if calibrated and inputs.cal_fp:  # the recipe joins the key (and a tag) only where it shaped the result
        options["calibration"] = cfg.calibration.as_dict()
    vec = register_transported_vector(catalog, ref, target_ref, path, method=selection.selected, alpha=chosen.alpha,
                                      alignment=transported.alignment_uri, options=options)
    evaluation = Evaluation(val_metric=chosen.val[metric], test_metric=chosen.test[metric],
                            base_test_metric=selection.base.test[metric], general_loss=chosen.general_loss,
                            base_general_loss=selection.base.general_loss)
    gate = replace(cfg.gate, higher_is_better=selection.higher_is_better)  # the metric's direction decides
    common = dict(source_vector=ref, target_base=target_ref, method=selection.selected, alpha=chosen.alpha,
                  evaluation=evaluation, gate=gate, options=options)
    name = f"{ref.name}{cfg.serving_suffix}"
    if transported.vector.vector_format == "lora":  # a PEFT adapter on the target base, never a merged copy
        model = register_transported_adapter(catalog, name, path, base_dir=pair.target.dir, **common)
    else:
        model_dir = api.merge_into(inputs.model_pair.target, transported.vector, chosen.alpha, scratch / "model",
                                   label=f"{selection.selected} transport of {ref}")
        model = register_transported_model(catalog, name, model_dir, **common)
    gate_tag = TransportedModelTags.read(model.version.tags, "gate")
    return Registered(task_vector=str(vec.ref), model=str(model.ref), gate=gate_tag,
                      candidate=bool(gate_tag and gate_tag.startswith("passed")),
                      champion=bool(model.decision and model.decision.champion))


def outcome_of(selection: Selection, config: TaskConfig) -> dict:
    """A selection as :class:`Outcome` fields: ``base``, ``methods`` (each at its α, or not applicable), the choice."""
    sel = selection.chosen
    base = selection.base
    general = sel.general or base.general
    return {
        "metric": selection.metric, "tie_metric": selection.tie_metric,
        "task_kind": config.task_kind,
        "general_metric": None if general is None else general.name,
        "base": base.as_dict(), "methods": {m: r.as_dict() for m, r in selection.methods.items()},
        "selected": selection.selected, "selected_alpha": sel.alpha, "selected_test": sel.test[selection.metric],
        "base_test": base.test[selection.metric],
        "general_loss_change": (None if sel.general_loss is None or base.general_loss is None
                                else sel.general_loss - base.general_loss),
    }


# -- the steps of process_task_vector, in order -----------------------------------------------------
def _vector_on_source(catalog: Catalog, pair: Pair, ref: VersionRef) -> TaskVectorTags:
    """The vector's catalog tags, refusing a vector that is not on the pair's source base."""
    tags = get_task_vector(catalog, ref)
    if tags.base != pair.source_ref:
        raise InputError(f"task vector {ref} is on base {tags.base}, not on the pair's source {pair.source_ref}")
    return tags


def _check_target(catalog: Catalog, pair: Pair) -> None:
    """Refuse a target whose registry entry is not the base (and weights) the pair was resolved for."""
    target_ref = pair.target_ref
    mv = catalog.get_version(target_ref, "base release")
    try:
        tags = BaseReleaseTags.from_tags(mv.tags or {}, f"base release {target_ref}")
    except CatalogError:
        tags = None
    if tags is None or tags.sha256 != pair.target.sha256:
        raise InputError(f"target {target_ref} is not the base release the pair was resolved for")


def _check_metric(ref: VersionRef, tags: TaskVectorTags) -> None:
    """Refuse an unknown metric for the task's kind before any download or GPU work."""
    try:
        resolve_metric(tags.resolved_task_kind, tags.metric)
    except InputError as exc:
        raise InputError(f"task vector {ref}: {exc}") from None


def outcome_key(cfg: WorkflowConfig, pair: Pair, ref: VersionRef) -> str:
    """What makes two computations of this vector's outcome the same one: a rerun with an equal key reuses it."""
    return _sha({"format": WORKFLOW_FORMAT, "source_vector": str(ref), "target_base": str(pair.target_ref),
                 "target_sha256": pair.target.sha256, "options": cfg.fingerprint_options()})


def _fresh_scratch(cfg: WorkflowConfig, key: str) -> Path:
    """An empty per-outcome work folder (a previous, interrupted attempt's leftovers removed)."""
    scratch = cfg.work_dir / "runs" / key[:16]
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    return scratch


def _outcome(pair: Pair, ref: VersionRef, tags: TaskVectorTags, selection: Selection, config: TaskConfig,
             registered: Registered, key: str, started: float) -> Outcome:
    """The typed outcome of one computed (not reused) vector."""
    return Outcome(vector=str(ref), task=tags.task, dataset=tags.dataset, source_base=str(pair.source_ref),
                   target_base=str(pair.target_ref), **outcome_of(selection, config), registered=registered,
                   outcome_key=key, reused=False, seconds=round(time.perf_counter() - started, 3))


def process_task_vector(cfg: WorkflowConfig, pair: Pair, tv_ref: str) -> Outcome:
    """Port one task vector with every configured method, evaluate, select, register; returns the outcome.

    Raises on any error of this vector (the DAG maps one task per vector and catches per task);
    a method that does not apply to the pair is recorded as ``not_applicable`` instead. The task's
    kind, metric and dataset come from the vector's catalog tags (docs/evaluation.md).
    """
    started = time.perf_counter()
    ref = parse_ref(tv_ref)
    pair = local_pair(cfg, pair)
    catalog = catalog_of(cfg)
    tags = _vector_on_source(catalog, pair, ref)
    _check_target(catalog, pair)
    _check_metric(ref, tags)
    key = outcome_key(cfg, pair, ref)
    recorded = recorded_outcome(catalog, key)
    if recorded is not None:
        log.info("%s -> %s was already processed (run %s)", ref, pair.target_ref, recorded.outcome_run)
        return recorded

    config = task_config(tags)
    scratch = _fresh_scratch(cfg, key)
    tv_path = Path(catalog.download(ref, scratch / "source-vector"))
    selection, inputs, done = _evaluate(cfg, pair, ref, config, tv_path, started)
    registered = _register(cfg, catalog, pair, ref, selection, inputs, done, scratch)
    outcome = _outcome(pair, ref, tags, selection, config, registered, key, started)
    run_id = record_outcome(cfg, catalog, outcome, scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    return replace(outcome, outcome_run=run_id)

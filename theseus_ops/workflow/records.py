"""A ported vector's MLflow record: the run that makes reprocessing it a lookup instead of a GPU job.

The run is keyed by ``theseus.outcome_key`` (vector, target base and its hash, the options), holds
``outcome.json`` (the :class:`Outcome` as JSON), the α-sweep plot, params for run comparison and
the numbers as metrics.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from theseus_ops.catalog import Catalog, VersionRef
from theseus_ops.catalog.schema import OUTCOME_KEY_TAG, SELECTED_TAG, SOURCE_VECTOR_TAG, TARGET_BASE_TAG
from theseus_ops.errors import InputError
from theseus_ops.workflow.config import WorkflowConfig
from theseus_ops.workflow.contracts import Outcome
from theseus_ops.workflow.runs import find_finished_run, log_run, read_text_artifact

log = logging.getLogger("theseus_ops")
OUTCOME_FILE = "outcome.json"


def config_params(cfg: WorkflowConfig, source: VersionRef, target: VersionRef) -> dict[str, object]:
    """The configuration an outcome or summary was computed with, as MLflow params (run comparison)."""
    gate = cfg.gate
    return {"methods": ",".join(cfg.methods), "alphas": ",".join(f"{a:g}" for a in cfg.alphas),
            "gate.margin": repr(gate.margin), "gate.max_general_loss_increase": repr(gate.max_general_loss_increase),
            "gate.move_champion": str(gate.move_champion), "gate.higher_is_better": str(gate.higher_is_better),
            "calibration_rows": str(cfg.calibration_rows), "source_base": str(source), "target_base": str(target),
            "source_version": source.version, "target_version": target.version,
            "fill": cfg.fill, **{f"calibration.{k}": str(v) for k, v in cfg.calibration.as_dict().items()}}


def outcome_metrics(outcome: Outcome) -> dict[str, float]:
    """An outcome's numbers as MLflow metrics: the selection, the base, and each method at its α."""
    m = outcome.metric
    out = {"selected_test": outcome.selected_test, "base_test": outcome.base_test,
           "selected_alpha": outcome.selected_alpha, f"base_val_{m}": outcome.base["val"][m],
           f"base_test_{m}": outcome.base["test"][m]}
    if outcome.general_loss_change is not None:
        out["general_loss_change"] = outcome.general_loss_change
    for method, r in outcome.methods.items():
        if "val" in r:
            out.update({f"{method}.alpha": r["alpha"], f"{method}.val_{m}": r["val"][m],
                        f"{method}.test_{m}": r["test"][m]})
    return {k: float(v) for k, v in out.items() if v is not None}


def vector_plot(outcome: Outcome, folder: Path) -> Path | None:
    """This vector's α sweeps on val (selection starred) as ``alpha-sweep.png``; None when nothing was swept."""
    from theseus_ops.plots import outcome_panel, sweep_figure

    panel = outcome_panel(outcome.to_json())
    if not any(panel.sweeps.values()):
        return None
    try:
        return sweep_figure([panel], f"{outcome.vector} -> {outcome.target_base}: α sweeps on val",
                            outcome.metric, folder / "alpha-sweep.png")
    except InputError as exc:  # no matplotlib: the record is still written, without its plot
        log.warning("no α-sweep plot for %s: %s", outcome.vector, exc)
        return None


def recorded_outcome(catalog: Catalog, key: str) -> Outcome | None:
    """The outcome a finished run recorded under ``key``, marked reused; None when there is none."""
    run = find_finished_run(catalog, OUTCOME_KEY_TAG, key)
    if run is None:
        return None
    with tempfile.TemporaryDirectory(prefix="theseus-outcome-") as tmp:
        data = json.loads(read_text_artifact(catalog, run.info.run_id, OUTCOME_FILE, Path(tmp)))
    return Outcome.from_json({**data, "reused": True, "outcome_run": run.info.run_id})


def record_outcome(cfg: WorkflowConfig, catalog: Catalog, outcome: Outcome, scratch: Path) -> str:
    """Log ``outcome`` as its keyed run (plot, params, metrics); the run id."""
    ref, target = VersionRef.parse(outcome.vector), VersionRef.parse(outcome.target_base)
    plots = [vector_plot(outcome, scratch)]
    return log_run(catalog, f"outcome-{ref.name}-{ref.version}-to-{target.name}-{target.version}",
                   {OUTCOME_KEY_TAG: outcome.outcome_key, SOURCE_VECTOR_TAG: outcome.vector,
                    TARGET_BASE_TAG: outcome.target_base, SELECTED_TAG: outcome.selected},
                   {OUTCOME_FILE: json.dumps(outcome.to_json(), indent=2)},
                   outcome_metrics(outcome), files=[p for p in plots if p is not None],
                   params={**config_params(cfg, VersionRef.parse(outcome.source_base), target),
                           "source_vector": outcome.vector, "task": outcome.task, "metric": outcome.metric})

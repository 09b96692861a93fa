"""theseus_transport_release: port every task vector of a base release to its successor.

Scheduled on the ``theseus_base_release`` Asset (one run may carry several queued releases), and
triggerable by hand with Params. Steps: which releases, resolve each pair, list its task vectors,
one mapped GPU task per vector (align or reuse, transport with every method, α search on val,
select on val, register), then one summary run per release and a final check that fails the run
if any vector failed. Tasks pass registry references and URIs through XCom, never tensors. A rerun
of the same release reuses every recorded outcome and registers nothing new.
"""

from __future__ import annotations

import logging
import os

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from theseus_airflow.dag_support import (
    DEFAULT_ARGS,
    GPU_POOL,
    GPU_QUEUE,
    RELEASE_ASSET,
    airflow_error,
    step_errors,
    workflow_config,
)
from theseus_airflow.kubernetes import gpu_executor_config

from theseus_ops.workflow import (
    DEFAULT_ALPHAS,
    collect_outcomes,
    families,
    list_task_vectors,
    mark_processed,
    methods_param,
    pending_releases,
    process_task_vector,
    record_failure,
    resolve_pair,
    summarize_release,
)
from theseus_ops.workflow.summary import is_failure

log = logging.getLogger("theseus_ops")
VERSION = {"type": ["null", "string"], "pattern": "^[0-9]+$"}

PARAMS = {
    "family": Param(None, type=["null", "string"], minLength=1, title="Family",
                    description="Registered model holding the base releases; empty: the triggering events, "
                                "else every pending release."),
    "target_version": Param(None, **VERSION, title="Target version",
                            description="Base version to port to (reprocessed even if done); empty: pending ones."),
    "source_version": Param(None, **VERSION, title="Source version",
                            description="Base version to port from; empty: the one the target supersedes."),
    "tasks": Param([], type="array", items={"type": "string"}, title="Task filter",
                   description="Only task vectors of these tasks; empty: all."),
    "methods": Param(**methods_param()),  # enum and help from the method registry
    "alphas": Param(None, type=["null", "array"], items={"type": "number"}, minItems=1, uniqueItems=True,
                    title="α grid",
                    description=f"α values swept on val; empty: THESEUS_ALPHAS or {list(DEFAULT_ALPHAS)}."),
    "gate": Param({}, type="object", title="Gate", additionalProperties=False,
                  properties={"margin": {"type": "number"}, "max_general_loss_increase": {"type": "number"},
                              "move_champion": {"type": "boolean"}},
                  description="Overrides of THESEUS_GATE_* for this run."),
}


def _release_key(release: dict) -> tuple[str, str]:
    return release["family"], str(release["version"])


@dag(
    dag_id="theseus_transport_release",
    schedule=[RELEASE_ASSET],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=int(os.environ.get("THESEUS_MAX_ACTIVE_RELEASE_RUNS", "1")),
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    tags=["theseus-ops"],
    description="Port every task vector of a new base release: align, transport, α search on val, register",
    is_paused_upon_creation=False,  # the watcher and its trigger are the product: on from the start
    doc_md=__doc__,
)
def theseus_transport_release():
    @task
    def releases(*, params=None, triggering_asset_events=None) -> list[dict]:
        """The releases of this run: named by Params, else carried by Asset events, else all pending."""
        cfg = workflow_config(params)
        family = params.get("family")
        if family and params.get("target_version"):
            return [{"family": family, "version": str(params["target_version"]),
                     "supersedes": params.get("source_version")}]
        if params.get("source_version"):
            raise AirflowFailException("source_version needs target_version (and family)")
        if family:
            with step_errors():
                return pending_releases(cfg, family)
        found: dict[tuple[str, str], dict] = {}
        for events in (triggering_asset_events or {}).values():
            for event in events:
                extra = dict(event.extra or {})
                if extra.get("family") and extra.get("version"):
                    found.setdefault(_release_key(extra), extra)
        if found:
            return list(found.values())
        with step_errors():
            return [r for name in families(cfg) for r in pending_releases(cfg, name)]

    @task
    def resolve(todo: list[dict], *, params=None) -> list[dict]:
        """Each release's (source, target) bases, verified and downloaded to the work dir."""
        cfg = workflow_config(params)
        with step_errors():
            return [resolve_pair(cfg, r["family"], r["version"], r.get("supersedes")) for r in todo]

    @task
    def plan(pairs: list[dict], *, params=None) -> list[dict]:
        """One job per (release, task vector): the units the GPU tasks are mapped over."""
        cfg = workflow_config(params)
        jobs = []
        for pair in pairs:
            with step_errors():
                vectors = list_task_vectors(cfg, pair, params.get("tasks") or None)
            for vector in vectors:
                jobs.append({"pair": pair, "vector": vector,
                             "label": f"{vector} -> {pair['family']}/{pair['target']['version']}"})
        log.info("%d task vector(s) to port across %d release(s)", len(jobs), len(pairs))
        return jobs

    @task(pool=GPU_POOL, queue=GPU_QUEUE, map_index_template="{{ vector_label }}", multiple_outputs=False,
          executor_config=gpu_executor_config())
    def port(job: dict, *, params=None) -> dict:
        """Align (or reuse), transport with every method, α search on val, select on val, register."""
        get_current_context()["vector_label"] = job["label"]
        cfg = workflow_config(params)
        try:
            outcome = process_task_vector(cfg, job["pair"], job["vector"])
        except Exception as exc:
            try:  # so the summary can say why, even though this task's XCom will be empty
                record_failure(cfg, job["pair"], job["vector"], exc)
            except Exception:
                log.warning("could not record the failure of %s", job["vector"], exc_info=True)
            raise airflow_error(exc) from exc
        return outcome

    @task(trigger_rule="all_done")
    def summarize(pairs: list[dict], jobs: list[dict], outcomes, *, params=None) -> list[dict]:
        """One MLflow run per release (table + α-sweep plot); failed vectors listed with their error."""
        cfg = workflow_config(params)
        done = [o for o in (outcomes or []) if o]
        summaries = []
        for pair in pairs:
            target = (pair["family"], pair["target"]["version"])
            vectors = [j["vector"] for j in jobs if (j["pair"]["family"], j["pair"]["target"]["version"]) == target]
            with step_errors():
                collected = collect_outcomes(cfg, pair, vectors, done)
                run_id = summarize_release(cfg, pair, collected)
                mark_processed(cfg, target[0], target[1], run_id)
            failed = [{"vector": o["vector"], "error": o["error"]} for o in collected if is_failure(o)]
            summaries.append({"family": target[0], "version": target[1], "summary_run": run_id,
                              "vectors": len(vectors), "failed": failed,
                              "candidates": [o["registered"]["model"] for o in collected
                                             if not is_failure(o) and o["registered"]["candidate"]]})
            log.info("%s/%s: %d vector(s), %d failed, summary run %s", *target, len(vectors), len(failed), run_id)
        return summaries

    @task
    def check(summaries: list[dict]) -> None:
        """Fail the run (after everything else was recorded) when any task vector failed."""
        failed = [f"{f['vector']}: {f['error']}" for s in summaries for f in s["failed"]]
        if failed:
            raise AirflowFailException(f"{len(failed)} task vector(s) failed: " + "; ".join(failed))

    todo = releases()
    pairs = resolve(todo)
    jobs = plan(pairs)
    outcomes = port.expand(job=jobs)
    check(summarize(pairs, jobs, outcomes))


theseus_transport_release()

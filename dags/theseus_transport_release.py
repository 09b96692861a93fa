"""theseus_transport_release: port every task vector of a base release to its successor.

Scheduled on the ``theseus_base_release`` Asset (one run may carry several queued releases), and
triggerable by hand with Params. Steps: which releases, resolve each pair, list its task vectors,
one mapped GPU task per vector (align or reuse, transport with every method, α search on val,
select on val, register), then one summary run per release and a final check that fails the run
if any vector failed. Tasks pass registry references and URIs through XCom, never tensors. A rerun
of the same release reuses every recorded outcome and registers nothing new.
"""

from __future__ import annotations

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

from theseus_ops.workflow import BASE_LINE_KEY, DEFAULT_ALPHAS, methods_param
from theseus_ops.workflow.contracts import Job, Outcome, Pair, Release, ReleaseSummary
from theseus_ops.workflow.steps import (
    failure_message,
    plan_jobs,
    port_job,
    resolve_releases,
    select_releases,
    summarize_releases,
)

VERSION = {"type": ["null", "string"], "pattern": "^[0-9]+$"}

PARAMS = {
    BASE_LINE_KEY: Param(None, type=["null", "string"], minLength=1, title="Family (base line)",
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
        announced = [dict(e.extra or {}) for events in (triggering_asset_events or {}).values() for e in events]
        with step_errors():
            todo = select_releases(cfg, params.get(BASE_LINE_KEY), params.get("target_version"),
                                   params.get("source_version"), announced)
        return [r.to_json() for r in todo]

    @task
    def resolve(todo: list[dict], *, params=None) -> list[dict]:
        """Each release's (source, target) bases, verified and downloaded to the work dir."""
        cfg = workflow_config(params)
        with step_errors():
            return [p.to_json() for p in resolve_releases(cfg, [Release.from_json(r) for r in todo])]

    @task
    def plan(pairs: list[dict], *, params=None) -> list[dict]:
        """One job per (release, task vector): the units the GPU tasks are mapped over."""
        cfg = workflow_config(params)
        with step_errors():
            return [j.to_json() for j in plan_jobs(cfg, [Pair.from_json(p) for p in pairs], params.get("tasks"))]

    @task(pool=GPU_POOL, queue=GPU_QUEUE, map_index_template="{{ vector_label }}", multiple_outputs=False,
          executor_config=gpu_executor_config())
    def port(job: dict, *, params=None) -> dict:
        """Align (or reuse), transport with every method, α search on val, select on val, register."""
        get_current_context()["vector_label"] = job["label"]
        cfg = workflow_config(params)
        try:
            return port_job(cfg, Job.from_json(job)).to_json()
        except Exception as exc:  # recorded by port_job, so the summary can say why
            raise airflow_error(exc) from exc

    @task(trigger_rule="all_done")
    def summarize(pairs: list[dict], jobs: list[dict], outcomes, *, params=None) -> list[dict]:
        """One MLflow run per release (table + α-sweep plot); failed vectors listed with their error."""
        cfg = workflow_config(params)
        with step_errors():
            summaries = summarize_releases(cfg, [Pair.from_json(p) for p in pairs], [Job.from_json(j) for j in jobs],
                                           [Outcome.from_json(o) for o in (outcomes or []) if o])
        return [s.to_json() for s in summaries]

    @task
    def check(summaries: list[dict]) -> None:
        """Fail the run (after everything else was recorded) when any task vector failed."""
        message = failure_message([ReleaseSummary.from_json(s) for s in summaries])
        if message:
            raise AirflowFailException(message)

    todo = releases()
    pairs = resolve(todo)
    jobs = plan(pairs)
    outcomes = port.expand(job=jobs)
    check(summarize(pairs, jobs, outcomes))


theseus_transport_release()

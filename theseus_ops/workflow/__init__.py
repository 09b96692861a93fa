"""The Airflow-free core of the release workflow: one function per DAG step (``workflow/steps.py``).

Every step takes a :class:`WorkflowConfig` plus the typed contracts of ``workflow/contracts.py``
(:class:`Release`, :class:`Pair`, :class:`Job`, :class:`Outcome`, :class:`ReleaseSummary`) and
returns them, never tensors. An orchestrator passes them between tasks as JSON (``to_json()`` /
``from_json()``, XCom) and can retry any step on its own. Nothing here imports Airflow.

    cfg = WorkflowConfig.from_env()
    register_landed_releases(cfg)
    pairs = resolve_releases(cfg, select_releases(cfg, base_line="llama-tiny"))
    jobs = plan_jobs(cfg, pairs)
    outcomes = [port_job(cfg, job) for job in jobs]  # one mapped task each; a failure is recorded, then raised
    summaries = summarize_releases(cfg, pairs, jobs, outcomes)  # summary runs; releases marked processed
"""

from theseus_ops.storage import BASE_LINE_KEY
from theseus_ops.workflow.config import DEFAULT_ALPHAS, DEFAULT_METHODS, WorkflowConfig, default_methods, methods_param
from theseus_ops.workflow.contracts import Failure, Job, Outcome, Pair, Registered, Release, ReleaseSummary
from theseus_ops.workflow.reconcile import (
    ANNOUNCED_TAG,
    PROCESSED_TAG,
    base_lines,
    mark_announced,
    mark_processed,
    pending_releases,
    register_landed_releases,
    release_of_version,
    releases_to_announce,
)
from theseus_ops.workflow.release import (
    OUTCOME_KEY_TAG,
    list_task_vectors,
    local_pair,
    process_task_vector,
    resolve_pair,
)
from theseus_ops.workflow.steps import (
    failure_message,
    plan_jobs,
    port_job,
    resolve_releases,
    select_releases,
    summarize_releases,
)
from theseus_ops.workflow.summary import (
    FAILURE_TAG,
    SUMMARY_TAG,
    collect_outcomes,
    record_failure,
    release_overview,
    summarize_release,
)

__all__ = [
    "ANNOUNCED_TAG",
    "BASE_LINE_KEY",
    "DEFAULT_ALPHAS",
    "DEFAULT_METHODS",
    "FAILURE_TAG",
    "OUTCOME_KEY_TAG",
    "PROCESSED_TAG",
    "SUMMARY_TAG",
    "Failure",
    "Job",
    "Outcome",
    "Pair",
    "Registered",
    "Release",
    "ReleaseSummary",
    "WorkflowConfig",
    "base_lines",
    "collect_outcomes",
    "default_methods",
    "failure_message",
    "list_task_vectors",
    "local_pair",
    "mark_announced",
    "mark_processed",
    "methods_param",
    "pending_releases",
    "plan_jobs",
    "port_job",
    "process_task_vector",
    "record_failure",
    "register_landed_releases",
    "release_of_version",
    "release_overview",
    "releases_to_announce",
    "resolve_pair",
    "resolve_releases",
    "select_releases",
    "summarize_release",
    "summarize_releases",
]

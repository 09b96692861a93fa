"""The Airflow-free core of the release workflow: one function per DAG step.

Every step takes a :class:`WorkflowConfig` plus strings/dicts and returns JSON-serialisable values
(registry refs, URIs, outcome dicts), never tensors, so an orchestrator can pass results between
tasks through XCom and retry any step on its own. Nothing here imports Airflow.

    cfg = WorkflowConfig.from_env()
    register_landed_releases(cfg)
    for release in pending_releases(cfg, "llama-tiny"):
        pair = resolve_pair(cfg, release["family"], release["version"], release["supersedes"])
        vectors = list_task_vectors(cfg, pair)
        outcomes = [process_task_vector(cfg, pair, ref) for ref in vectors]  # one mapped task each
        run_id = summarize_release(cfg, pair, collect_outcomes(cfg, pair, vectors, outcomes))
        mark_processed(cfg, release["family"], release["version"], run_id)
"""

from theseus_ops.workflow.config import DEFAULT_ALPHAS, DEFAULT_METHODS, WorkflowConfig, default_methods, methods_param
from theseus_ops.workflow.reconcile import (
    ANNOUNCED_TAG,
    PROCESSED_TAG,
    families,
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
    "DEFAULT_ALPHAS",
    "DEFAULT_METHODS",
    "FAILURE_TAG",
    "OUTCOME_KEY_TAG",
    "PROCESSED_TAG",
    "SUMMARY_TAG",
    "WorkflowConfig",
    "collect_outcomes",
    "default_methods",
    "families",
    "list_task_vectors",
    "local_pair",
    "mark_announced",
    "mark_processed",
    "methods_param",
    "pending_releases",
    "process_task_vector",
    "record_failure",
    "register_landed_releases",
    "release_of_version",
    "release_overview",
    "releases_to_announce",
    "resolve_pair",
    "summarize_release",
]

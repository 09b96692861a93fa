"""The Airflow-free core of the release workflow: one function per DAG step.

Every step takes a :class:`WorkflowConfig` plus strings/dicts and returns JSON-serialisable values
(registry refs, URIs, outcome dicts), never tensors, so an orchestrator can pass results between
tasks through XCom and retry any step on its own. Nothing here imports Airflow.

    cfg = WorkflowConfig.from_env()
    register_landed_releases(cfg)
    for release in pending_releases(cfg, "llama-tiny"):
        pair = resolve_pair(cfg, release["family"], release["version"], release["supersedes"])
        outcomes = [process_task_vector(cfg, pair, ref) for ref in list_task_vectors(cfg, pair)]
        run_id = summarize_release(cfg, pair, outcomes)
        mark_processed(cfg, release["family"], release["version"], run_id)
"""

from theseus_ops.workflow.config import DEFAULT_ALPHAS, DEFAULT_METHODS, WorkflowConfig
from theseus_ops.workflow.reconcile import PROCESSED_TAG, mark_processed, pending_releases, register_landed_releases
from theseus_ops.workflow.release import (
    OUTCOME_KEY_TAG,
    SUMMARY_TAG,
    list_task_vectors,
    process_task_vector,
    resolve_pair,
    summarize_release,
)

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_METHODS",
    "OUTCOME_KEY_TAG",
    "PROCESSED_TAG",
    "SUMMARY_TAG",
    "WorkflowConfig",
    "list_task_vectors",
    "mark_processed",
    "pending_releases",
    "process_task_vector",
    "register_landed_releases",
    "resolve_pair",
    "summarize_release",
]

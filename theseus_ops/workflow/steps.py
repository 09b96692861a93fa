"""The transport DAG's steps, one function per task, so the DAG is wiring and tests drive the real thing.

    releases = select_releases(cfg, base_line=..., announced=[event.extra, ...])
    pairs = resolve_releases(cfg, releases)
    jobs = plan_jobs(cfg, pairs, tasks)
    outcomes = [port_job(cfg, job) for job in jobs]        # one mapped GPU task each; failures raise
    summaries = summarize_releases(cfg, pairs, jobs, outcomes)
    failure_message(summaries)                              # None, or why the run fails

Each takes and returns the typed contracts of ``workflow/contracts.py``; the DAG converts them to
JSON for XCom and back, and nothing here knows Airflow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from theseus_ops.errors import InputError
from theseus_ops.storage import BASE_LINE_KEY
from theseus_ops.workflow.config import WorkflowConfig
from theseus_ops.workflow.contracts import Job, Outcome, Pair, Release, ReleaseSummary
from theseus_ops.workflow.pairs import list_task_vectors, resolve_pair
from theseus_ops.workflow.reconcile import base_lines, mark_processed, pending_releases
from theseus_ops.workflow.release import process_task_vector
from theseus_ops.workflow.summary import collect_outcomes, record_failure, summarize_release

log = logging.getLogger("theseus_ops")


def select_releases(cfg: WorkflowConfig, base_line: str | None = None, target_version: str | None = None,
                    source_version: str | None = None,
                    announced: Iterable[Mapping[str, Any]] = ()) -> list[Release]:
    """The releases of one run: named by hand, else carried by announcements, else every pending one.

    ``base_line`` and ``target_version`` name one release (reprocessed even if done; ``source_version``
    overrides what it supersedes); ``base_line`` alone means its pending releases. Otherwise the
    ``announced`` events' extras (a :class:`Release` as JSON: ``family``, ``version``, ...) decide, one
    release per key however often it was announced; with none, every base line's pending releases. A
    ``source_version`` without a target is an input error: there is no release to read it against.
    """
    if base_line and target_version:
        return [Release(base_line, str(target_version), supersedes=source_version)]
    if source_version:
        raise InputError(f"source_version needs target_version (and {BASE_LINE_KEY})")  # the Params' names
    if base_line:
        return [Release.from_json(r) for r in pending_releases(cfg, base_line)]
    found: dict[tuple[str, str], Release] = {}
    for extra in announced:
        if extra.get(BASE_LINE_KEY) and extra.get("version"):
            release = Release.from_json(extra)
            found.setdefault(release.key, release)
    if found:
        return list(found.values())
    return [Release.from_json(r) for name in base_lines(cfg) for r in pending_releases(cfg, name)]


def resolve_releases(cfg: WorkflowConfig, releases: Iterable[Release]) -> list[Pair]:
    """Each release's (source, target) bases, verified and downloaded to the work dir."""
    return [resolve_pair(cfg, r.base_line, r.version, r.supersedes) for r in releases]


def plan_jobs(cfg: WorkflowConfig, pairs: Iterable[Pair], tasks: list[str] | None = None) -> list[Job]:
    """One job per (release, task vector), in release then registration order: the units of GPU work."""
    pairs = list(pairs)
    jobs = [Job(pair, vector) for pair in pairs for vector in list_task_vectors(cfg, pair, tasks or None)]
    log.info("%d task vector(s) to port across %d release(s)", len(jobs), len(pairs))
    return jobs


def port_job(cfg: WorkflowConfig, job: Job) -> Outcome:
    """Port one vector; on any error record why (so the summary can say it) and raise it again.

    The record is best effort: when even that fails (MLflow down) the original error is what
    propagates, and the summary reports the vector as ended without an outcome.
    """
    try:
        return process_task_vector(cfg, job.pair, job.vector)
    except Exception as exc:
        try:
            record_failure(cfg, job.pair, job.vector, exc)
        except Exception:
            log.warning("could not record the failure of %s", job.vector, exc_info=True)
        raise


def summarize_releases(cfg: WorkflowConfig, pairs: Iterable[Pair], jobs: Iterable[Job],
                       outcomes: Iterable[Outcome | None]) -> list[ReleaseSummary]:
    """One summary run per release, which then is marked processed; failed vectors listed with their error.

    ``outcomes`` are the ports that returned (a failed port has none, ``None`` where the
    orchestrator says so); every planned vector of a release is summarised, with its outcome or
    its recorded failure.
    """
    jobs, done = list(jobs), [o for o in outcomes if o is not None]
    summaries = []
    for pair in pairs:
        vectors = [j.vector for j in jobs if j.pair.target_ref == pair.target_ref]
        results = collect_outcomes(cfg, pair, vectors, done)
        run_id = summarize_release(cfg, pair, results)
        mark_processed(cfg, pair.base_line, pair.target.version, run_id)
        summary = ReleaseSummary(
            pair.base_line, pair.target.version, run_id, len(vectors),
            failed=tuple(r for r in results if r.failed),
            candidates=tuple(r.registered.model for r in results if not r.failed and r.registered.candidate),
            results=tuple(results))
        log.info("%s: %d vector(s), %d failed, summary run %s", pair.target_ref, len(vectors), len(summary.failed),
                 run_id)
        summaries.append(summary)
    return summaries


def failure_message(summaries: Iterable[ReleaseSummary]) -> str | None:
    """Why the run fails (after everything else was recorded): the failed vectors, or None when none failed."""
    failed = [f"{f.vector}: {f.error}" for s in summaries for f in s.failed]
    return f"{len(failed)} task vector(s) failed: " + "; ".join(failed) if failed else None

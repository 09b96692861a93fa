"""MLflow runs as the workflow's records: outcomes, failures and release summaries.

A record is written completely or not at all: its run is FINISHED only after every artifact is
logged (else FAILED), and lookups only trust FINISHED runs, so a crash mid-write leaves nothing a
rerun would mistake for done.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from theseus_ops.catalog import Catalog

log = logging.getLogger("theseus_ops")


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def find_finished_run(catalog: Catalog, tag: str, value: str, newest: bool = False):
    """The oldest (or newest) FINISHED run of the workflow experiment whose ``tag`` equals ``value``."""
    order = "DESC" if newest else "ASC"
    runs = catalog.call("search runs", catalog.client.search_runs, [catalog.experiment_id()],
                        filter_string=f"tags.`{tag}` = {_quote(value)} and attributes.status = 'FINISHED'",
                        max_results=1, order_by=[f"attributes.start_time {order}"])
    return runs[0] if runs else None


def log_run(catalog: Catalog, name: str, tags: dict[str, str], texts: dict[str, str],
            metrics: dict[str, float] | None = None, files: list[Path] | None = None,
            params: dict[str, object] | None = None) -> str:
    """A run holding ``texts`` (and ``files``) as artifacts; FINISHED only after everything is logged.

    ``params`` is the configuration the record was made with, logged as MLflow params so the run
    comparison view can set runs side by side; values are strings (lists and dicts as JSON).
    """
    run = catalog.call("create run", catalog.client.create_run, catalog.experiment_id(), run_name=name, tags=tags)
    run_id = run.info.run_id
    try:
        if params:
            log_params(catalog, run_id, params)
        for file, text in texts.items():
            catalog.call(f"log of {file}", catalog.client.log_text, run_id, text, file)
        for path in files or []:
            catalog.call(f"log of {Path(path).name}", catalog.client.log_artifact, run_id, str(path))
        for key, value in (metrics or {}).items():
            catalog.call("log metric", catalog.client.log_metric, run_id, key, float(value))
        catalog.call("finish run", catalog.client.set_terminated, run_id, "FINISHED")
    except BaseException:
        try:
            catalog.client.set_terminated(run_id, "FAILED")
        except Exception:
            log.warning("could not mark run %s as failed", run_id)
        raise
    return run_id


def param_value(value: object) -> str:
    """A param as MLflow stores it: a string of at most 6000 characters (lists and dicts as JSON)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:6000]


def log_params(catalog: Catalog, run_id: str, params: dict[str, object]) -> None:
    """``params`` in one batch (MLflow's ``log_batch``; params are write-once, so log each run's once)."""
    from mlflow.entities import Param

    batch = [Param(str(k), param_value(v)) for k, v in params.items() if v is not None]
    for start in range(0, len(batch), 100):  # MLflow's limit on params per batch
        catalog.call("log params", catalog.client.log_batch, run_id, params=batch[start:start + 100])


def read_text_artifact(catalog: Catalog, run_id: str, name: str, scratch: Path) -> str:
    """One text artifact of a run, downloaded into ``scratch``."""
    path = catalog.call(f"download of {name}", catalog.client.download_artifacts, run_id, name, str(scratch))
    return Path(path).read_text(encoding="utf-8")

"""Run a theseus-ops DAG for real, in process, with ``dag.test()``: what ``make demo`` and the tests use.

``dag.test()`` runs every task through Airflow (templating, mapping, trigger rules, retries, XCom,
asset events) against the metadata database of ``AIRFLOW_HOME`` without a scheduler. It returns
normally even when the run failed, so this module reports the run's state and its task instances,
and the CLI exits non-zero on a failed run.

``dag.test()`` runs each task in this process and logs to the console only, so the api-server would
find no log for the demo's tasks. While a task runs, every log record (structlog's and stdlib's, after
the level filter) is also appended as one JSON line to the file a worker would write:
``<base_log_folder>/dag_id=…/run_id=…/task_id=…/[map_index=…/]attempt=N.log``, the layout and the format
Airflow's FileTaskHandler reads. Run ids are unique per run and files are only appended to, so the logs
of earlier runs stay.

    python plugins/theseus_airflow/runner.py theseus_watch_releases
    python plugins/theseus_airflow/runner.py theseus_transport_release --conf '{"tasks": ["upper"]}'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

GPU_POOL_SLOTS = int(os.environ.get("THESEUS_GPU_POOL_SLOTS", "1"))


@dataclass
class DagRunReport:
    """What a run did: its state, every task instance, and the return value of chosen tasks."""

    dag_id: str
    run_id: str
    state: str
    tasks: list[dict] = field(default_factory=list)
    returns: dict[str, object] = field(default_factory=dict)

    def failed_tasks(self) -> list[dict]:
        return [t for t in self.tasks if t["state"] not in ("success", "skipped")]


def ensure_gpu_pool(name: str | None = None, slots: int = GPU_POOL_SLOTS) -> None:
    """The pool the GPU steps run in; the scheduler leaves tasks of a missing pool waiting forever."""
    from airflow.models.pool import Pool

    Pool.create_or_update_pool(name=name or os.environ.get("THESEUS_GPU_POOL", "gpu"), slots=slots,
                               description="theseus-ops GPU transport slots", include_deferred=False)


def load_dag(dag_id: str, dags_folder: str | None = None):
    """The DAG parsed from the dags folder; any import error is raised, never skipped."""
    from airflow.dag_processing.dagbag import DagBag

    folder = dags_folder or os.environ.get("AIRFLOW__CORE__DAGS_FOLDER") or str(Path(__file__).parents[2] / "dags")
    bag = DagBag(dag_folder=folder)
    if bag.import_errors:
        path, error = next(iter(bag.import_errors.items()))
        raise RuntimeError(f"DAG import error in {path}: {error.strip().splitlines()[-1]}")
    if dag_id not in bag.dags:
        raise KeyError(f"no DAG {dag_id!r} in {folder} (found: {', '.join(sorted(bag.dags))})")
    return bag.dags[dag_id]


def _return_value(dag_id: str, run_id: str, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run_id, key="return_value", dag_ids=dag_id,
                                                  task_ids=task_id)).all()
        values = [XComModel.deserialize_value(r) for r in sorted(rows, key=lambda r: r.map_index)]
    return values[0] if len(values) == 1 else values


class TaskLogTee:
    """A structlog processor that copies each event, as one JSON line, to the running task's log file.

    Inserted just before the console renderer of structlog's chain and of the stdlib formatters, so
    the file gets exactly the records the console gets; it leaves the event unchanged. Exceptions are
    written as Airflow's supervisor writes them (``error_detail``: structlog's exception dicts), so the
    UI shows them as it shows a worker's.
    """

    def __init__(self) -> None:
        import structlog

        self._lock = threading.Lock()
        self._file = None
        self._exceptions = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False))

    def __call__(self, logger, method_name: str, event_dict: dict) -> dict:
        if self._file is None:
            return event_dict
        line = {k: v for k, v in event_dict.items() if not k.startswith("_")}
        try:
            line = self._exceptions(logger, method_name, line)
            if "exception" in line:
                line["error_detail"] = line.pop("exception")
            line = {"timestamp": line.pop("timestamp", None) or datetime.now(UTC).isoformat(),
                    "level": line.pop("level", method_name), "event": str(line.pop("event", "")), **line}
            data = (json.dumps(line, default=str) + "\n").encode()
        except Exception as exc:  # a log line must never fail the task it describes
            data = (json.dumps({"timestamp": datetime.now(UTC).isoformat(), "level": "warning",
                                "event": f"(log record not written: {exc!r})"}) + "\n").encode()
        with self._lock:
            if self._file is not None:
                self._file.write(data)
                self._file.flush()
        return event_dict

    def install(self) -> None:
        """Insert this tee before the renderer of structlog's chain and of every stdlib formatter of it."""
        import logging

        import structlog

        chains = [structlog.get_config()["processors"]]
        loggers = [logging.root, *(lg for lg in logging.Logger.manager.loggerDict.values()
                                   if isinstance(lg, logging.Logger))]
        chains += [h.formatter.processors for lg in loggers for h in lg.handlers
                   if isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)]
        for chain in chains:  # in place: loggers already bound (cached) hold these very lists
            if isinstance(chain, list) and self not in chain:
                chain.insert(max(len(chain) - 1, 0), self)

    @contextlib.contextmanager
    def writing_to(self, path: Path) -> Iterator[None]:
        with open(path, "ab") as fh:  # append: a resumed (deferred) try and earlier runs keep their lines
            self._file = fh
            try:
                yield
            finally:
                with self._lock:
                    self._file = None


def task_log_relpath(ti) -> str:
    """The file the api-server reads for this try, relative to ``base_log_folder``: ``log_filename_template``."""
    from airflow.utils.helpers import log_filename_template_renderer

    return log_filename_template_renderer()(ti=ti, try_number=ti.try_number)


def task_log_path(ti) -> Path:
    from airflow.configuration import conf

    return Path(conf.get("logging", "base_log_folder"), task_log_relpath(ti))


@contextlib.contextmanager
def task_logs_to_files() -> Iterator[TaskLogTee]:
    """While ``dag.test()`` runs, each task's log also goes to its Airflow log file (see the module doc)."""
    from airflow.sdk.execution_time import supervisor

    tee = TaskLogTee()
    tee.install()
    original = supervisor.run_task_in_process

    def run_task_in_process(ti, task, *args, **kwargs):
        from airflow.sdk.log import init_log_file  # the folders and the file, with Airflow's permissions

        with tee.writing_to(Path(init_log_file(task_log_relpath(ti)))):
            return original(ti, task, *args, **kwargs)

    supervisor.run_task_in_process = run_task_in_process  # dag.test() imports it at each task
    try:
        yield tee
    finally:
        supervisor.run_task_in_process = original


def consume_asset_triggers(dag_id: str) -> int:
    """Dequeue the Asset events that would trigger ``dag_id``; return how many there were.

    The scheduler does this when it creates an asset-triggered run. A ``dag.test()`` run without
    Params processes every pending release, so it stands for that run: without this, a scheduler
    started later (``make ui``) would run the same releases again from the demo's old events.
    """
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        return session.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id)).rowcount


def _seconds(ti) -> float | None:
    """How long a task instance ran (Airflow's ``duration``, else end minus start); None if it never ran."""
    if ti.duration is not None:
        return round(float(ti.duration), 3)
    if ti.start_date is None or ti.end_date is None:
        return None
    return round((ti.end_date - ti.start_date).total_seconds(), 3)


def run_dag(dag_id: str, conf: dict | None = None, returns: tuple[str, ...] = ()) -> DagRunReport:
    """Run ``dag_id`` once with ``conf``; report its state, its task instances and ``returns`` tasks' XCom."""
    dag = load_dag(dag_id)
    ensure_gpu_pool()
    if not conf:
        consume_asset_triggers(dag_id)
    with task_logs_to_files():
        dr = dag.test(run_conf=conf or {})
    # run order: by start time (tasks that never started last), then task id and map index
    instances = sorted(dr.get_task_instances(), key=lambda ti: (ti.start_date is None, ti.start_date or 0,
                                                                 ti.task_id, ti.map_index))
    tasks = [{"task_id": ti.task_id, "map_index": ti.map_index, "label": ti.rendered_map_index,
              "state": str(ti.state), "try_number": ti.try_number, "pool": ti.pool, "queue": ti.queue,
              "seconds": _seconds(ti), "log": str(task_log_path(ti)) if ti.try_number else None}
             for ti in instances]
    report = DagRunReport(dag_id, dr.run_id, str(dr.state), tasks)
    for task_id in returns:
        report.returns[task_id] = _return_value(dag_id, dr.run_id, task_id)
    return report


def task_table(report: DagRunReport) -> list[str]:
    """One line per task instance: task, map label, state, how long it ran, try; columns aligned."""
    rows = [(t["task_id"], str(t["label"] or (t["map_index"] if t["map_index"] >= 0 else "")), t["state"],
             "" if t["seconds"] is None else f"{t['seconds']:.1f} s", f"try {t['try_number']}")
            for t in report.tasks]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(4)]
    # text columns as wide as their widest cell, times right-aligned, so every status and time lines up
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths[:3], strict=True)) + "  "
            + row[3].rjust(widths[3]) + "  " + row[4] for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dag_id")
    parser.add_argument("--conf", default="{}", help="run conf (the DAG's Params) as JSON")
    parser.add_argument("--returns", default="", help="comma list of task ids whose return values to print")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    try:
        conf = json.loads(args.conf)
    except json.JSONDecodeError as exc:
        print(f"error: --conf is not JSON ({exc})", file=sys.stderr)
        return 2
    try:
        report = run_dag(args.dag_id, conf, tuple(t for t in args.returns.split(",") if t))
    except (KeyError, RuntimeError) as exc:  # unknown DAG, import error: one line, not a traceback
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.__dict__, default=str))
    else:
        print(f"{report.dag_id} {report.run_id}: {report.state}")
        for line in task_table(report):
            print(line)
        logs = sorted({str(Path(t["log"]).parents[1]) for t in report.tasks if t["log"]})
        if logs:
            print(f"task logs (also in the Airflow UI): {os.path.commonpath(logs)}")
    return 0 if report.state == "success" else 1


if __name__ == "__main__":
    raise SystemExit(main())

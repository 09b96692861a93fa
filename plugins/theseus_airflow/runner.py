"""Run a theseus-ops DAG for real, in process, with ``dag.test()``: what ``make demo`` and the tests use.

``dag.test()`` runs every task through Airflow (templating, mapping, trigger rules, retries, XCom,
asset events) against the metadata database of ``AIRFLOW_HOME`` without a scheduler. It returns
normally even when the run failed, so this module reports the run's state and its task instances,
and the CLI exits non-zero on a failed run.

    python plugins/theseus_airflow/runner.py theseus_watch_releases
    python plugins/theseus_airflow/runner.py theseus_transport_release --conf '{"tasks": ["upper"]}'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
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


def run_dag(dag_id: str, conf: dict | None = None, returns: tuple[str, ...] = ()) -> DagRunReport:
    """Run ``dag_id`` once with ``conf``; report its state, its task instances and ``returns`` tasks' XCom."""
    dag = load_dag(dag_id)
    ensure_gpu_pool()
    dr = dag.test(run_conf=conf or {})
    tasks = sorted(({"task_id": ti.task_id, "map_index": ti.map_index, "label": ti.rendered_map_index,
                     "state": str(ti.state), "try_number": ti.try_number, "pool": ti.pool, "queue": ti.queue}
                    for ti in dr.get_task_instances()), key=lambda t: (t["task_id"], t["map_index"]))
    report = DagRunReport(dag_id, dr.run_id, str(dr.state), tasks)
    for task_id in returns:
        report.returns[task_id] = _return_value(dag_id, dr.run_id, task_id)
    return report


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
        for t in report.tasks:
            label = t["label"] or (t["map_index"] if t["map_index"] >= 0 else "")
            print(f"  {t['task_id']:<12} {label!s:<48} {t['state']:<15} try {t['try_number']}")
    return 0 if report.state == "success" else 1


if __name__ == "__main__":
    raise SystemExit(main())

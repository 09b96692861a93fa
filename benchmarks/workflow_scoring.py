"""Workflow scoring: where a port task's time goes, against the time of one prepare, through Airflow for real.

Run from the repository root, e.g.
    .venv/bin/python benchmarks/workflow_scoring.py --state /tmp/wf-bench --out /tmp/wf.json

It does what ``make demo`` does, on a fresh state directory (SQLite Airflow and MLflow, a local landing
zone): seed the ``tiny`` family's v1 and its task vectors, land v2-wide-shuffled, run the watcher and
the transport DAG with ``dag.test()``. The family itself is built once and cached (``--families-root``,
the demo's cache by default). Then it reads what the run recorded:

- each task instance's duration, from the runner's report (Airflow's own ``duration``);
- per port task (one task vector): the base's scoring, and per method the transport (which includes
  preparing the pair's maps the first time a method needs them) and the scoring (the α sweep on val
  on the target loaded once, then test and the general loss at the chosen α), from the outcome;
- each prepared alignment's own time (its provenance), which is the "single prepare" the scoring is
  compared with.

The check that the run is right, not only fast: every port must succeed, and every method that
applies must have scored the whole α grid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "plugins" / "theseus_airflow" / "runner.py"
SIX_ALPHAS = "0,0.5,1,1.5,2,3"


def _demo_shell(state: Path, alphas: str, script: str) -> subprocess.CompletedProcess:
    """``script`` in the demo's own environment (scripts/demo-env.sh) on ``state``."""
    env = {**os.environ, "THESEUS_STATE": str(state), "THESEUS_ALPHAS": alphas, "BIN": str(Path(sys.executable).parent)}
    prelude = f'source "{ROOT}/scripts/demo-env.sh"; source "{ROOT}/scripts/demo-steps.sh"; '
    return subprocess.run(["bash", "-c", prelude + script], env=env, capture_output=True, text=True, cwd=ROOT)


def _checked(proc: subprocess.CompletedProcess, what: str) -> str:
    if proc.returncode != 0:
        sys.exit(f"workflow_scoring: {what} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def _report(stdout: str) -> dict:
    """The runner's ``--json`` report: its last line that is a JSON object."""
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def _prepares(work_dir: Path) -> list[dict]:
    """Each cached alignment's method and own prepare time (its provenance ``seconds``).

    A calibrated method has one alignment per task vector: the calibration recipe mixes in the task's
    own rows, so each vector's calibration, and so its maps, differ (the file name carries its hash).
    """
    from theseus_ops.io.alignment import Alignment

    out = []
    for path in sorted((work_dir / "alignments").rglob("*.safetensors")):
        provenance = Alignment.load(path).provenance
        out.append({"file": path.name, "method": provenance["options"]["method"],
                    "seconds": float(provenance["seconds"])})
    return out


def _vector_rows(outcomes: list[dict], n_alphas: int) -> list[dict]:
    """Per port: the base's scoring and each applicable method's transport and scoring seconds."""
    rows = []
    for outcome in outcomes:
        methods = {m: r for m, r in outcome["methods"].items() if "not_applicable" not in r}
        short = [m for m, r in methods.items() if len(r["sweep"]) != n_alphas]
        if short:
            sys.exit(f"workflow_scoring: {outcome['vector']}: {short} did not score all {n_alphas} alphas")
        scoring = outcome["base"]["eval_seconds"] + sum(r["eval_seconds"] for r in methods.values())
        transport = sum(r["transport_seconds"] for r in methods.values())
        rows.append({"vector": outcome["vector"], "port_s": outcome["seconds"],
                     "base_scoring_s": outcome["base"]["eval_seconds"], "scoring_s": round(scoring, 3),
                     "transport_s": round(transport, 3),
                     "methods": {m: {"transport_s": r["transport_seconds"], "scoring_s": r["eval_seconds"]}
                                 for m, r in methods.items()},
                     "not_applicable": sorted(set(outcome["methods"]) - set(methods)),
                     "selected": outcome["selected"], "selected_test": outcome["selected_test"],
                     "base_test": outcome["base_test"]})
    return rows


def run(state: Path, families_root: Path, alphas: str, scale: str) -> dict:
    if state.exists():
        shutil.rmtree(state)
    family = f"theseus-{scale}"
    seed = (f'migrate_airflow_db && "$BIN/python" -m theseus_ops.demo.seed --scale {scale} --family {family} '
            f'--families-root "{families_root}" --datasets-root "$STATE/datasets"')
    started = time.perf_counter()
    _checked(_demo_shell(state, alphas, seed), "seeding the demo")
    seeded = time.perf_counter() - started
    watch = _report(_checked(_demo_shell(state, alphas, f'"$BIN/python" "{RUNNER}" theseus_watch_releases --json'),
                             "the watcher"))
    transport = _report(_checked(_demo_shell(state, alphas, f'"$BIN/python" "{RUNNER}" theseus_transport_release '
                                                            "--json --returns port"), "the transport DAG"))
    if transport["state"] != "success":
        sys.exit(f"workflow_scoring: the transport DAG ended {transport['state']}: {transport['tasks']}")
    outcomes = transport["returns"]["port"]
    outcomes = outcomes if isinstance(outcomes, list) else [outcomes]
    n_alphas = len(alphas.split(","))
    prepares = _prepares(state / "work")
    theseus = sorted(p["seconds"] for p in prepares if p["method"] == "theseus")
    if not theseus:
        sys.exit(f"workflow_scoring: no theseus alignment was prepared (found {prepares})")
    one_prepare = theseus[len(theseus) // 2]  # the median of the per-vector prepares
    vectors = _vector_rows(outcomes, n_alphas)
    return {"scale": scale, "alphas": alphas, "seed_s": round(seeded, 1),
            "tasks": [{"dag": r["dag_id"], "task": t["task_id"], "label": t["label"], "state": t["state"],
                       "seconds": t["seconds"]} for r in (watch, transport) for t in r["tasks"]],
            "prepares": prepares, "one_prepare_s": one_prepare, "vectors": vectors,
            "scoring_over_prepare": [round(v["scoring_s"] / one_prepare, 2) for v in vectors]}


def _print(result: dict) -> None:
    print("| DAG task | vector | state | seconds |\n|---|---|---|---|")
    for t in result["tasks"]:
        print(f"| {t['dag']}.{t['task']} | {t['label'] or ''} | {t['state']} | {t['seconds']} |")
    print("\nprepares (alignment provenance): " + ", ".join(f"{p['method']} {p['seconds']:.2f}s"
                                                        for p in result["prepares"]))
    print(f"one prepare (theseus, median): {result['one_prepare_s']:.2f} s, alphas {result['alphas']}\n")
    print("| vector | port s | base scoring s | " + " | ".join(f"{m} transport / scoring s"
                                                       for m in result["vectors"][0]["methods"])
          + " | all scoring s | scoring / prepare |\n|" + "---|" * (5 + len(result["vectors"][0]["methods"])))
    for v, ratio in zip(result["vectors"], result["scoring_over_prepare"], strict=True):
        cells = " | ".join(f"{m['transport_s']:.1f} / {m['scoring_s']:.1f}" for m in v["methods"].values())
        print(f"| {v['vector']} | {v['port_s']:.1f} | {v['base_scoring_s']:.1f} | {cells} | {v['scoring_s']:.1f} "
              f"| {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", default="/tmp/theseus-workflow-bench", help="a scratch state dir (replaced)")
    parser.add_argument("--families-root", default=str(ROOT / ".theseus" / "families"),
                        help="where the built family is cached (the demo's cache by default)")
    parser.add_argument("--alphas", default=SIX_ALPHAS)
    parser.add_argument("--scale", default="tiny", choices=["micro", "tiny", "small"])
    parser.add_argument("--out", default="benchmarks/results/workflow_scoring.json")
    args = parser.parse_args()
    result = run(Path(args.state).resolve(), Path(args.families_root).resolve(), args.alphas, args.scale)
    _print(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    out.write_text(json.dumps({**meta, **result}, indent=2))


if __name__ == "__main__":
    main()

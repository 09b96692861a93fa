"""Oracle table: logits error of B + τ_B against A + τ_A for every method, architecture and oracle.

Run from the repository root:  .venv/bin/python benchmarks/oracles.py --out benchmarks/results/oracles.json
(``--families qwen3 gemma3`` for some architectures only; every one of ``tests/tiny.KITS`` by default).

Identity, consistent permutation and silent widening all keep the function, so an exact
transport scores ~0. Qwen3 and Gemma 3 add ``rotary`` (heads permuted and every head's q and k
turned by quarter turns per rotary pair), Gemma 2 and 3 ``residual-widening`` (16 extra residual
channels, √d-scaled embeddings). It also times one transport (statistics, maps and apply) per case.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import load_file

from tests import tiny
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, TransportConfig
from theseus_ops.transport.methods import get_method

METHODS = ("theseus", "theseus-data-free", "pad", "naive")
EXTRA_ORACLES = {"qwen3": ("rotary",), "gemma2": ("residual-widening",), "gemma3": ("rotary", "residual-widening")}


def measure(root: Path, architecture: str, oracle: str, method: str) -> dict:
    case = tiny.Case(root / f"{architecture}-{oracle}-{method}", architecture, oracle)
    caps = get_method(method).capabilities
    if caps.same_shapes_only and oracle.endswith("widening"):
        return {"error": None, "seconds": None, "note": "shapes differ"}
    calibration = CalibrationSpec(str(case.calibration)) if caps.needs_calibration else CalibrationSpec()
    cfg = TransportConfig(str(case.source), str(case.target), method, task_vector=str(case.task_vector),
                          calibration=calibration, device="cpu")
    started = time.perf_counter()
    api.transport(cfg, case.root / "out.safetensors")
    seconds = time.perf_counter() - started
    return {"error": case.error(load_file(str(case.root / "out.safetensors"))), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/oracles.json")
    parser.add_argument("--families", dest="architectures", nargs="+", default=list(tiny.KITS), choices=list(tiny.KITS))
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("theseus_ops").setLevel(logging.ERROR)
    torch.set_num_threads(2)
    rows = []
    cases = [(a, o) for a in args.architectures
             for o in ("identity", "permutation", "widening", *EXTRA_ORACLES.get(a, ()))]
    with tempfile.TemporaryDirectory() as tmp:
        for architecture, oracle in cases:
            for method in METHODS:
                rows.append({"family": architecture, "oracle": oracle, "method": method,  # the file's keys
                             **measure(Path(tmp), architecture, oracle, method)})
    print("| family | oracle | " + " | ".join(METHODS) + " |")  # the table header BENCHMARKS.md has
    print("|---|---|" + "---|" * len(METHODS))
    for architecture, oracle in cases:
        cells = []
        for method in METHODS:
            r = next(x for x in rows if (x["family"], x["oracle"], x["method"]) == (architecture, oracle, method))
            cells.append("n/a" if r["error"] is None else f"{r['error']:.1e} ({r['seconds']:.2f} s)")
        print(f"| {architecture} | {oracle} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

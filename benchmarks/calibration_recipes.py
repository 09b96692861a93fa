"""Calibration recipes side by side: calibrated Theseus on the tiny family, one recipe at a time.

    .venv/bin/python benchmarks/calibration_recipes.py --out DIR [--cache DIR] \
        [--recipes "task=256,text=0;task=256,text=128;..."] [--targets v2-wide,v2-wide-shuffled]

For each recipe (``theseus_ops.evaluation.recipe``), every skill's calibration set is built as the
workflow builds it, Theseus is prepared on it once per target, and α is chosen on val as in
``bench quality``. The data-free variant, which needs no calibration, runs once as the reference the
issue compares against. The default recipe is chosen on the mean val exact match; test is reported
beside it and never used to choose. Writes DIR/recipes.json and DIR/recipes.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from theseus_ops.demo.bench import BenchConfig, run_quality
from theseus_ops.evaluation.recipe import CalibrationRecipe

RECIPES = ("task=256,text=0", "task=256,text=128", "task=256,text=128,answers=no", "task=256,text=128,probes=64")


def _theseus_rows(results: dict, method: str) -> dict[str, dict]:
    """(target/task) -> val and test exact match and α of ``method``, from a bench results.json."""
    out = {}
    for cell in results["cells"]:
        r = cell["methods"].get(method) or {}
        if "val" in r:
            out[f"{cell['target']}/{cell['task']}"] = {"val": r["val"]["exact_match"], "test": r["test"]["exact_match"],
                                                        "alpha": r["alpha"]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache", default=None, help="family cache root (default .theseus/families)")
    parser.add_argument("--recipes", default=";".join(RECIPES), help="recipes separated by ';'")
    parser.add_argument("--targets", default="v2-wide,v2-wide-shuffled")
    parser.add_argument("--alphas", default="0,0.5,1,1.5,2,3,4,5")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = tuple(t for t in args.targets.split(",") if t)
    alphas = tuple(float(a) for a in args.alphas.split(","))
    runs: dict[str, dict] = {}
    started = time.perf_counter()
    for i, spec in enumerate(s for s in args.recipes.split(";") if s.strip()):
        recipe = CalibrationRecipe.parse(spec)
        methods = ("theseus", "theseus-data-free") if i == 0 else ("theseus",)
        cfg = BenchConfig(family="tiny", alphas=alphas, methods=methods, targets=targets, cache=args.cache,
                          plots=False, calibration=recipe, references=False)
        t0 = time.perf_counter()
        results = run_quality(cfg, out / f"recipe-{i}", progress=lambda m, s=spec: print(f"[{s}] {m}", file=sys.stderr))
        runs[spec] = {"recipe": recipe.as_dict(), "seconds": round(time.perf_counter() - t0, 1),
                      "theseus": _theseus_rows(results, "theseus")}
        if i == 0:
            runs["data-free (no calibration)"] = {"theseus": _theseus_rows(results, "theseus-data-free")}
    cells = sorted({c for r in runs.values() for c in r["theseus"]})
    lines = ["| recipe | mean val EM | " + " | ".join(f"{c} val / test" for c in cells) + " |",
             "|---" * (len(cells) + 2) + "|"]
    for spec, r in runs.items():
        vals = [r["theseus"][c]["val"] for c in cells if c in r["theseus"]]
        mean = sum(vals) / len(vals) if vals else float("nan")
        r["mean_val"] = mean
        row = [f"{100 * r['theseus'][c]['val']:.0f} / {100 * r['theseus'][c]['test']:.0f}" if c in r["theseus"]
               else "-" for c in cells]
        lines.append(f"| `{spec}` | {100 * mean:.1f} | " + " | ".join(row) + " |")
    chosen = max((s for s in runs if not s.startswith("data-free")), key=lambda s: runs[s]["mean_val"])
    meta = {"machine": platform.platform(), "date": time.strftime("%Y-%m-%d"), "chosen_on_val": chosen,
            "seconds": round(time.perf_counter() - started, 1)}
    (out / "recipes.json").write_text(json.dumps({"runs": runs, **meta}, indent=2))
    (out / "recipes.md").write_text("\n".join(lines) + f"\n\nchosen on mean val EM: `{chosen}`\n")
    print("\n".join(lines))
    print(f"chosen on val: {chosen} ({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

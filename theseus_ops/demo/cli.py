"""The ``evaluate`` and ``bench`` subcommands, plugged into ``theseus_ops.cli`` by the entry point
``demo`` of group ``theseus_ops.cli`` (pyproject.toml); the library itself never imports the demo.

``theseus-ops evaluate --model DIR --task DIR --split test`` prints one JSON object.
``theseus-ops bench quality --family tiny --out DIR`` builds (or reuses) the family and writes
results.json, table.md and sweep-<target>.png under DIR.
"""

from __future__ import annotations

import argparse
import json
import sys

from theseus_ops.transport.tolerances import DEFAULT_FILL, FILLS

OURS = ("evaluate", "bench")


def add_subcommands(sub) -> None:
    e = sub.add_parser("evaluate", help="score a model on a task split: exact match, token accuracy, LM loss")
    e.add_argument("--model", required=True, metavar="DIR", help="model directory with its tokenizer")
    e.add_argument("--task", required=True, metavar="DIR", help="task directory with train/val/test.jsonl")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--heldout", metavar="FILE", help="held-out text for the LM-loss (general capability) metric")
    e.add_argument("--limit", type=int, metavar="N", help="score only the first N examples")

    b = sub.add_parser("bench", help="benchmarks on the offline demo family")
    kinds = b.add_subparsers(dest="bench_kind", required=True)
    q = kinds.add_parser("quality", help="every method on every skill and target; α chosen on val, test reported")
    q.add_argument("--family", default="tiny", choices=["micro", "tiny", "small"])
    q.add_argument("--out", required=True, metavar="DIR")
    q.add_argument("--cache", metavar="DIR", help="family cache root (default .theseus/families)")
    q.add_argument("--alphas", default="0,0.5,1,1.5,2,3,4,5", help="comma-separated α grid searched on val")
    q.add_argument("--no-plots", action="store_true")
    q.add_argument("--fill", default=DEFAULT_FILL, choices=FILLS,
                   help="what estimated maps do on directions the calibration leaves open (default %(default)s)")
    q.add_argument("--calibration", metavar="RECIPE",
                   help="build each skill's calibration set by this recipe, as the workflow does "
                        "(task=N,text=N,probes=N,answers=yes|no,max_length=N); default: the family's own files")


def _alphas(text: str) -> tuple[float, ...]:
    from theseus_ops.errors import InputError

    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise InputError(f"--alphas must be comma-separated numbers, got {text!r}") from exc
    if not values:
        raise InputError("--alphas is empty")
    return values


def run(args: argparse.Namespace) -> int | None:
    """Handle our commands; None when the command belongs to someone else."""
    if args.command not in OURS:
        return None
    from theseus_ops.errors import InputError

    if args.command == "evaluate":
        from theseus_ops.demo.evaluate import evaluate_model

        if args.limit is not None and args.limit < 1:
            raise InputError("--limit must be at least 1")
        print(json.dumps(evaluate_model(args.model, args.task, args.split, args.heldout, args.limit), indent=2))
        return 0
    from theseus_ops.demo.bench import BenchConfig, run_quality
    from theseus_ops.evaluation.recipe import CalibrationRecipe

    recipe = CalibrationRecipe.parse(args.calibration) if args.calibration is not None else None
    cfg = BenchConfig(family=args.family, alphas=_alphas(args.alphas), cache=args.cache, plots=not args.no_plots,
                      fill=args.fill, calibration=recipe)
    quiet = getattr(args, "quiet", False)
    results = run_quality(cfg, args.out, progress=(lambda _m: None) if quiet else
                          (lambda m: print(f"theseus-ops: {m}", file=sys.stderr)))
    print(f"{args.out}/table.md: {len(results['cells'])} cells; family {results['family']['scale']} "
          f"built in {results['family']['build_seconds_recorded']}s, evaluated in {results['eval_seconds']}s",
          file=sys.stderr)
    return 0

"""The ``evaluate`` and ``bench`` subcommands, plugged into ``theseus_ops.cli`` by the entry point
``demo`` of group ``theseus_ops.cli`` (pyproject.toml); the library itself never imports the demo.

``theseus-ops evaluate --model DIR --task DIR --split test`` prints one JSON object.
``theseus-ops bench quality --family tiny --out DIR`` builds (or reuses) the family and writes
results.json, table.md and sweep-<target>.png under DIR. ``--family real`` runs the same protocol on
the real pretrained fixtures (the `real` extra): results.json and table.md.
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

    b = sub.add_parser("bench", help="benchmarks on the offline demo family or the real fixtures")
    kinds = b.add_subparsers(dest="bench_kind", required=True)
    q = kinds.add_parser("quality", help="every method on every skill and target; α chosen on val, test reported")
    q.add_argument("--family", default="tiny", choices=["micro", "tiny", "small", "real"],
                   help="the self-built demo family's scale, or real: the pretrained fixtures (make real)")
    q.add_argument("--out", required=True, metavar="DIR")
    q.add_argument("--cache", metavar="DIR", help="family cache root (default .theseus/families; real: .theseus/real)")
    q.add_argument("--alphas", help="comma-separated α grid searched on val (default 0,0.5,1,1.5,2,3,4,5; "
                                    "real: 0,0.5,1,1.5,2)")
    q.add_argument("--methods", metavar="M,M", help="methods to run (default: every method the workflow runs)")
    q.add_argument("--targets", metavar="T,T", help="target releases (default: all of the family's)")
    q.add_argument("--limit", type=int, metavar="N",
                   help="score only the first N val and test rows of each task (real: default 48)")
    q.add_argument("--models", metavar="M,M", help="real only: smollm2,minilm (default both)")
    q.add_argument("--vectors", metavar="V,V", help="real only: full,lora (default both)")
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


def _names(text: str | None, what: str) -> tuple[str, ...] | None:
    from theseus_ops.errors import InputError

    if text is None:
        return None
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names:
        raise InputError(f"{what} is empty")
    return names


def _bench_options(args: argparse.Namespace) -> dict:
    """The options both families share, only those given (each config keeps its own defaults)."""
    from theseus_ops.errors import InputError

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    options = {"alphas": None if args.alphas is None else _alphas(args.alphas),
               "methods": _names(args.methods, "--methods"), "targets": _names(args.targets, "--targets")}
    return {k: v for k, v in options.items() if v is not None}


def _run_real(args: argparse.Namespace, report) -> int:
    from theseus_ops.demo.real.bench import RealBenchConfig, run_real_quality
    from theseus_ops.evaluation.recipe import CalibrationRecipe

    options = _bench_options(args)
    for name in ("models", "vectors"):
        if getattr(args, name) is not None:
            options[name] = _names(getattr(args, name), f"--{name}")
    if args.calibration is not None:
        options["calibration"] = CalibrationRecipe.parse(args.calibration)
    if args.limit is not None:
        options["rows"] = args.limit
    cfg = RealBenchConfig(fill=args.fill, cache=args.cache, **options)
    results = run_real_quality(cfg, args.out, progress=report)
    print(f"{args.out}/table.md: {len(results['cells'])} cells on the real fixtures in {results['seconds']}s",
          file=sys.stderr)
    return 0


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
    quiet = getattr(args, "quiet", False)
    report = (lambda _m: None) if quiet else (lambda m: print(f"theseus-ops: {m}", file=sys.stderr))
    if args.family == "real":
        return _run_real(args, report)
    for name in ("models", "vectors"):
        if getattr(args, name) is not None:
            raise InputError(f"--{name} applies to --family real only")
    from theseus_ops.demo.bench import BenchConfig, run_quality
    from theseus_ops.evaluation.recipe import CalibrationRecipe

    recipe = CalibrationRecipe.parse(args.calibration) if args.calibration is not None else None
    options = _bench_options(args)
    if args.limit is not None:
        options.update(val_limit=args.limit, test_limit=args.limit)
    cfg = BenchConfig(family=args.family, cache=args.cache, plots=not args.no_plots, fill=args.fill,
                      calibration=recipe, **options)
    results = run_quality(cfg, args.out, progress=report)
    print(f"{args.out}/table.md: {len(results['cells'])} cells; family {results['family']['scale']} "
          f"built in {results['family']['build_seconds_recorded']}s, evaluated in {results['eval_seconds']}s",
          file=sys.stderr)
    return 0

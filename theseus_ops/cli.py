"""The ``theseus-ops`` command line: prepare, transport, apply, inspect.

Every :class:`~theseus_ops.errors.TheseusError` becomes one line on stderr and its ``exit_code``:
2 for an input error, 3 for a service (MLflow, S3) that stayed unreachable (see ``errors``).
Progress goes to stderr; machine-readable results (``inspect``) go to stdout as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings

from theseus_ops import __version__
from theseus_ops.errors import TheseusError
from theseus_ops.transport.tolerances import DEFAULT_FILL, DEFAULT_RANK_TOL, FILLS

EXIT_INPUT = 2


def _add_calibration(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", metavar="FILE", help="safetensors with input_ids (+attention_mask, labels) "
                   "or pixel_values, seen by both models")
    p.add_argument("--source-calibration", metavar="FILE", help="the source model's inputs, when the models need "
                   "different inputs for the same examples")
    p.add_argument("--target-calibration", metavar="FILE", help="the target model's inputs for the same examples")


def _add_map_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--center", action="store_true", help="center activations before Procrustes")
    p.add_argument("--whiten-power", type=float, default=0.0, metavar="P", help="partial whitening power in [0, 0.5]")
    p.add_argument("--max-rows", type=int, metavar="N", help="use at most N calibration examples")
    p.add_argument("--layer-map", default="identity", metavar="identity|uniform|FILE.json",
                   help="which source layer feeds each target layer (default: identity, equal depth)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=8, help="calibration examples per forward pass")
    p.add_argument("--rank-tol", type=float, default=DEFAULT_RANK_TOL, metavar="TOL",
                   help="singular values under TOL x the largest count as undetermined by the data (reported; "
                   "default %(default).2g)")
    p.add_argument("--fill", default=DEFAULT_FILL, choices=FILLS,
                   help="what a map does on directions the data leaves undetermined: pad fills them with the zero-pad "
                   "prior (default; depends on coordinate order), project drops them or completes them from "
                   "probe inputs (equivariant)")
    p.add_argument("--probe-seed", type=int, default=0, help="seed of theseus-data-free's probe inputs")


def build_parser() -> argparse.ArgumentParser:
    from theseus_ops.transport.methods import method_names

    parser = argparse.ArgumentParser(prog="theseus-ops", description="Port task vectors to a new base model release.")
    parser.add_argument("--version", action="version", version=f"theseus-ops {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="estimate the per-space maps of a model pair once, for many task vectors")
    p.add_argument("--source-base", required=True, metavar="DIR")
    p.add_argument("--target-base", required=True, metavar="DIR")
    _add_calibration(p)
    p.add_argument("--method", default="theseus", choices=["theseus", "theseus-data-free"])
    _add_map_options(p)
    p.add_argument("--out", required=True, metavar="ALIGNMENT")

    t = sub.add_parser("transport", help="port one task vector to the target base")
    t.add_argument("--source-base", required=True, metavar="DIR")
    t.add_argument("--target-base", required=True, metavar="DIR")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--task-vector", metavar="PATH", help="delta .safetensors or PEFT LoRA adapter directory")
    src.add_argument("--source-tuned", metavar="DIR", help="fine-tuned source model; its delta is computed")
    _add_calibration(t)
    t.add_argument("--alignment", metavar="FILE", help="reuse the maps written by prepare")
    t.add_argument("--method", required=True, choices=method_names())
    _add_map_options(t)
    t.add_argument("--gradfix-mode", default="normal", choices=["normal", "force"])
    t.add_argument("--gradfix-signs", default="mean", choices=["mean", "vote"])
    t.add_argument("--allow-partial", action="store_true", help="write a result even if some parameters are left out")
    t.add_argument("--out", required=True, metavar="PATH")
    t.add_argument("--report", metavar="FILE.json", help="per-parameter JSON report")

    a = sub.add_parser("apply", help="write base + alpha * task vector as a loadable model directory")
    a.add_argument("--base", required=True, metavar="DIR")
    a.add_argument("--task-vector", required=True, metavar="PATH")
    a.add_argument("--alpha", type=float, default=1.0)
    a.add_argument("--out", required=True, metavar="DIR")

    i = sub.add_parser("inspect", help="summarise a model, task vector or alignment file as JSON")
    i.add_argument("path")

    # Subcommands owned by other packages register themselves; imports stay light (no torch/mlflow).
    from theseus_ops.catalog import cli as catalog_cli
    from theseus_ops.demo import cli as demo_cli

    demo_cli.add_subcommands(sub)
    catalog_cli.add_subcommands(sub)
    return parser


def _calibration(args: argparse.Namespace):
    from theseus_ops.config import CalibrationSpec

    return CalibrationSpec(args.calibration, args.source_calibration, args.target_calibration)


def _run(args: argparse.Namespace) -> int:
    from theseus_ops.catalog import cli as catalog_cli
    from theseus_ops.demo import cli as demo_cli

    for owner in (demo_cli, catalog_cli):
        handled = owner.run(args)
        if handled is not None:
            return handled
    from theseus_ops import api
    from theseus_ops.config import PrepareConfig, TransportConfig

    if args.command == "prepare":
        cfg = PrepareConfig(
            source_base=args.source_base, target_base=args.target_base, calibration=_calibration(args),
            method=args.method, center=args.center, whiten_power=args.whiten_power, max_rows=args.max_rows,
            layer_map=args.layer_map, device=args.device, batch_size=args.batch_size, rank_tol=args.rank_tol,
            probe_seed=args.probe_seed, fill=args.fill,
        )
        alignment = api.prepare(cfg, args.out)
        worst = max((q["residual"] for q in alignment.quality.values()), default=float("nan"))
        print(f"{args.out}: {len(alignment.maps)} spaces, worst residual {worst:.3g}", file=sys.stderr)
    elif args.command == "transport":
        cfg = TransportConfig(
            source_base=args.source_base, target_base=args.target_base, method=args.method,
            task_vector=args.task_vector, source_tuned=args.source_tuned, calibration=_calibration(args),
            alignment=args.alignment, layer_map=args.layer_map, allow_partial=args.allow_partial,
            center=args.center, whiten_power=args.whiten_power, max_rows=args.max_rows, device=args.device,
            batch_size=args.batch_size, gradfix_mode=args.gradfix_mode, gradfix_signs=args.gradfix_signs,
            rank_tol=args.rank_tol, probe_seed=args.probe_seed, fill=args.fill,
        )
        report = api.transport(cfg, args.out, args.report)
        s = report["summary"]
        print(f"{args.out}: {s['transported']}/{s['total']} parameters transported with {args.method}",
              file=sys.stderr)
    elif args.command == "apply":
        api.apply_task_vector(args.base, args.task_vector, args.alpha, args.out)
    elif args.command == "inspect":
        print(json.dumps(api.inspect_path(args.path), indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="theseus-ops: %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="transformers")
    try:
        return _run(args)
    except TheseusError as exc:
        print(f"theseus-ops: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("theseus-ops: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

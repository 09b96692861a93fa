"""The ``theseus-ops`` command line: prepare, transport, apply, inspect.

Exit codes: 0 success; 2 bad input, as one ``theseus-ops: error: ...`` line on stderr (every
:class:`~theseus_ops.errors.InputError`, every argument error, and as a last resort any
``OSError``, ``ValueError`` or library error at the edges: file system, MLflow, S3, safetensors,
named with its type); 3 for a service (MLflow, S3) that stayed unreachable through every retry
(:class:`~theseus_ops.errors.ServiceError`, also one line); 130 after SIGINT and 143 after SIGTERM
(Airflow and Kubernetes stop tasks with it), with one line and nothing partial left behind.
Programming errors (``TypeError``, ``AttributeError``, ...) still end in a traceback and exit 1,
so they are seen and fixed.
Progress goes to stderr; machine-readable results (``inspect``) go to stdout as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import warnings
from importlib import metadata

from theseus_ops import __version__
from theseus_ops.errors import TheseusError
from theseus_ops.transport.options import OptionSpec, option_specs

EXIT_INPUT = 2
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM
PREFIX = "theseus-ops: error:"
CLI_GROUP = "theseus_ops.cli"  # the entry-point group of subcommand providers (pyproject.toml)


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line and exit 2, like every other bad input (not usage + error).

    ``add_subparsers`` makes every subcommand's parser of the same class, so this covers them all.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        where = self.prog.removeprefix("theseus-ops").strip()
        text = " ".join(message.split())
        self.exit(EXIT_INPUT, f"{PREFIX} {where + ': ' if where else ''}{text} (see {self.prog} --help)\n")


def _add_calibration(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", metavar="FILE", help="safetensors with input_ids (+attention_mask, labels) "
                   "or pixel_values, seen by both models")
    p.add_argument("--source-calibration", metavar="FILE", help="the source model's inputs, when the models need "
                   "different inputs for the same examples")
    p.add_argument("--target-calibration", metavar="FILE", help="the target model's inputs for the same examples")


def _add_option(p: argparse._ActionsContainer, spec: OptionSpec, prefix: str = "") -> None:
    """One declared option as a flag: its default, help, choices and type come from the declaration."""
    flag = f"--{prefix.replace('_', '-') + '-' if prefix else ''}{spec.flag_suffix}"
    dest = f"{prefix}_{spec.name}" if prefix else spec.name
    if spec.type is bool:
        p.add_argument(flag, dest=dest, action="store_true", default=spec.default, help=spec.help)
        return
    kwargs: dict = {"dest": dest, "default": spec.default, "help": spec.help, "type": spec.type}
    if spec.choices:
        kwargs["choices"] = list(spec.choices)
    if spec.metavar:
        kwargs["metavar"] = spec.metavar
    p.add_argument(flag, **kwargs)


def _add_map_options(p: argparse.ArgumentParser) -> None:
    """The options prepare and transport share, from :class:`theseus_ops.config.MapSettings`."""
    from theseus_ops.config import MapSettings

    for spec in option_specs(MapSettings):
        _add_option(p, spec)


def _add_method_options(p: argparse.ArgumentParser, names: list[str]) -> None:
    """Each method's own options, as ``--<method>-<option>``, in a help section per method."""
    from theseus_ops.transport.methods import get_method

    for name in names:
        info = get_method(name)
        specs = info.options()
        if specs:
            group = p.add_argument_group(f"{name} options", info.summary)
            for spec in specs:
                _add_option(group, spec, info.option_prefix)


def _method_help(names: list[str]) -> str:
    from theseus_ops.transport.methods import get_method

    return "; ".join(f"{n}: {get_method(n).summary}" for n in names)


def _map_settings(args: argparse.Namespace) -> dict:
    from theseus_ops.config import MapSettings

    return {spec.name: getattr(args, spec.name) for spec in option_specs(MapSettings)}


def _method_config(args: argparse.Namespace) -> dict:
    """The chosen method's own options from their flags (its config dataclass checks them)."""
    from theseus_ops.transport.methods import get_method

    info = get_method(args.method)
    return {spec.name: getattr(args, f"{info.option_prefix}_{spec.name}") for spec in info.options()}


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace an existing output theseus-ops did not write "
                   "(outputs it wrote are replaced anyway; the old one goes only once the new one is complete)")


def build_parser(providers: list | None = None) -> argparse.ArgumentParser:
    """The parser; ``providers`` (default: :func:`subcommand_providers`) add their subcommands."""
    from theseus_ops.config import PrepareConfig
    from theseus_ops.transport.methods import get_method, method_names

    every = sorted(method_names())
    estimating = [n for n in every if get_method(n).capabilities.estimates_maps]
    parser = OneLineParser(prog="theseus-ops", description="Port task vectors to a new base model release.")
    parser.add_argument("--version", action="version", version=f"theseus-ops {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="estimate the per-space maps of a model pair once, for many task vectors")
    p.add_argument("--source-base", required=True, metavar="DIR")
    p.add_argument("--target-base", required=True, metavar="DIR")
    _add_calibration(p)
    p.add_argument("--method", default=PrepareConfig.__dataclass_fields__["method"].default, choices=estimating,
                   help=_method_help(estimating))
    _add_map_options(p)
    _add_method_options(p, estimating)
    p.add_argument("--stream", action="store_true",
                   help="run one block of each model at a time from its weight files and keep each map in a file "
                        "once final, for a pair that does not fit in memory whole (Llama-style models; the maps "
                        "are the same; docs/memory.md)")
    p.add_argument("--out", required=True, metavar="ALIGNMENT")
    _add_overwrite(p)

    t = sub.add_parser("transport", help="port one task vector to the target base")
    t.add_argument("--source-base", required=True, metavar="DIR")
    t.add_argument("--target-base", required=True, metavar="DIR")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--task-vector", metavar="PATH", help="delta .safetensors or PEFT LoRA adapter directory")
    src.add_argument("--source-tuned", metavar="DIR", help="fine-tuned source model; its delta is computed")
    _add_calibration(t)
    t.add_argument("--alignment", metavar="FILE", help="reuse the maps written by prepare")
    t.add_argument("--method", required=True, choices=every, help=_method_help(every))
    _add_map_options(t)
    _add_method_options(t, every)
    t.add_argument("--allow-partial", action="store_true", help="write a result even if some parameters are left out")
    t.add_argument("--out", required=True, metavar="PATH")
    t.add_argument("--report", metavar="FILE.json", help="per-parameter JSON report")
    _add_overwrite(t)

    a = sub.add_parser("apply", help="write base + alpha * task vector as a loadable model directory")
    a.add_argument("--base", required=True, metavar="DIR")
    a.add_argument("--task-vector", required=True, metavar="PATH")
    a.add_argument("--alpha", type=float, default=1.0)
    a.add_argument("--out", required=True, metavar="DIR")
    _add_overwrite(a)

    i = sub.add_parser("inspect", help="summarise a model, task vector or alignment file as JSON")
    i.add_argument("path")

    c = sub.add_parser("calibrate", help="build a calibration file from a task dataset by a recipe, as the "
                                         "workflow does")
    c.add_argument("--base", required=True, metavar="DIR", help="the base whose tokenizer or processor encodes it")
    c.add_argument("--dataset", required=True, metavar="DIR", help="task directory: train split, heldout.txt")
    c.add_argument("--task-kind", default="generation", choices=["generation", "classification",
                                                                 "image-classification", "perplexity"])
    c.add_argument("--recipe", default="", metavar="RECIPE",
                   help="task=N,text=N,probes=N,answers=yes|no,max_length=N,text_file=PATH "
                        "(default task=128,text=128,probes=128,answers=yes,max_length=128)")
    c.add_argument("--other-base", metavar="DIR", help="the pair's other base: probe ids stay in the shared vocabulary")
    c.add_argument("--out", required=True, metavar="FILE.safetensors")
    _add_overwrite(c)

    # Subcommands owned by other packages register themselves; imports stay light (no torch/mlflow).
    for provider in subcommand_providers() if providers is None else providers:
        provider.add_subcommands(sub)
    return parser


def subcommand_providers() -> list:
    """Who adds subcommands: every entry point of group ``theseus_ops.cli``, by name, then the catalog.

    Each is a module or object with ``add_subcommands(sub)`` (called with the subparsers while the
    parser is built) and ``run(args) -> int | None`` (the exit code of a command it owns, None for
    any other). The demo's ``evaluate`` and ``bench`` come this way (pyproject.toml); the library
    never imports it. The catalog is part of the library and is imported directly.
    """
    from theseus_ops.catalog import cli as catalog_cli

    found = sorted(metadata.entry_points(group=CLI_GROUP), key=lambda ep: ep.name)
    providers = []
    for ep in {ep.name: ep for ep in found}.values():  # one per name, as the first distribution on the path says
        try:
            providers.append(ep.load())
        except Exception as exc:  # an installed plugin that does not import: the rest of the CLI still works
            print(f"theseus-ops: warning: subcommands {ep.name} ({ep.value}) not loaded: "
                  f"{type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
    return [*providers, catalog_cli]


def _calibration(args: argparse.Namespace):
    from theseus_ops.config import CalibrationSpec

    return CalibrationSpec(args.calibration, args.source_calibration, args.target_calibration)


def _run(args: argparse.Namespace, providers: list) -> int:
    for owner in providers:
        handled = owner.run(args)
        if handled is not None:
            return handled
    from theseus_ops import api
    from theseus_ops.config import PrepareConfig, TransportConfig

    if args.command == "prepare":
        cfg = PrepareConfig(source_base=args.source_base, target_base=args.target_base,
                            calibration=_calibration(args), method=args.method, method_config=_method_config(args),
                            stream=args.stream, **_map_settings(args))
        alignment = api.prepare(cfg, args.out, overwrite=args.overwrite)
        worst = max((q["residual"] for q in alignment.quality.values()), default=float("nan"))
        if not args.quiet:
            print(f"{args.out}: {len(alignment.maps)} spaces, worst residual {worst:.3g}", file=sys.stderr)
    elif args.command == "transport":
        cfg = TransportConfig(source_base=args.source_base, target_base=args.target_base, method=args.method,
                              task_vector=args.task_vector, source_tuned=args.source_tuned,
                              calibration=_calibration(args), alignment=args.alignment,
                              allow_partial=args.allow_partial, method_config=_method_config(args),
                              **_map_settings(args))
        report = api.transport(cfg, args.out, args.report, overwrite=args.overwrite)
        s = report["summary"]
        if not args.quiet:
            print(f"{args.out}: {s['transported']}/{s['total']} parameters transported with {args.method}",
                  file=sys.stderr)
    elif args.command == "apply":
        api.apply_task_vector(args.base, args.task_vector, args.alpha, args.out, overwrite=args.overwrite)
    elif args.command == "inspect":
        print(json.dumps(api.inspect_path(args.path), indent=2, default=str))
    elif args.command == "calibrate":
        from theseus_ops.evaluation.calibration import write_calibration
        from theseus_ops.evaluation.recipe import CalibrationRecipe

        built = write_calibration(args.base, args.dataset, args.out, CalibrationRecipe.parse(args.recipe),
                                  task_kind=args.task_kind, other_base=args.other_base, overwrite=args.overwrite)
        if not args.quiet:
            rows = ", ".join(f"{k.removesuffix('_rows')} {v}" for k, v in built.used.items())
            print(f"{args.out}: {sum(built.used.values())} rows ({rows})", file=sys.stderr)
    return 0


def _quiet_libraries() -> None:
    """``-q``: no progress bars or load reports from the libraries either (set before they are imported)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # its run links
    warnings.simplefilter("ignore")
    for name in ("transformers", "mlflow", "huggingface_hub", "alembic", "urllib3", "botocore"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # already imported: its own switches
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _edge_errors() -> tuple[type[BaseException], ...]:
    """Errors of the outside world (files, services, foreign file formats), not of this program.

    Only libraries already imported are consulted, so the guard itself imports nothing heavy.
    """
    found: list[type[BaseException]] = [OSError, ValueError, EOFError]
    names = {"mlflow.exceptions": ("MlflowException",),
             "botocore.exceptions": ("BotoCoreError", "ClientError"),
             "boto3.exceptions": ("Boto3Error",),
             "safetensors": ("SafetensorError",),
             "requests.exceptions": ("RequestException",),
             "urllib3.exceptions": ("HTTPError",),
             "sqlalchemy.exc": ("SQLAlchemyError",)}
    for module, classes in names.items():
        if module in sys.modules:
            found += [c for c in (getattr(sys.modules[module], n, None) for n in classes)
                      if isinstance(c, type) and issubclass(c, BaseException)]
    return tuple(found)


# the inputs at the edges: named in a last-resort error line, since the library's message may not
_EDGE_INPUTS = ("tracking_uri", "registry_uri", "landing_url", "endpoint_url")


def _edge_message(args: argparse.Namespace, exc: BaseException) -> str:
    """One line: the command, the input it was working on (where the error names it), the type."""
    text = " ".join(str(exc).split()) or repr(exc)
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    command = " ".join(c for c in (getattr(args, "command", None), getattr(args, "catalog_command", None)) if c)
    given = [f"--{name.replace('_', '-')} {value}" for name in _EDGE_INPUTS
             if isinstance(value := getattr(args, name, None), str) and value]
    if given:
        command += f" ({', '.join(given)})"
    if len(text) > 400:
        text = text[:400] + "..."
    return f"{PREFIX} {command}: {type(exc).__name__}: {text}"


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so every atomic write cleans up as for Ctrl-C."""


# Signals received during this run. A signal's exception, raised wherever Python code happens to
# run, can surface converted by a library (torch turns it into "ValueError: could not determine the
# shape ..." when it lands inside tensor construction): any error after a signal is the signal's.
_SIGNALS_RECEIVED: list[int] = []


def _on_signal(signum, frame) -> None:
    _SIGNALS_RECEIVED.append(signum)
    raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _run_signal_aware(args: argparse.Namespace, providers: list) -> int:
    """``_run``, with an error that a signal's exception was turned into reported as that signal."""
    try:
        return _run(args, providers)
    except Exception:
        if _SIGNALS_RECEIVED:
            raise (_Terminated() if _SIGNALS_RECEIVED[0] == signal.SIGTERM else KeyboardInterrupt()) from None
        raise


def main(argv: list[str] | None = None) -> int:
    providers = subcommand_providers()
    parser = build_parser(providers)
    args = parser.parse_args(argv)
    if args.quiet:
        _quiet_libraries()
    # progress is theseus-ops' own (INFO); libraries speak only when something is wrong (WARNING)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="theseus-ops: %(message)s")
    logging.getLogger("theseus_ops").setLevel(logging.WARNING if args.quiet else logging.INFO)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="transformers")
    previous: dict[int, object] = {}
    _SIGNALS_RECEIVED.clear()
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _on_signal)
    try:
        return _run_signal_aware(args, providers)
    except TheseusError as exc:
        print(f"{PREFIX} {exc}", file=sys.stderr)
        return exc.exit_code
    except _Terminated:
        print("theseus-ops: terminated (SIGTERM); outputs are published whole or not at all, none was left "
              "half-written", file=sys.stderr)
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        print("theseus-ops: interrupted; outputs are published whole or not at all, none was left half-written",
              file=sys.stderr)
        return EXIT_SIGINT
    except Exception as exc:
        if not isinstance(exc, _edge_errors()):
            raise
        print(_edge_message(args, exc), file=sys.stderr)
        return EXIT_INPUT
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())

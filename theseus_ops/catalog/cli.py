"""``theseus-ops catalog ...``: seed and inspect the catalog by hand.

    theseus-ops catalog list [--role base|task_vector|transported_model] [--name N] [--task T] [--landed]
    theseus-ops catalog show NAME VERSION|@ALIAS
    theseus-ops catalog register-base --family F --release R (--model-dir DIR | --from-landing)   (F: the base line)
    theseus-ops catalog register-task-vector --name N --path P --task T --base-model F
                                             (--base-version V | --base-release R) --dataset URI --metric M
    theseus-ops catalog land --family F --release R --model-dir DIR

Results go to stdout as JSON. Wire-up in ``theseus_ops/cli.py`` (``subcommand_providers``, the
catalog directly, as part of the library): ``add_subcommands(sub)`` in ``build_parser`` and
``run(args)`` (None when the command is not ``catalog``) in ``_run``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys

from theseus_ops.catalog.schema import PREFIX, ROLE, ROLES, TaskVectorTags, evaluation_tags
from theseus_ops.errors import InputError
from theseus_ops.evaluation.config import TASK_KINDS
from theseus_ops.service_errors import CatalogError

log = logging.getLogger("theseus_ops")


def _add_landing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--landing-url", metavar="URL", help="s3://bucket/prefix or a directory "
                   "(default: $THESEUS_LANDING_URL, else .theseus/landing)")
    p.add_argument("--endpoint-url", metavar="URL", help="S3-compatible endpoint (default: $THESEUS_S3_ENDPOINT_URL, "
                   "else $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL, else AWS)")


def add_subcommands(subparsers) -> argparse.ArgumentParser:
    """Add ``catalog`` with its own subcommands to the main parser's subparsers."""
    c = subparsers.add_parser("catalog", help="inspect or seed the MLflow task-vector catalog and the landing zone")
    c.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: $THESEUS_MLFLOW_TRACKING_URI, "
                   "else $MLFLOW_TRACKING_URI)")
    c.add_argument("--registry-uri", metavar="URI", help="MLflow registry URI (default: the tracking URI)")
    sub = c.add_subparsers(dest="catalog_command", required=True)

    p = sub.add_parser("list", help="registry versions written by theseus-ops, as JSON")
    p.add_argument("--role", choices=ROLES)
    p.add_argument("--name", help="only this registered model")
    p.add_argument("--task", help="only entries for this task")
    p.add_argument("--landed", action="store_true", help="list releases landed in the zone and not yet registered")
    _add_landing(p)

    p = sub.add_parser("show", help="one version's tags, aliases and source")
    p.add_argument("name")
    p.add_argument("version", help="a version number or @alias")

    p = sub.add_parser("register-base", help="register a base release (a Hugging Face model directory)")
    p.add_argument("--family", "--base-line", dest="base_line", required=True,
                   help="the base line: the registered model whose versions are the base releases")
    p.add_argument("--release", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", metavar="DIR")
    src.add_argument("--from-landing", action="store_true", help="download <base line>/<release> from the landing "
                     "zone, verify its checksums, and register it")
    _add_landing(p)

    p = sub.add_parser("register-task-vector", help="register a task vector for a registered base version")
    p.add_argument("--name", required=True, help="registered model name for the task vector")
    p.add_argument("--path", required=True, help="delta .safetensors file or PEFT LoRA adapter directory")
    p.add_argument("--task", required=True)
    p.add_argument("--base-model", required=True, help="the base's registered model (its base line)")
    base = p.add_mutually_exclusive_group(required=True)
    base.add_argument("--base-version", help="registry version number of the base")
    base.add_argument("--base-release", help="release name of the base (resolved to its version)")
    p.add_argument("--dataset", required=True, metavar="URI", help="task data with its splits, "
                   "e.g. s3://data/sst2?splits=train,validation,test")
    p.add_argument("--metric", required=True, help="the task metric's name, e.g. accuracy")
    p.add_argument("--format", choices=["full", "lora"], help="checked against the file (default: detected)")
    p.add_argument("--task-kind", choices=list(TASK_KINDS), help="how the task is scored (default generation; "
                   "see docs/evaluation.md)")
    p.add_argument("--evaluator", metavar="MODULE:FUNCTION|ENTRY_POINT", help="user evaluator of a custom task")
    p.add_argument("--chat-template", action="store_true", default=None,
                   help="wrap generation prompts in the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="generation budget (default: the answer's length)")
    p.add_argument("--general-dataset", metavar="URI", help="a second, untouched task of the same kind: its "
                   "accuracy is the general-capability measure of classifiers")

    p = sub.add_parser("land", help="upload a base release into the landing zone (manifest last)")
    p.add_argument("--family", "--base-line", dest="base_line", required=True, help="the base line (registered model)")
    p.add_argument("--release", required=True)
    p.add_argument("--model-dir", required=True, metavar="DIR")
    _add_landing(p)
    return c


def _catalog(args, read_only: bool = False):
    """The configured catalog; a read-only command refuses to create a local store (see ``Catalog``)."""
    from theseus_ops.catalog.client import Catalog
    from theseus_ops.catalog.config import CatalogConfig

    return Catalog(CatalogConfig.from_env(tracking_uri=args.tracking_uri, registry_uri=args.registry_uri),
                   read_only=read_only)


def _zone(args):
    from theseus_ops.storage.zones import StorageConfig, open_zone

    return open_zone(StorageConfig.from_env(url=args.landing_url, endpoint_url=args.endpoint_url))


def describe(mv) -> dict:
    tags = dict(mv.tags or {})
    return {"name": mv.name, "version": str(mv.version), "role": tags.get(ROLE), "aliases": list(mv.aliases or []),
            "source": mv.source, "run_id": mv.run_id, "status": mv.status,
            "tags": {k: v for k, v in sorted(tags.items()) if k.startswith(PREFIX)}}


def run(args: argparse.Namespace) -> int | None:
    """Run a ``catalog`` command; None when ``args`` belong to another command."""
    if getattr(args, "command", None) != "catalog":
        return None
    # MLflow prints run URLs to stdout; stdout is reserved for this command's JSON
    with contextlib.redirect_stdout(sys.stderr):
        result = _execute(args)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _execute(args: argparse.Namespace):
    from theseus_ops.catalog import register

    cmd = args.catalog_command
    if cmd == "land":
        from theseus_ops.storage.releases import land_release

        landed = land_release(args.model_dir, args.base_line, args.release, _zone(args),
                              progress=lambda rel: log.info("uploaded %s", rel))
        return landed.as_dict()
    catalog = _catalog(args, read_only=cmd in ("list", "show"))
    if cmd == "list":
        if args.landed:
            from theseus_ops.storage.releases import scan_landed_releases

            return [r.as_dict() for r in scan_landed_releases(_zone(args), catalog)]
        tags = {}
        if args.role:
            tags[ROLE] = args.role
        if args.task:
            tags[TaskVectorTags.tag("task")] = args.task
        versions = catalog.search_versions(args.name, tags)
        return [describe(v) for v in versions if (v.tags or {}).get(ROLE) in ROLES]
    if cmd == "show":
        return describe(catalog.resolve(args.name, args.version))
    if cmd == "register-base":
        if args.from_landing:
            from theseus_ops.storage.releases import read_landed

            zone = _zone(args)
            landed = read_landed(zone, args.base_line, args.release)
            if landed is None:
                raise InputError(f"{zone.url}/{args.base_line}/{args.release} has not landed (no manifest)")
            reg = register.register_landed_release(catalog, zone, landed)
        else:
            reg = register.register_base(catalog, args.base_line, args.release, args.model_dir)
        return {"created": reg.created, **describe(reg.version)}
    if cmd == "register-task-vector":
        version = args.base_version
        if args.base_release:
            found = register.find_base_release(catalog, args.base_model, args.base_release)
            if found is None:
                raise CatalogError(f"release {args.base_release} of {args.base_model} is not in the registry")
            version = str(found.version)
        reg = register.register_task_vector(
            catalog, args.name, args.path, task=args.task, base_model=args.base_model, base_version=version,
            dataset=args.dataset, metric=args.metric, fmt=args.format,
            evaluation=evaluation_tags(args.task_kind, args.evaluator, args.chat_template, args.max_new_tokens,
                                       args.general_dataset))
        return {"created": reg.created, **describe(reg.version)}
    raise AssertionError(cmd)  # pragma: no cover - argparse restricts the choices

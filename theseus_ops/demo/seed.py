"""Seed a workflow demo: land v1, catalog its task vectors, land the next release.

What ``make demo`` does before the watcher runs, and what the workflow tests do on the micro
family. Every step is idempotent (landing and registration are keyed by content), so a second
call changes nothing. Task directories are copied next to the state, with the family's held-out
text, and cataloged as ``file://`` datasets.

    python -m theseus_ops.demo.seed --scale tiny --family theseus-tiny --target v2-wide-shuffled
    python -m theseus_ops.demo.seed --report --family theseus-tiny   # after the DAGs ran
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from theseus_ops.catalog import Catalog, find_base_release, register_task_vector
from theseus_ops.demo.family import RELEASES, TARGETS, build_family, family_config
from theseus_ops.errors import InputError, TheseusError
from theseus_ops.io.atomic import build_directory_once
from theseus_ops.storage import land_release, open_zone
from theseus_ops.workflow import BASE_LINE_KEY, PROCESSED_TAG, WorkflowConfig, register_landed_releases
from theseus_ops.workflow.reconcile import base_versions
from theseus_ops.workflow.summary import aligned, is_failure, read_summary, round_numbers, table

log = logging.getLogger("theseus_ops.demo")


def _dataset_dir(family, skill: str, root: Path) -> Path:
    """A stable copy of the task's splits plus held-out text (what the task vector's catalog entry points at)."""
    dest = root / skill
    if not (dest / "heldout.txt").is_file():
        def copy_into(tmp: Path) -> None:
            shutil.copytree(family.task(skill), tmp, dirs_exist_ok=True)
            shutil.copy(family.heldout, tmp / "heldout.txt")

        root.mkdir(parents=True, exist_ok=True)
        build_directory_once(dest, root / f".{skill}.tmp-{os.getpid()}", copy_into)
    return dest


def seed_demo(cfg: WorkflowConfig, scale: str, base_line: str, target: str, families_root: Path,
              datasets_root: Path, skills: list[str] | None = None, progress=None) -> dict:
    """Land ``v1``, register it and its task vectors, then land ``target`` (left for the watcher)."""
    if target not in TARGETS:
        raise InputError(f"unknown demo target release {target!r}; choose from {', '.join(TARGETS)}")
    progress = progress or log.info
    family = build_family(family_config(scale), families_root, progress=progress)
    zone = open_zone(cfg.storage)
    catalog = Catalog(cfg.catalog)
    source = RELEASES[0]
    land_release(family.model(source), base_line, source, zone)
    register_landed_releases(cfg)
    v1 = find_base_release(catalog, base_line, source)
    vectors = {}
    for skill in skills or list(family.config.skills):
        data = _dataset_dir(family, skill, datasets_root)
        reg = register_task_vector(catalog, f"{base_line}-{skill}", family.task_vector(skill), task=skill,
                                   base_model=base_line, base_version=str(v1.version),
                                   dataset=data.resolve().as_uri(), metric="exact_match")
        vectors[skill] = str(reg.ref)
    land_release(family.model(target), base_line, target, zone)
    progress(f"seeded {base_line}: {source} = version {v1.version} with {len(vectors)} task vectors; "
             f"{target} landed for the watcher")
    return {BASE_LINE_KEY: base_line, "source_version": str(v1.version), "vectors": vectors, "landed": target}


def report(cfg: WorkflowConfig, base_line: str) -> str:
    """The newest processed release of the base line: its summary table and what consumers can load."""
    catalog = Catalog(cfg.catalog)
    runs = [v.tags[PROCESSED_TAG] for v in base_versions(catalog, base_line) if (v.tags or {}).get(PROCESSED_TAG)]
    if not runs:
        raise InputError(f"{base_line} has no processed release yet: run the watcher and the transport DAG")
    run_id = runs[-1]
    summary = read_summary(cfg, run_id)
    head, rows, failed = table(summary.get("methods") or [], summary["outcomes"])
    lines = [f"{summary.get('target_base')} (release {summary.get('release')}) from {summary.get('source_base')}",
             "", aligned(head, rows)]
    if failed:
        lines += ["", "Failed task vectors:"] + [f"  {vector}: {error}" for vector, error in failed]
    lines += ["", "Transported models registered (load by alias):"]
    models = []
    for o in summary["outcomes"]:
        reg = o.get("registered") or {}
        if is_failure(o) or not reg.get("model"):
            continue
        name = reg["model"].rsplit("/", 1)[0]
        models.append([f"models:/{name}@candidate" if reg["candidate"] else reg["model"],
                       f"version {reg['model']}" if reg["candidate"] else "no alias",
                       round_numbers(f"gate {reg['gate']}")])
    if models:
        lines += ["  " + line for line in aligned(["load", "status", "gate"], models).splitlines()]
    else:
        lines.append("  none: the untouched target base was best on val for every task")
    lines.append(f"Summary run: {run_id} (summary.md, summary.json, alpha-sweeps.png)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m theseus_ops.demo.seed", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="tiny", choices=["micro", "tiny", "small"])
    parser.add_argument("--family", default="theseus-tiny",
                        help="the base line: registered model name of the demo family's releases")
    parser.add_argument("--target", default="v2-wide-shuffled", help="the release landed for the watcher")
    parser.add_argument("--families-root", default=".theseus/families")
    parser.add_argument("--datasets-root", default=".theseus/datasets")
    parser.add_argument("--report", action="store_true", help="print the newest release summary instead of seeding")
    args = parser.parse_args(argv)

    def command() -> int | dict:
        if args.report:
            print(report(WorkflowConfig.from_env(), args.family))
            return 0
        return seed_demo(WorkflowConfig.from_env(), args.scale, args.family, args.target, Path(args.families_root),
                         Path(args.datasets_root))

    return run_seed_command(command)


def run_seed_command(command: Callable[[], int | dict | list]) -> int:
    """A seeding command's shell: progress lines to stderr (the demo keeps them as seed.log), its result as
    JSON on stdout (or its exit code, when it printed what it had to say), and an error as one line."""
    ours = logging.getLogger("theseus_ops")
    if not ours.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("theseus-ops: %(asctime)s %(message)s", "%H:%M:%S"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
    try:
        out = command()
    except TheseusError as exc:
        print(f"theseus-ops: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return exc.exit_code
    if isinstance(out, int):
        return out
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

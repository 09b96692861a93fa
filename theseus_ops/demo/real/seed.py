"""Seed the workflow on the real fixtures: what ``make demo-real`` does before the watcher runs.

For each base line (SmolLM2-135M-Instruct and all-MiniLM-L6-v2 under a topic head, registered as
``<prefix>smollm2`` and ``<prefix>minilm``): land ``v1``, register it, catalog its full fine-tune's
delta and its PEFT LoRA as task vectors of the right kind, then land ``target`` (default
``v2-wide``, the function-preserving widening) for the watcher. Idempotent like
:mod:`theseus_ops.demo.seed`: landing and registration are keyed by content.

Each task's splits are copied next to the state and cataloged as ``file://`` datasets:

- SmolLM2, ``generation`` (exact match, chat template, 4 new tokens): BBC headline -> topic word,
  with ``heldout.txt`` (BBC bodies no split uses) for the held-out LM loss the gate limits.
- MiniLM, ``classification`` (accuracy): headline + body opening -> topic; its general capability
  is the accuracy on headline-only rows of articles the classifier never saw (the generation
  task's articles, disjoint from its own), the gate limiting its error rate.

``--rows N`` keeps the first N rows of val and test (train, which calibrates, is kept whole).

    python -m theseus_ops.demo.real.seed --fixtures-root .theseus/real --datasets-root .theseus/real-demo/datasets
    python -m theseus_ops.demo.real.seed --report        # after the DAGs ran: every base line's summary
    python -m theseus_ops.demo.real.seed --consume       # load each candidate by alias, print one prediction
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from theseus_ops.catalog import Catalog, find_base_release, register_task_vector
from theseus_ops.catalog.schema import evaluation_tags
from theseus_ops.demo.real.build import (
    CLASSIFICATION_TASK,
    GENERATION_TASK,
    RELEASES,
    RealFixtures,
    build_real,
    write_jsonl,
)
from theseus_ops.demo.seed import report, run_seed_command
from theseus_ops.errors import InputError
from theseus_ops.io.atomic import build_directory_once
from theseus_ops.storage import land_release, open_zone
from theseus_ops.workflow import BASE_LINE_KEY, WorkflowConfig, register_landed_releases

log = logging.getLogger("theseus_ops.demo")
DEFAULT_PREFIX = "real-"
MODELS = ("smollm2", "minilm")
GENERAL_TASK = "bbc-headline-topic"  # MiniLM's general capability: headline-only rows, unseen articles
SPLITS = ("train", "val", "test")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _copied(dest: Path, fill) -> Path:
    """``dest``, written once by ``fill(tmp)`` (complete or absent, as the workflow reads it)."""
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        build_directory_once(dest, dest.parent / f".{dest.name}.tmp-{os.getpid()}", fill)
    return dest


def _trim(rows: list[dict], split: str, limit: int | None) -> list[dict]:
    return rows if limit is None or split == "train" else rows[:limit]


def dataset_dirs(fx: RealFixtures, root: Path, rows: int | None = None) -> dict[str, Path]:
    """The task directories the catalog points at: {task name: directory}, each built once.

    The directory name carries ``rows``, so another limit is another dataset (never a silent change).
    """
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise InputError(f"--rows must be a positive integer, got {rows!r}")
    tag = "" if rows is None else f"-{rows}"

    def splits_of(task: str, heldout: bool):
        def fill(tmp: Path) -> None:
            tmp.mkdir(parents=True, exist_ok=True)
            for split in SPLITS:
                write_jsonl(tmp / f"{split}.jsonl", _trim(_read_jsonl(fx.task(task) / f"{split}.jsonl"), split, rows))
            shutil.copy(fx.task(task) / "task.json", tmp / "task.json")
            if heldout:
                shutil.copy(fx.heldout, tmp / "heldout.txt")
        return fill

    def general(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            gen = _read_jsonl(fx.task(GENERATION_TASK) / f"{split}.jsonl")
            cls = [{"text": r["prompt"].rsplit("Headline: ", 1)[1], "label": r["answer"]} for r in gen]
            write_jsonl(tmp / f"{split}.jsonl", _trim(cls, split, rows))

    return {GENERATION_TASK: _copied(root / f"{GENERATION_TASK}{tag}", splits_of(GENERATION_TASK, True)),
            CLASSIFICATION_TASK: _copied(root / f"{CLASSIFICATION_TASK}{tag}", splits_of(CLASSIFICATION_TASK, False)),
            GENERAL_TASK: _copied(root / f"{GENERAL_TASK}{tag}", general)}


def vector_specs(fx: RealFixtures, data: dict[str, Path], model: str) -> list[dict]:
    """The two task vectors of ``model``'s v1: keyword arguments of :func:`register_task_vector` (less the base)."""
    if model == "smollm2":
        task, metric = GENERATION_TASK, "exact_match"
        scoring = evaluation_tags(task_kind="generation", chat_template=True, max_new_tokens=4)
    elif model == "minilm":
        task, metric = CLASSIFICATION_TASK, "accuracy"
        scoring = evaluation_tags(task_kind="classification", general_dataset=data[GENERAL_TASK].resolve().as_uri())
    else:
        raise InputError(f"unknown real model {model!r}; choose from {', '.join(MODELS)}")
    common = {"task": task, "dataset": data[task].resolve().as_uri(), "metric": metric, "evaluation": scoring}
    return [{"suffix": "topic", "path": fx.task_vector(model), **common},
            {"suffix": "topic-lora", "path": fx.lora(model), **common}]


def seed_real(cfg: WorkflowConfig, fx: RealFixtures, datasets_root: Path, *, prefix: str = DEFAULT_PREFIX,
              target: str = "v2-wide", models: tuple[str, ...] = MODELS, rows: int | None = None,
              progress=None) -> list[dict]:
    """Land and register ``v1`` of each model, catalog its two task vectors, land ``target``; one dict per line."""
    if target not in RELEASES[1:]:
        raise InputError(f"unknown target release {target!r}; choose from {', '.join(RELEASES[1:])}")
    progress = progress or log.info
    zone = open_zone(cfg.storage)
    catalog = Catalog(cfg.catalog)
    data = dataset_dirs(fx, datasets_root, rows)
    lines = {model: f"{prefix}{model}" for model in models}
    for model, base_line in lines.items():  # every v1 first: registering lands none of the targets
        land_release(fx.model(model), base_line, RELEASES[0], zone)
    register_landed_releases(cfg)
    out = []
    for model, base_line in lines.items():
        v1 = find_base_release(catalog, base_line, RELEASES[0])
        vectors = {}
        for spec in vector_specs(fx, data, model):
            spec = dict(spec)
            name = f"{base_line}-{spec.pop('suffix')}"
            reg = register_task_vector(catalog, name, spec.pop("path"), base_model=base_line,
                                       base_version=str(v1.version), **spec)
            vectors[name] = str(reg.ref)
        out.append({BASE_LINE_KEY: base_line, "source_version": str(v1.version), "vectors": vectors,
                    "landed": target})
    for (model, base_line), seeded in zip(lines.items(), out, strict=True):  # for the watcher to register
        land_release(fx.model(model, target), base_line, target, zone)
        progress(f"seeded {base_line}: {RELEASES[0]} = version {seeded['source_version']} with "
                 f"{len(seeded['vectors'])} task vectors; {target} landed for the watcher")
    return out


# the consumer: a fresh process that loads each candidate by its alias and asks it one question
PROBE_ROWS = {"smollm2": GENERATION_TASK, "minilm": CLASSIFICATION_TASK}


def consume(uris: dict[str, str], data: dict[str, Path]) -> list[dict]:
    """{model URI: real model} -> one prediction each on the first test row, through ``load_registered``."""
    from theseus_ops.catalog import load_registered

    out = []
    for uri, model in uris.items():
        row = _read_jsonl(data[PROBE_ROWS[model]] / "test.jsonl")[0]
        pipe = load_registered(uri)
        if model == "smollm2":
            chat = [{"role": "user", "content": row["prompt"]}]
            got = pipe(chat, max_new_tokens=4, do_sample=False)[0]["generated_text"][-1]["content"]
            question, expected = row["prompt"].rsplit("Headline: ", 1)[1], row["answer"]
        else:
            got = pipe(row["text"])[0]["label"]
            question, expected = row["text"].splitlines()[0], row["label"]
        out.append({"uri": uri, "pipeline": pipe.task, "model": type(pipe.model).__name__, "input": question,
                    "prediction": got.strip(), "expected": expected})
    return out


def candidate_uris(cfg: WorkflowConfig, prefix: str, models: tuple[str, ...]) -> dict[str, str]:
    """``models:/<vector><suffix>@candidate`` of every real vector whose serving model holds the alias."""
    from theseus_ops.catalog import ALIAS_CANDIDATE

    catalog = Catalog(cfg.catalog, read_only=True)
    uris = {}
    for model in models:
        for suffix in ("topic", "topic-lora"):
            name = f"{prefix}{model}-{suffix}{cfg.serving_suffix}"
            if catalog.get_alias(name, ALIAS_CANDIDATE) is None:
                continue
            uris[f"models:/{name}@{ALIAS_CANDIDATE}"] = model
    return uris


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m theseus_ops.demo.real.seed", description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures-root", type=Path, default=Path(".theseus/real"),
                        help="the real fixtures' cache root (built there once if absent)")
    parser.add_argument("--datasets-root", type=Path, default=Path(".theseus/real-demo/datasets"))
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="prefix of the registered base-line names")
    parser.add_argument("--target", default="v2-wide", choices=RELEASES[1:], help="the release landed for the watcher")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of smollm2,minilm")
    parser.add_argument("--rows", type=int, default=None, help="keep the first N rows of val and test")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--report", action="store_true", help="print every base line's newest release summary")
    mode.add_argument("--consume", action="store_true", help="load each candidate by alias, print one prediction")
    args = parser.parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)

    def command() -> int | list:
        unknown = sorted(set(models) - set(MODELS))
        if unknown or not models:
            raise InputError(f"unknown real model(s) {unknown}; choose from {', '.join(MODELS)}")
        cfg = WorkflowConfig.from_env()
        if args.report:
            print("\n\n".join(report(cfg, f"{args.prefix}{m}") for m in models))
            return 0
        fx = build_real(root=args.fixtures_root, progress=lambda m: print(m, file=sys.stderr))
        data = dataset_dirs(fx, args.datasets_root, args.rows)
        if args.consume:
            uris = candidate_uris(cfg, args.prefix, models)
            if not uris:
                raise InputError("no real model holds the candidate alias yet: run the watcher and the transport DAG")
            for p in consume(uris, data):
                print(f"{p['uri']}  ({p['pipeline']}, {p['model']})\n  {p['input']!r} -> {p['prediction']!r} "
                      f"(expected {p['expected']!r})")
            return 0
        return seed_real(cfg, fx, args.datasets_root, prefix=args.prefix, target=args.target, models=models,
                         rows=args.rows)

    return run_seed_command(command)


if __name__ == "__main__":
    raise SystemExit(main())

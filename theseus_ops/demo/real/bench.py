"""``bench quality --family real``: every transport method on the real fixtures, scored as the workflow scores.

For each real model (SmolLM2-135M-Instruct on the BBC headline-topic generation task, all-MiniLM-L6-v2
with a classification head on BBC topics), each of its task vectors (the full fine-tune and the PEFT
LoRA), each function-preserving new release (``v2-perm``, ``v2-wide``) and each method:

- the calibration set is built by the workflow's recipe (``evaluation.calibration``), from the task's
  train rows, its held-out text and probe ids;
- α is chosen on val, the test metric is reported at that α, and the selected method is the one
  best on val, the untouched target included (``evaluation.sweep_and_select``); nothing is chosen
  on test;
- the share of the source fine-tune's gain recovered is (target + α·τ' − target) / (v1 + τ − v1)
  on test, since a function-preserving release has the source's own fine-tune as its upper bound;
- the general-capability change is the candidate's minus the untouched target's (held-out LM loss
  for SmolLM2, lower is better; for MiniLM the accuracy on the untouched headline task);
- the exact oracle: the relative error of v2 + τ' against v1 + τ on held-out inputs (``oracle``),
  at α = 1, beside the untouched target's;
- wall time and the process's peak resident memory during each transport.

Run: ``theseus-ops bench quality --family real --out DIR [--limit N] [--methods ...]``. Results go to
``DIR/results.json`` and ``DIR/table.md``.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import save_file

from theseus_ops.demo.real.build import CLASSIFICATION_TASK, GENERATION_TASK, MODELS, RELEASES, build_real
from theseus_ops.demo.real.oracle import oracle
from theseus_ops.demo.real.seed import GENERAL_TASK, dataset_dirs
from theseus_ops.errors import InputError, TheseusError
from theseus_ops.evaluation import Candidate, NotApplicable, TaskConfig
from theseus_ops.evaluation.recipe import CalibrationRecipe
from theseus_ops.transport.methods import get_method, method_names
from theseus_ops.transport.tolerances import DEFAULT_FILL, FILLS

log = logging.getLogger("theseus_ops")
VECTORS = ("full", "lora")
TARGETS = RELEASES[1:]
DEFAULT_ALPHAS = (0.0, 0.5, 1.0, 1.5, 2.0)
DEFAULT_ROWS = 48
Progress = Callable[[str], None]


def _default_methods() -> tuple[str, ...]:
    return tuple(m for m in method_names() if get_method(m).capabilities.in_default_workflow)


def _subset(values: tuple[str, ...], allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown or not values:
        raise InputError(f"bench real: unknown {what} {unknown or '(none given)'}; choose from {', '.join(allowed)}")


@dataclass(frozen=True)
class RealBenchConfig:
    """What one real-model quality run covers; every field checked when it is built."""

    models: tuple[str, ...] = MODELS
    vectors: tuple[str, ...] = VECTORS
    targets: tuple[str, ...] = TARGETS
    methods: tuple[str, ...] = field(default_factory=_default_methods)
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    # val and test rows scored per task (train is kept whole: the calibration recipe draws on it)
    rows: int | None = DEFAULT_ROWS
    calibration: CalibrationRecipe = field(default_factory=CalibrationRecipe)
    fill: str = DEFAULT_FILL
    oracle_rows: int = 8
    # the fixtures' cache root (None: .theseus/real)
    cache: str | None = None

    def __post_init__(self) -> None:
        _subset(self.models, MODELS, "model(s)")
        _subset(self.vectors, VECTORS, "task vector kind(s)")
        _subset(self.targets, TARGETS, "target release(s)")
        _subset(self.methods, tuple(method_names()), "method(s)")
        if not self.alphas:
            raise InputError("bench real: the α grid is empty")
        if self.rows is not None and (isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1):
            raise InputError(f"bench real: --limit must be a positive integer, got {self.rows!r}")
        if self.fill not in FILLS:
            raise InputError(f"bench real: unknown fill {self.fill!r}; choose from {', '.join(FILLS)}")
        if isinstance(self.oracle_rows, bool) or not isinstance(self.oracle_rows, int) or self.oracle_rows < 1:
            raise InputError(f"bench real: oracle_rows must be a positive integer, got {self.oracle_rows!r}")


def task_config(model: str, data: dict[str, Path]) -> TaskConfig:
    """The task each real model's fine-tunes were trained on, scored as ``make demo-real`` catalogs it."""
    if model == "smollm2":
        directory = data[GENERATION_TASK]
        return TaskConfig(task_kind="generation", metric="exact_match", dataset=directory,
                          heldout=directory / "heldout.txt", chat_template=True, max_new_tokens=4)
    return TaskConfig(task_kind="classification", metric="accuracy", dataset=data[CLASSIFICATION_TASK],
                      general_task=data[GENERAL_TASK])


class PeakMemory:
    """The process's peak resident memory over one step: Linux resets its high-water mark on request
    (``/proc/self/clear_refs``); elsewhere the lifetime peak is all there is, and is marked as such."""

    def __init__(self) -> None:
        self.resettable = True

    def reset(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.resettable = False

    def peak_mib(self) -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        self.resettable = False
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _share(value: float, base: float, source_base: float, source_tuned: float, higher: bool) -> float | None:
    """(value − target base) / (source fine-tune − source base) in the metric's better direction; None
    where the source fine-tune gained nothing."""
    gain = (source_tuned - source_base) if higher else (source_base - source_tuned)
    if gain <= 1e-9:
        return None
    return ((value - base) if higher else (base - value)) / gain


def _general(candidate: Candidate) -> dict | None:
    g = candidate.general
    return None if g is None else {"name": g.name, "value": g.value}


class _Cell:
    """One (model, target, task vector): its transports, timed and measured, then swept and scored."""

    def __init__(self, fx, cfg: RealBenchConfig, model: str, target: str, vector: str, calibration: Path,
                 out: Path, progress: Progress) -> None:
        self.fx, self.cfg, self.model, self.target, self.vector = fx, cfg, model, target, vector
        self.calibration, self.out, self.progress = calibration, out, progress
        self.tv = fx.task_vector(model) if vector == "full" else fx.lora(model)
        self.measured: dict[str, dict] = {}
        self.paths: dict[str, Path] = {}
        self.memory = PeakMemory()

    def delta_of(self, method: str):
        from theseus_ops import api
        from theseus_ops.config import CalibrationSpec, TransportConfig
        from theseus_ops.io.task_vectors import dense_deltas

        caps = get_method(method).capabilities
        kwargs: dict = {}
        if caps.needs_calibration:
            kwargs["calibration"] = CalibrationSpec(str(self.calibration))
        if caps.needs_calibration or caps.estimates_maps:
            kwargs["fill"] = self.cfg.fill
        dest = self.out / (method if self.tv.is_dir() else f"{method}.safetensors")
        self.out.mkdir(parents=True, exist_ok=True)
        config = TransportConfig(str(self.fx.model(self.model)), str(self.fx.model(self.model, self.target)), method,
                                 task_vector=str(self.tv), device="cpu", **kwargs)
        self.memory.reset()
        started = time.perf_counter()
        try:
            api.transport(config, dest, self.out / f"{method}.json")
        except TheseusError as exc:
            return NotApplicable(method, str(exc).splitlines()[0])
        self.measured[method] = {"transport_seconds": round(time.perf_counter() - started, 1),
                                 "peak_rss_mib": self.memory.peak_mib(),
                                 "peak_rss_scope": "transport" if self.memory.resettable else "process lifetime"}
        self.paths[method] = dest
        return dense_deltas(dest, self.fx.model(self.model, self.target))

    def oracle_of(self, method: str) -> dict[str, float]:
        return oracle(self.fx, self.model, self.target, self.tv, self.paths[method], rows=self.cfg.oracle_rows)


def _candidate_row(candidate: Candidate, primary: str, higher: bool, base: Candidate, source: dict) -> dict:
    row = {"alpha": candidate.alpha, "val": candidate.val[primary], "test": candidate.test[primary],
           "test_scores": dict(candidate.test), "general": _general(candidate),
           "recovered": _share(candidate.test[primary], base.test[primary], source["base"][primary],
                               source["tuned"][primary], higher)}
    if candidate.general is not None and base.general is not None:
        row["general_change"] = candidate.general.value - base.general.value
    return row


def _score_source(evaluator, fx, model: str, vectors: tuple[str, ...]) -> dict:
    """v1 and v1 + τ per task vector, on val and test, with their general capability."""
    from theseus_ops.evaluation import score_at
    from theseus_ops.io.task_vectors import dense_deltas

    v1 = evaluator.load(fx.model(model))
    scores, general = score_at(evaluator, v1, None, 0.0, ["val", "test"], general=True)
    out = {"base": {**scores["test"], "general": None if general is None else general.value}}
    for vector in vectors:
        tv = fx.task_vector(model) if vector == "full" else fx.lora(model)
        tuned, g = score_at(evaluator, v1, dense_deltas(tv, fx.model(model)), 1.0, ["val", "test"], general=True)
        out[vector] = {**tuned["test"], "val": tuned["val"], "general": None if g is None else g.value}
    return out


def _write_calibration(evaluator, fx, model: str, cfg: RealBenchConfig, heldout: Path | None, path: Path) -> Path:
    """The recipe's calibration file for the pair (every release shares v1's tokenizer and vocabulary)."""
    from theseus_ops.evaluation.calibration import build_calibration, shared_vocabulary

    dirs = [fx.model(model), *(fx.model(model, t) for t in cfg.targets)]
    vocab = shared_vocabulary(*dirs) if cfg.calibration.probe_rows else None
    built = build_calibration(evaluator, fx.model(model), cfg.calibration, vocab=vocab, heldout=heldout)
    if built is None:
        raise InputError(f"bench real: the {model} task gives no calibration inputs")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(built.tensors, str(path), metadata=built.metadata(cfg.calibration))
    return path


def run_real_quality(cfg: RealBenchConfig, out: str | Path, progress: Progress | None = None) -> dict:
    """Build (or reuse) the real fixtures, run every cell, write ``results.json`` and ``table.md``."""
    from theseus_ops.evaluation import evaluator_for, sweep_and_select

    say = progress or log.info
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fx = build_real(root=cfg.cache, progress=say)
    results: dict = {"fixtures": {"root": str(fx.root), "hash": fx.info.get("hash"),
                                  "build_seconds_recorded": fx.info.get("build_seconds"),
                                  "load_seconds": round(time.perf_counter() - t0, 1)},
                     "config": {"models": list(cfg.models), "vectors": list(cfg.vectors), "targets": list(cfg.targets),
                                "methods": list(cfg.methods), "alphas": list(cfg.alphas), "rows": cfg.rows,
                                "fill": cfg.fill, "calibration": cfg.calibration.as_dict(),
                                "oracle_rows": cfg.oracle_rows},
                     "source": {}, "cells": []}
    started = time.perf_counter()
    data = dataset_dirs(fx, out / "datasets", cfg.rows)
    for model in cfg.models:
        task = task_config(model, data)
        evaluator = evaluator_for(task, device="cpu", report=lambda _m: None)
        say(f"bench real: {model}: scoring v1 and its fine-tunes")
        source = _score_source(evaluator, fx, model, cfg.vectors)
        results["source"][model] = {"task": task.dataset.name.removesuffix(f"-{cfg.rows}"), "metric": task.metric,
                                    **source}
        calibration = _write_calibration(evaluator, fx, model, cfg, task.heldout, out / "calibration" /
                                         f"{model}.safetensors")
        for target in cfg.targets:
            target_model = evaluator.load(fx.model(model, target))
            base = None
            for vector in cfg.vectors:
                cell_t0 = time.perf_counter()
                cell = _Cell(fx, cfg, model, target, vector, calibration, out / "transported" / model / target /
                             vector, say)
                prefix = f"bench real: {model} {vector} → {target}"
                selection = sweep_and_select(evaluator, target_model, cfg.methods, cfg.alphas, cell.delta_of,
                                             base=base, report=lambda m, p=prefix: say(f"{p}: {m}"))
                base = selection.base  # scored once per target, shared by its task vectors
                sourced = {"base": source["base"], "tuned": source[vector]}
                row: dict = {"model": model, "task": results["source"][model]["task"], "vector": vector,
                             "target": target, "metric": selection.metric, "selected": selection.selected,
                             "methods": {"base": _candidate_row(base, selection.metric, selection.higher_is_better,
                                                                base, sourced)}}
                for method, r in selection.methods.items():
                    if isinstance(r, NotApplicable):
                        row["methods"][method] = r.as_dict()
                        continue
                    entry = _candidate_row(r, selection.metric, selection.higher_is_better, base, sourced)
                    entry.update(cell.measured[method], eval_seconds=r.eval_seconds)
                    entry["oracle"] = {k: float(f"{v:.3e}") for k, v in cell.oracle_of(method).items()}
                    row["methods"][method] = entry
                row["seconds"] = round(time.perf_counter() - cell_t0, 1)
                results["cells"].append(row)
                say(f"{prefix}: selected {selection.selected} ({row['seconds']:.0f}s)")
            del target_model
    results["seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(markdown_table(results))
    return results


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}"


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown_table(results: dict) -> str:
    """The source scores, then one row per (task vector, target, method)."""
    lines = ["# bench quality: family `real`", "",
             "Test metric % at the α chosen on val (val in brackets); ✓ = selected on val; recovered = share of "
             "the source fine-tune's test gain; general Δ = candidate − untouched target (SmolLM2: held-out LM "
             "loss, lower is better; MiniLM: accuracy on the untouched headline task); oracle = relative error "
             "of v2 + τ' against v1 + τ at α = 1 (untouched target in brackets).", "",
             "## Source (v1) and its fine-tunes, test", "", "| model | task | metric | v1 | v1 + full | v1 + LoRA |",
             "|---|---|---|---|---|---|"]
    for model, s in results["source"].items():
        metric = s["metric"]
        lines.append(f"| {model} | {s['task']} | {metric} | {_pct(s['base'][metric])} | "
                     f"{_pct(s.get('full', {}).get(metric))} | {_pct(s.get('lora', {}).get(metric))} |")
    lines += ["", "## Ports onto the new releases", "",
              "| model | vector | target | method | α | test [val] | recovered | general Δ | oracle [untouched] | "
              "transport s | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in results["cells"]:
        for method, r in cell["methods"].items():
            head = f"| {cell['model']} | {cell['vector']} | {cell['target']} | {method}"
            if "not_applicable" in r:
                lines.append(f"{head} | n/a: {r['not_applicable'][:70]} | | | | | | |")
                continue
            mark = " ✓" if method == cell["selected"] else ""
            orc = r.get("oracle")
            orc_text = f"{orc['error']:.1e} [{orc['baseline']:.1e}]" if orc else "–"
            lines.append(f"{head}{mark} | {r['alpha']:g} | {_pct(r['test'])} [{_pct(r['val'])}] | "
                         f"{_pct(r['recovered'])} | {_num(r.get('general_change'), '+.3f')} | {orc_text} | "
                         f"{_num(r.get('transport_seconds'), '.1f')} | {_num(r.get('peak_rss_mib'), '.0f')} |")
    lines += ["", f"Fixtures {results['fixtures']['hash']} (built in {results['fixtures']['build_seconds_recorded']}s "
              f"when built); this run: {results['seconds']}s.", ""]
    return "\n".join(lines)

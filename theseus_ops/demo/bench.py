"""``bench quality``: every transport method on every skill and target release, honestly.

Protocol (docs/method.md): calibrate on train; choose α per method on val over a grid; report test at
that α, beside the general capability (held-out LM loss) so forgetting shows next to the gain.
The target fine-tuned directly is the upper bound; each method's share of its gain is
(transported − base) / (fine-tuned − base). The method best on val is reported as selected.
Nothing is ever chosen on test.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import save_file

from theseus_ops.demo.family import TARGETS, Family, build_family, ensure_references, family_config
from theseus_ops.demo.skills import load_split
from theseus_ops.errors import InputError, TheseusError
from theseus_ops.evaluation import Candidate, NotApplicable, TaskConfig, score_at, sweep_and_select
from theseus_ops.evaluation.calibration import build_calibration, shared_vocabulary
from theseus_ops.evaluation.generation import GenerationEvaluator
from theseus_ops.evaluation.recipe import CalibrationRecipe
from theseus_ops.io.task_vectors import dense_deltas
from theseus_ops.plots import SweepPanel, sweep_figure
from theseus_ops.transport.methods import get_method, method_names
from theseus_ops.transport.tolerances import DEFAULT_FILL

log = logging.getLogger("theseus_ops")
SHOWN_VAL = ("exact_match", "token_accuracy")


@dataclass(frozen=True)
class BenchConfig:
    family: str = "tiny"
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
    methods: tuple[str, ...] = field(default_factory=lambda: tuple(method_names()))
    targets: tuple[str, ...] = TARGETS
    cache: str | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    plots: bool = True
    family_overrides: dict = field(default_factory=dict, hash=False)
    fill: str = DEFAULT_FILL  # what the estimated maps do on directions the calibration leaves open
    # None: the family's own calibration files (task rows plus corpus windows); else built per skill by
    # the workflow's recipe builder (evaluation.calibration), as the workflow would
    calibration: CalibrationRecipe | None = None
    # the upper bound (each target fine-tuned directly on each skill; built once, cached in the family)
    references: bool = True

    def __post_init__(self) -> None:
        for what, given, allowed in (("method(s)", self.methods, tuple(method_names())),
                                     ("target release(s)", self.targets, TARGETS)):
            unknown = sorted(set(given) - set(allowed))
            if unknown or not given:
                raise InputError(f"bench quality: unknown {what} {unknown or '(none given)'}; "
                                 f"choose from {', '.join(allowed)}")
        if not self.alphas:
            raise InputError("bench quality: the α grid is empty")


class Release:
    """One family release loaded once, with an evaluator per skill (its val/test rows, the family's held-out text)."""

    def __init__(self, fam: Family, release: str, splits: dict[str, tuple[list, list]]) -> None:
        self.evaluators = {skill: GenerationEvaluator(TaskConfig(dataset=fam.task(skill), heldout=fam.heldout),
                                                      rows={"val": val, "test": test}, report=lambda _m: None)
                           for skill, (val, test) in splits.items()}
        first = next(iter(self.evaluators.values()))
        self.model = first.load(fam.model(release))
        for evaluator in self.evaluators.values():
            evaluator.attach(self.model, first.processor(self.model))

    def test_with_loss(self, skill: str, delta: dict | None, alpha: float) -> dict:
        """Test scores of base + α·δ with the held-out LM loss beside them (the table's columns)."""
        scores, general = score_at(self.evaluators[skill], self.model, delta, alpha, ["test"], general=True)
        return {**scores["test"], "lm_loss": general.value}

    def base(self, skill: str) -> Candidate:
        """The release untouched on val and test, scored once for every task vector of the skill."""
        evaluator = self.evaluators[skill]
        return Candidate("base", 0.0, evaluator.score(self.model, "val"), evaluator.score(self.model, "test"),
                         evaluator.general(self.model))


def _with_loss(candidate: Candidate) -> dict:
    return {**candidate.test, "lm_loss": candidate.general.value} if candidate.general else dict(candidate.test)


def _share(value: float, base: float, tuned: float) -> float | None:
    gain = tuned - base
    return None if gain <= 1e-9 else (value - base) / gain


def recipe_calibrations(fam: Family, recipe: CalibrationRecipe, skills, out: Path) -> dict[str, Path]:
    """Each skill's calibration file built by ``recipe`` (the demo family's releases share one tokenizer)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for skill in skills:
        evaluator = GenerationEvaluator(TaskConfig(dataset=fam.task(skill), heldout=fam.heldout),
                                        report=lambda _m: None)
        built = build_calibration(evaluator, fam.model("v1"), recipe, vocab=shared_vocabulary(fam.model("v1")),
                                  heldout=fam.heldout)
        paths[skill] = out / f"{skill}.safetensors"
        save_file(built.tensors, str(paths[skill]), metadata=built.metadata(recipe))
    return paths


def _transport(fam: Family, target: str, method: str, tv: Path, skill: str, out: Path, alignments: dict,
               fill: str = DEFAULT_FILL, calibrations: dict[str, Path] | None = None) -> Path:
    from theseus_ops import api
    from theseus_ops.config import CalibrationSpec, PrepareConfig, TransportConfig

    cal_file = str((calibrations or {}).get(skill) or fam.calibration(skill))
    source, tgt = str(fam.model("v1")), str(fam.model(target))
    caps = get_method(method).capabilities
    kwargs: dict = {}
    if caps.estimates_maps:  # prepared once per target (and skill, when it uses calibration data)
        key = (target, method, skill if caps.needs_calibration else None)
        if key not in alignments:
            path = out.parent.parent / "alignments" / f"{target}-{method}{'-' + skill if key[2] else ''}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            cal = CalibrationSpec(cal_file) if caps.needs_calibration else CalibrationSpec()
            api.prepare(PrepareConfig(source, tgt, cal, method=method, fill=fill), path)
            alignments[key] = str(path)
        kwargs["alignment"] = alignments[key]
    elif caps.needs_calibration:
        kwargs["calibration"] = CalibrationSpec(cal_file)
        kwargs["fill"] = fill
    dest = out / (f"{method}" if tv.is_dir() else f"{method}.safetensors")
    out.mkdir(parents=True, exist_ok=True)
    api.transport(TransportConfig(source, tgt, method, task_vector=str(tv), **kwargs), dest, out / f"{method}.json")
    return dest


def _run_cell(fam: Family, release: Release, cfg: BenchConfig, target: str, skill: str, tv: Path, label: str,
              base: Candidate, out: Path, alignments: dict, calibrations: dict[str, Path] | None = None) -> dict:
    """All methods for one (target, task vector), through the evaluation package's sweep-and-select."""
    def delta_of(method: str):
        try:
            path = _transport(fam, target, method, tv, skill, out / target / label, alignments, cfg.fill,
                              calibrations)
        except TheseusError as exc:
            return NotApplicable(method, str(exc).splitlines()[0])
        return dense_deltas(path, fam.model(target))

    selection = sweep_and_select(release.evaluators[skill], release.model, cfg.methods, cfg.alphas, delta_of,
                                 base=base)
    cell: dict = {"target": target, "task": label, "methods": {}}
    cell["methods"]["base"] = {"alpha": 0.0, "val": base.val, "test": _with_loss(base), "sweep": []}
    for method, r in selection.methods.items():
        if isinstance(r, NotApplicable):
            cell["methods"][method] = r.as_dict()
            continue
        cell["methods"][method] = {"alpha": r.alpha, "val": {k: r.val[k] for k in SHOWN_VAL}, "test": _with_loss(r),
                                   "sweep": [p.as_dict() for p in r.sweep], "transport_seconds": r.transport_seconds,
                                   "eval_seconds": r.eval_seconds}
    ref = fam.reference(target, skill)
    if ref.is_file():
        cell["methods"]["finetuned"] = {"alpha": 1.0, "upper_bound": True, "test": release.test_with_loss(
            skill, dense_deltas(ref, fam.model(target)), 1.0)}
    cell["selected"] = selection.selected
    tuned = cell["methods"].get("finetuned", {}).get("test")
    base_test = cell["methods"]["base"]["test"]
    for r in cell["methods"].values():
        if "test" in r and tuned:
            r["recovered"] = _share(r["test"]["exact_match"], base_test["exact_match"], tuned["exact_match"])
            r["recovered_token"] = _share(r["test"]["token_accuracy"], base_test["token_accuracy"],
                                          tuned["token_accuracy"])
    return cell


def run_quality(cfg: BenchConfig, out: str | Path, progress=print) -> dict:
    """Build (or reuse) the family, run every cell, write results.json, table.md and plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fam_cfg = family_config(cfg.family, **cfg.family_overrides)
    t0 = time.perf_counter()
    fam = build_family(fam_cfg, cfg.cache, progress=progress)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference_timings = ensure_references(fam, progress) if cfg.references else {}
    reference_s = time.perf_counter() - t0
    started = time.perf_counter()
    splits = {s: (load_split(fam.task(s), "val")[: cfg.val_limit], load_split(fam.task(s), "test")[: cfg.test_limit])
              for s in fam_cfg.skills}
    results: dict = {"family": {"scale": fam_cfg.scale, "root": str(fam.root), "hash": fam.info.get("hash"),
                                "build_seconds_recorded": fam.info.get("build_seconds"),
                                "build_or_load_seconds": round(build_s, 2), "timings": fam.info.get("timings"),
                                "reference_seconds": round(reference_s, 2), "reference_timings": reference_timings},
                     "alphas": list(cfg.alphas), "source": {}, "cells": [], "fill": cfg.fill,
                     "calibration": cfg.calibration.as_dict() if cfg.calibration else "family files"}
    calibrations = (recipe_calibrations(fam, cfg.calibration, fam_cfg.skills, out / "calibration")
                    if cfg.calibration else None)
    source = Release(fam, "v1", splits)
    for skill in splits:
        tuned = dense_deltas(fam.task_vector(skill), fam.model("v1"))
        results["source"][skill] = {"v1": source.test_with_loss(skill, None, 0.0),
                                    "v1_finetuned": source.test_with_loss(skill, tuned, 1.0)}
        if skill in fam_cfg.lora_skills:
            results["source"][f"{skill}-lora"] = {"v1_finetuned": source.test_with_loss(
                skill, dense_deltas(fam.lora(skill), fam.model("v1")), 1.0)}
    for target in cfg.targets:
        release = Release(fam, target, splits)
        alignments: dict = {}
        for skill in splits:
            base = release.base(skill)
            tvs = [(skill, fam.task_vector(skill))]
            if skill in fam_cfg.lora_skills:
                tvs.append((f"{skill}-lora", fam.lora(skill)))
            for label, tv in tvs:
                t0 = time.perf_counter()
                cell = _run_cell(fam, release, cfg, target, skill, tv, label, base, out / "transported", alignments,
                                 calibrations)
                cell["seconds"] = round(time.perf_counter() - t0, 2)
                results["cells"].append(cell)
                progress(f"bench: {target} {label}: selected {cell['selected']} ({cell['seconds']:.1f}s)")
    results["eval_seconds"] = round(time.perf_counter() - started, 2)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(markdown_table(results))
    if cfg.plots:
        results["plots"] = plot_sweeps(results, out)
    return results


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.0f}" if pct else f"{v:.3f}"


def _shown() -> tuple[str, ...]:
    """The table's columns: the base, every registered method in listing order, the direct fine-tune."""
    return ("base", *method_names(), "finetuned")


def _method_row(cell: dict, render) -> list[str]:
    """Target, task, then one rendered cell per shown method ("n/a" where it does not apply)."""
    row = [cell["target"], cell["task"]]
    for m in _shown():
        r = cell["methods"].get(m)
        row.append("n/a" if r is None or "not_applicable" in r else render(m, r, cell))
    return row


def _em_cell(m: str, r: dict, cell: dict) -> str:
    mark = " ✓" if m == cell["selected"] else ""
    alpha = f" [{r['alpha']:g}]" if m not in ("base", "finetuned") else ""
    return f"{_fmt(r['test']['exact_match'])}{alpha}{mark}"


def recovered_by_target(results: dict) -> dict[str, dict[str, float]]:
    """target -> method (and "selected") -> mean share of the direct fine-tune's test-EM gain recovered,
    over the target's tasks that have a share (a task whose direct fine-tune gained nothing has none)."""
    sums: dict[str, dict[str, list[float]]] = {}
    for cell in results["cells"]:
        per = sums.setdefault(cell["target"], {})
        for method, r in cell["methods"].items():
            if isinstance(r, dict) and r.get("recovered") is not None:
                per.setdefault(method, []).append(r["recovered"])
        chosen = cell["methods"].get(cell.get("selected"), {})
        if isinstance(chosen, dict) and chosen.get("recovered") is not None:
            per.setdefault("selected", []).append(chosen["recovered"])
    return {t: {m: sum(v) / len(v) for m, v in per.items()} for t, per in sums.items()}


def markdown_table(results: dict) -> str:
    lines = [f"# bench quality: family `{results['family']['scale']}`", "",
             "Test exact match % (α chosen on val in brackets); ✓ marks the method selected on val; "
             "n/a = method does not apply to this pair. Recovered = share of the direct fine-tune's gain.", ""]
    lines += ["## Source (v1) and its fine-tunes, test", "", "| task | v1 EM | v1+τ EM | v1 tok acc | v1+τ tok acc |",
              "|---|---|---|---|---|"]
    for task, r in results["source"].items():
        base = r.get("v1")
        lines.append(f"| {task} | {_fmt(base['exact_match']) if base else '–'} | "
                     f"{_fmt(r['v1_finetuned']['exact_match'])} | {_fmt(base['token_accuracy']) if base else '–'} | "
                     f"{_fmt(r['v1_finetuned']['token_accuracy'])} |")
    lines += ["", "## Targets: test exact match % [α]", "",
              "| target | task | " + " | ".join(_shown()) + " | selected | selected recovered |",
              "|---|---|" + "---|" * (len(_shown()) + 2)]
    for cell in results["cells"]:
        row = _method_row(cell, _em_cell)
        sel = cell["methods"][cell["selected"]]
        row += [cell["selected"], _fmt(sel.get("recovered"))]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Share of the direct fine-tune's gain recovered (test EM), mean over the target's tasks", "",
              "| target | " + " | ".join(_shown()) + " | selected |", "|---|" + "---|" * (len(_shown()) + 1)]
    for target, shares in recovered_by_target(results).items():
        lines.append(f"| {target} | " + " | ".join(_fmt(shares.get(m)) for m in (*_shown(), "selected")) + " |")
    lines += ["", "## Targets: test answer-token accuracy % and held-out LM loss (nats) at the chosen α", "",
              "| target | task | " + " | ".join(_shown()) + " |", "|---|---|" + "---|" * len(_shown())]
    for cell in results["cells"]:
        row = _method_row(cell, lambda _m, r, _c: f"{_fmt(r['test']['token_accuracy'])} / "
                                                   f"{r['test'].get('lm_loss', float('nan')):.3f}")
        lines.append("| " + " | ".join(row) + " |")
    fam = results["family"]
    lines += ["", f"Family build: {fam['build_seconds_recorded']}s when built (this run: "
              f"{fam['build_or_load_seconds']}s, cached if small); evaluation: {results['eval_seconds']}s.", ""]
    return "\n".join(lines)


def plot_sweeps(results: dict, out: Path) -> list[str]:
    """One PNG per target: val exact match against α, one panel per task, one line per method."""
    written = []
    targets = sorted({c["target"] for c in results["cells"]}, key=[c["target"] for c in results["cells"]].index)
    for target in targets:
        panels = []
        for cell in (c for c in results["cells"] if c["target"] == target):
            ft = cell["methods"].get("finetuned")
            panels.append(SweepPanel(cell["task"], {m: r.get("sweep") for m, r in cell["methods"].items()},
                                     ("fine-tuned (test)", ft["test"]["exact_match"]) if ft else None))
        path = sweep_figure(panels, f"{target}: α sweeps on val", "exact_match", out / f"sweep-{target}.png")
        written.append(str(path))
    return written

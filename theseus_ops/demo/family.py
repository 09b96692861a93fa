"""Build the offline model family once, deterministically, and cache it by a hash of its config.

Layout of a family directory (``.theseus/families/<scale>-<hash>/`` by default)::

    family.json                    config, hash, corpus digest, per-stage timings, every path
    corpus/heldout.txt             held-out stdlib text (the general-capability metric)
    tasks/<skill>/{train,val,test}.jsonl
    calibration/<skill>.safetensors  train prompts+answers: input_ids, attention_mask, labels
    models/<release>/              v1, v2-wide, v2-wide-shuffled, v2-same, v2-indep (+ provenance.json)
    task_vectors/<skill>.safetensors   full fine-tune of v1, as a delta
    task_vectors/<skill>-lora/         PEFT LoRA fine-tune of v1 (``lora_skills``)
    reference/<release>/<skill>.safetensors  each target fine-tuned directly (the upper bound)

A directory is only ever complete: it is built under a temporary name and renamed at the end.
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

from theseus_ops.demo import corpus as corpus_mod
from theseus_ops.demo import grow, train
from theseus_ops.demo import skills as skills_mod
from theseus_ops.demo.tokenizer import save_tokenizer
from theseus_ops.errors import InputError
from theseus_ops.io.atomic import build_directory_once, replacing
from theseus_ops.io.task_vectors import FORMAT_VERSION, FULL_DELTA, META_FORMAT, META_VECTOR_FORMAT

# Bump when the builder changes what it writes for the same config: the cache key includes it.
FORMAT = "theseus-demo-family/2"
RELEASES = ("v1", "v2-wide", "v2-wide-shuffled", "v2-same", "v2-indep")
TARGETS = RELEASES[1:]
DEFAULT_ROOT = Path(".theseus/families")
# progress goes to logging unless a caller passes its own callback: an Airflow task log or the CLI's stderr
log = logging.getLogger("theseus_ops.demo")


@dataclass(frozen=True)
class FamilyConfig:
    """Everything the family's bytes depend on; its hash names the cache directory."""

    scale: str
    source: train.ModelShape
    wide: train.ModelShape
    seq_len: int = 96
    pretrain: train.TrainSpec = field(default_factory=lambda: train.TrainSpec(steps=800, batch=32, lr=3e-3, warmup=40))
    further: train.TrainSpec = field(default_factory=lambda: train.TrainSpec(steps=300, batch=32, lr=1e-3, warmup=20))
    independent: train.TrainSpec = field(default_factory=lambda: train.TrainSpec(800, 32, 3e-3, 40))
    finetune: train.TrainSpec = field(default_factory=lambda: train.TrainSpec(steps=400, batch=32, lr=2e-3, warmup=20))
    lora: train.TrainSpec = field(default_factory=lambda: train.TrainSpec(steps=400, batch=32, lr=5e-3, warmup=20))
    # pretraining windows replayed in every fine-tune (weight 0 turns it off); chosen on val, see BENCHMARKS.md
    replay_weight: float = 1.0
    replay_batch: int = 8
    lora_rank: int = 8
    skills: tuple[str, ...] = ("upper", "reverse", "shift", "lookup")
    lora_skills: tuple[str, ...] = ("upper",)
    skill_spec: skills_mod.SkillSpec = field(default_factory=skills_mod.SkillSpec)
    corpus: corpus_mod.CorpusSpec = field(default_factory=corpus_mod.CorpusSpec)
    calibration_rows: int = 256
    # corpus windows added to each skill's calibration set: the skill's short prompts alone leave many
    # directions weakly determined (on the tiny shuffled family, val EM on reverse 0 % -> 45 % with them)
    calibration_corpus_rows: int = 128
    seed: int = 0
    threads: int = 2

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self, corpus_digest: str) -> str:
        """Hash of the config and the corpus bytes (another Python ships other stdlib sources)."""
        blob = json.dumps({"format": FORMAT, "config": self.as_dict(), "corpus": corpus_digest}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def memory_bytes(self) -> int:
        """Peak training memory, roughly: fp32 weights, grads and two AdamW moments, plus
        activations (~ 20 floats per token per width unit per layer, and the logits)."""
        shape = self.wide if self.wide.parameters() > self.source.parameters() else self.source
        tokens = max(s.batch for s in (self.pretrain, self.further, self.independent)) * self.seq_len
        acts = tokens * shape.layers * (20 * shape.hidden + 4 * shape.intermediate) + 3 * tokens * 259
        return 4 * (4 * shape.parameters() + acts)


SCALES: dict[str, FamilyConfig] = {
    # tests: builds in seconds; only checks mechanics (determinism, growth), not learning.
    "micro": FamilyConfig(
        scale="micro", source=train.ModelShape(16, 1, 2, 1, 32, head_dim=8),
        wide=train.ModelShape(24, 1, 4, 2, 48, head_dim=8), seq_len=32,
        pretrain=train.TrainSpec(8, 8, 3e-3, 2), further=train.TrainSpec(4, 8, 1e-3, 2),
        independent=train.TrainSpec(8, 8, 3e-3, 2), finetune=train.TrainSpec(6, 8, 2e-3, 2),
        lora=train.TrainSpec(4, 8, 5e-3, 2), lora_rank=2, skills=("upper", "lookup"), lora_skills=("upper",),
        skill_spec=skills_mod.SkillSpec(train=64, val=8, test=8), calibration_rows=32, calibration_corpus_rows=8,
        corpus=corpus_mod.CorpusSpec(train_bytes=40_000, heldout_bytes=4_000, skill_share=0.05),
    ),
    # the demo and the CPU benchmark: the whole family in a few minutes on 2 cores.
    "tiny": FamilyConfig(scale="tiny", source=train.ModelShape(64, 2, 4, 2, 192),
                         wide=train.ModelShape(96, 2, 6, 3, 288)),
    # the GPU benchmark: widths of a few hundred, more layers, longer training.
    "small": FamilyConfig(
        scale="small", source=train.ModelShape(256, 6, 8, 4, 768, head_dim=32),
        wide=train.ModelShape(384, 6, 12, 6, 1152, head_dim=32), seq_len=256,
        pretrain=train.TrainSpec(6000, 64, 1e-3, 200), further=train.TrainSpec(2000, 64, 5e-4, 100),
        independent=train.TrainSpec(8000, 64, 1e-3, 200), finetune=train.TrainSpec(600, 64, 5e-4, 50),
        lora=train.TrainSpec(600, 64, 2e-3, 50), lora_rank=16, skill_spec=skills_mod.SkillSpec(train=8000, val=128,
                                                                                           test=256),
        corpus=corpus_mod.CorpusSpec(train_bytes=20_000_000, heldout_bytes=400_000), calibration_rows=512,
        threads=16,
    ),
}


def family_config(scale: str, **overrides) -> FamilyConfig:
    if scale not in SCALES:
        raise InputError(f"unknown family {scale!r}; choose one of {sorted(SCALES)}")
    return dataclasses.replace(SCALES[scale], **overrides) if overrides else SCALES[scale]


def available_memory() -> int:
    """Bytes of the device training runs on: the GPU's when present, else physical RAM."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(config: FamilyConfig, available: int | None = None) -> None:
    available = available_memory() if available is None else available
    need = config.memory_bytes()
    if need > 0.8 * available:
        raise InputError(f"family {config.scale} needs about {need / 2**30:.1f} GiB to train but only "
                         f"{available / 2**30:.1f} GiB are available; use a smaller scale or batch")


@dataclass(frozen=True)
class Family:
    """A built family on disk; paths only, so it is cheap to pass around."""

    root: Path
    config: FamilyConfig
    info: dict = field(default_factory=dict, compare=False)

    def model(self, release: str) -> Path:
        return self.root / "models" / release

    def task(self, skill: str) -> Path:
        return self.root / "tasks" / skill

    def calibration(self, skill: str) -> Path:
        return self.root / "calibration" / f"{skill}.safetensors"

    def task_vector(self, skill: str) -> Path:
        return self.root / "task_vectors" / f"{skill}.safetensors"

    def lora(self, skill: str) -> Path:
        return self.root / "task_vectors" / f"{skill}-lora"

    def reference(self, release: str, skill: str) -> Path:
        return self.root / "reference" / release / f"{skill}.safetensors"

    @property
    def heldout(self) -> Path:
        return self.root / "corpus" / "heldout.txt"


def _save_model(model: torch.nn.Module, directory: Path, provenance: dict) -> None:
    model.save_pretrained(str(directory))
    save_tokenizer(directory)
    (directory / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True))


def _save_delta(tuned: dict[str, torch.Tensor], base: dict[str, torch.Tensor], path: Path, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    delta = {k: (tuned[k] - base[k]).contiguous() for k in base}
    save_file(delta, str(path), metadata={META_FORMAT: FORMAT_VERSION, META_VECTOR_FORMAT: FULL_DELTA,
                                          **{k: str(v) for k, v in meta.items()}})


def _finetune(config, state: dict[str, torch.Tensor], data, spec: train.TrainSpec, seed: int,
              replay: train.Replay | None, progress: Callable[[str], None] | None = None,
              label: str = "finetune") -> dict:
    model = train.with_state(config, state)
    train.run_training(model, data, spec, seed, replay=replay, progress=progress, label=label)
    return train.state_of(model)


# what else a build's bytes depend on beyond its config and corpus: recorded in family.json, so two
# machines' numbers can be compared (the thread count is pinned by the config; see README)
VERSIONED = ("torch", "transformers", "peft")


def environment() -> dict:
    import platform

    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


GPU_SCALES = ("small",)
ALLOW_CPU_ENV = "THESEUS_ALLOW_CPU_BUILD"


def build_family(config: FamilyConfig, root: str | Path | None = None,
                 progress: Callable[[str], None] | None = None) -> Family:
    """Build (or reuse from cache) every release, task and task vector of ``config``."""
    progress = progress or log.info
    check_fits(config)
    corpus = corpus_mod.build_corpus(config.corpus, config.skills)
    key = config.key(corpus.digest)
    root = Path(root) if root is not None else DEFAULT_ROOT
    final = root / f"{config.scale}-{key}"
    if (final / "family.json").is_file():
        info = json.loads((final / "family.json").read_text())
        built, here = info.get("environment"), environment()
        if built and {k: built.get(k) for k in VERSIONED} != {k: here[k] for k in VERSIONED}:
            log.warning("family %s was built under %s and is reused under %s: scores measured here may differ "
                        "from a fresh build's", final.name, {k: built.get(k) for k in VERSIONED},
                        {k: here[k] for k in VERSIONED})
        return Family(final, config, info)
    if config.scale in GPU_SCALES and not torch.cuda.is_available() and not os.environ.get(ALLOW_CPU_ENV):
        raise InputError(f"family {config.scale} is built on a GPU (hours on a CPU) and none is available; "
                         f"run it where CUDA is, or set {ALLOW_CPU_ENV}=1")
    tmp = root / f".{config.scale}-{key}.tmp-{os.getpid()}"
    info = build_directory_once(final, tmp, lambda into: _build_into(into, config, corpus, key, progress))
    return Family(final, config, info)


def _build_into(out: Path, cfg: FamilyConfig, corpus: corpus_mod.Corpus, key: str, progress) -> dict:
    import transformers

    train.set_determinism(cfg.threads)
    transformers.utils.logging.disable_progress_bar()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    fam = Family(out, cfg)

    n_stages = len(RELEASES) + len(cfg.skills) + len([s for s in cfg.skills if s in cfg.lora_skills])
    done: list[str] = []

    def begin(name: str) -> Callable[[str], None]:
        """Announce stage k of N; returns the step-progress callback of its training loop."""
        progress(f"family {cfg.scale}: stage {len(done) + 1}/{n_stages} {name}: started "
                 f"({time.perf_counter() - started:.0f}s elapsed)")
        return lambda message: progress(f"family {cfg.scale}: stage {len(done) + 1}/{n_stages} {message}")

    def stage(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 2)
        done.append(name)
        progress(f"family {cfg.scale}: stage {len(done)}/{n_stages} {name} in {timings[name]:.1f}s "
                 f"({time.perf_counter() - started:.0f}s elapsed)")

    (out / "corpus").mkdir()
    fam.heldout.write_text(corpus.heldout)
    task_rows: dict[str, list[tuple[str, str]]] = {}
    for skill in cfg.skills:
        skills_mod.write_task(fam.task(skill), skill, cfg.skill_spec)
        task_rows[skill] = skills_mod.load_split(fam.task(skill), "train")
        cal = train.example_data(task_rows[skill][: cfg.calibration_rows], length=cfg.seq_len)
        if cfg.calibration_corpus_rows:
            general = train.window_data(corpus_mod.pretraining_windows(
                corpus, cfg.seq_len, cfg.calibration_corpus_rows, cfg.seed + 20), cfg.seq_len)
            general["labels"] = torch.full_like(general["labels"], -100)  # GradFix's loss stays on the answers
            cal = {k: torch.cat([cal[k], general[k]]) for k in ("input_ids", "attention_mask", "labels")}
        fam.calibration(skill).parent.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in cal.items()}, str(fam.calibration(skill)))
    common = {"family": cfg.scale, "family_hash": key, "corpus_sha256": corpus.digest, "seed": cfg.seed}

    def windows(count: int, seed: int):
        return train.window_data(corpus_mod.pretraining_windows(corpus, cfg.seq_len, count, seed), cfg.seq_len)

    # v1: the source release
    t0 = time.perf_counter()
    v1_cfg = cfg.source.config(cfg.seq_len * 2)
    model = train.new_model(v1_cfg, cfg.seed)
    steps = begin("v1")
    losses = train.run_training(model, windows(cfg.pretrain.steps * cfg.pretrain.batch, cfg.seed + 1), cfg.pretrain,
                                cfg.seed + 2, progress=steps, label="v1 pretraining")
    v1_state = train.state_of(model)
    _save_model(model, fam.model("v1"), {**common, "release": "v1", "made": "pretrained from scratch",
                                          "steps": cfg.pretrain.steps, "final_loss": losses[-1]})
    stage("v1", t0)

    # the further-training data, shared by v2-wide, v2-wide-shuffled and v2-same (new windows)
    further = windows(cfg.further.steps * cfg.further.batch, cfg.seed + 3)
    wide_cfg = grow.widened_config(v1_cfg, cfg.wide.hidden, cfg.wide.heads, cfg.wide.kv_heads, cfg.wide.intermediate)
    grown = grow.widen_state(v1_state, v1_cfg, wide_cfg, seed=cfg.seed + 4)
    perms = grow.permutations(wide_cfg, seed=cfg.seed + 5)
    for release, start, conf, made in (
        ("v2-wide", grown, wide_cfg, "v1 widened function-preservingly, then trained further"),
        ("v2-wide-shuffled", grow.permute_state(grown, wide_cfg, perms), wide_cfg,
         "v1 widened, residual channels/heads/MLP units permuted consistently, then trained further "
         "(same data and seed as v2-wide)"),
        ("v2-same", v1_state, v1_cfg, "v1 trained further at the same width"),
    ):
        t0 = time.perf_counter()
        model = train.with_state(conf, start)
        steps = begin(release)
        losses = train.run_training(model, further, cfg.further, cfg.seed + 6, progress=steps,
                                    label=f"{release} further training")
        _save_model(model, fam.model(release), {**common, "release": release, "made": made, "from": "v1",
                                                 "steps": cfg.further.steps, "final_loss": losses[-1]})
        stage(release, t0)

    t0 = time.perf_counter()
    model = train.new_model(cfg.wide.config(cfg.seq_len * 2), cfg.seed + 7)
    steps = begin("v2-indep")
    losses = train.run_training(model, windows(cfg.independent.steps * cfg.independent.batch, cfg.seed + 8),
                                cfg.independent, cfg.seed + 9, progress=steps, label="v2-indep pretraining")
    _save_model(model, fam.model("v2-indep"), {**common, "release": "v2-indep", "made": "trained from scratch at "
                                                "the wide width (negative control)", "steps": cfg.independent.steps,
                                                "final_loss": losses[-1]})
    stage("v2-indep", t0)

    # task vectors of v1: a full fine-tune per skill, and LoRA ones
    from theseus_ops.io.models import inspect_model_dir

    v1_sha = inspect_model_dir(fam.model("v1")).sha256()
    replay = _replay(cfg, corpus)
    for i, skill in enumerate(cfg.skills):
        t0 = time.perf_counter()
        data = train.example_data(task_rows[skill])
        steps = begin(f"finetune v1 {skill}")
        tuned = _finetune(v1_cfg, v1_state, data, cfg.finetune, cfg.seed + 100 + i, replay,
                          progress=steps, label=f"finetune v1 {skill}")
        _save_delta(tuned, v1_state, fam.task_vector(skill), {"theseus.base_sha256": v1_sha,
                                                              "theseus.skill": skill})
        stage(f"finetune v1 {skill}", t0)
        if skill in cfg.lora_skills:
            t0 = time.perf_counter()
            steps = begin(f"lora v1 {skill}")
            peft_model = train.lora_finetune(train.with_state(v1_cfg, v1_state), data, cfg.lora, cfg.seed + 200 + i,
                                             cfg.lora_rank, 2 * cfg.lora_rank, replay, progress=steps,
                                             label=f"lora v1 {skill}")
            peft_model.save_pretrained(str(fam.lora(skill)))
            stage(f"lora v1 {skill}", t0)
    total = round(time.perf_counter() - started, 2)
    info = {"format": FORMAT, "scale": cfg.scale, "hash": key, "corpus_sha256": corpus.digest,
            "config": cfg.as_dict(), "build_seconds": total, "timings": timings,
            "torch": torch.__version__, "environment": environment(), "releases": list(RELEASES),
            "skills": list(cfg.skills)}
    (out / "family.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    progress(f"family {cfg.scale}: built in {total:.1f}s")
    return info


def _replay(cfg: FamilyConfig, corpus: corpus_mod.Corpus) -> train.Replay | None:
    """The pretraining windows every fine-tune replays (the same ones for v1 and the references)."""
    if cfg.replay_weight <= 0:
        return None
    windows = corpus_mod.pretraining_windows(corpus, cfg.seq_len, cfg.finetune.steps * cfg.replay_batch, cfg.seed + 10)
    return train.Replay(train.window_data(windows, cfg.seq_len), cfg.replay_weight, cfg.replay_batch)


def ensure_references(fam: Family, progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Each target fine-tuned directly on each skill: the benchmark's upper bound.

    Built on demand (by ``bench quality``), not with the family: the family itself is what users
    and the demo need, and it must build within minutes. Same recipe, data and seeds as v1's
    fine-tunes; each file is written atomically and reused when present. Returns seconds per built one.
    """
    progress = progress or log.info
    cfg = fam.config
    missing = [(i, skill, release) for i, skill in enumerate(cfg.skills) for release in TARGETS
               if not fam.reference(release, skill).is_file()]
    if not missing:
        return {}
    train.set_determinism(cfg.threads)
    replay = _replay(cfg, corpus_mod.build_corpus(cfg.corpus, cfg.skills))
    timings = {}
    for i, skill, release in missing:
        t0 = time.perf_counter()
        data = train.example_data(skills_mod.load_split(fam.task(skill), "train"))
        base_model = train.load_release(fam.model(release))
        base_state = train.state_of(base_model)
        n = len(timings) + 1
        progress(f"family {cfg.scale}: reference fine-tune {n}/{len(missing)} {release} {skill}: started")
        tuned = _finetune(base_model.config, base_state, data, cfg.finetune, cfg.seed + 100 + i, replay,
                          progress=lambda m, n=n: progress(f"family {cfg.scale}: reference {n}/{len(missing)} {m}"),
                          label=f"{release} {skill}")
        dest = fam.reference(release, skill)
        with replacing(dest, ".safetensors") as tmp:
            _save_delta(tuned, base_state, tmp, {"theseus.skill": skill, "theseus.release": release})
        timings[f"{release}/{skill}"] = round(time.perf_counter() - t0, 2)
        progress(f"family {cfg.scale}: reference fine-tune {release} {skill} in {timings[f'{release}/{skill}']}s")
    return timings

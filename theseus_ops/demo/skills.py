"""Synthetic skills: (prompt, answer) pairs a fine-tune of v1 learns and the base models do badly.

Every example reads ``Q: <skill> <input>\\nA: <answer>\\n``. The prompt ends after ``A: `` and the
answer includes the final newline, so exact match also checks that the model stops. Splits are
decided by a hash of the prompt, so train, val and test never share a prompt, and the few skill
examples mixed into pretraining come from the train region only (the bases may know the format,
never the test answers).
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from theseus_ops.errors import InputError
from theseus_ops.evaluation.config import SPLITS
from theseus_ops.evaluation.data import load_prompt_answer, parse_prompt_answer

__all__ = ["GENERATORS", "SPLITS", "SkillSpec", "generate", "load_split", "parse_split", "pretraining_examples",
           "render", "split_of", "write_task"]
LETTERS = string.ascii_lowercase


def _word(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(low, high)))


def _upper(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 3, 6)
    return f"upper {w}", w.upper()


def _reverse(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 3, 5)
    return f"reverse {w}", w[::-1]


def _shift(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 3, 6)
    return f"shift {w}", "".join(LETTERS[(LETTERS.index(c) + 1) % 26] for c in w)


def _lookup(rng: random.Random) -> tuple[str, str]:
    keys = rng.sample(LETTERS, 3)
    values = [str(rng.randint(0, 9)) for _ in keys]
    asked = rng.randrange(3)
    pairs = " ".join(f"{k}={v}" for k, v in zip(keys, values))
    return f"lookup {pairs} {keys[asked]}", values[asked]


GENERATORS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "upper": _upper, "reverse": _reverse, "shift": _shift, "lookup": _lookup,
}


def render(body: str) -> str:
    """The prompt of an example's input: the model continues after ``A: ``."""
    return f"Q: {body}\nA: "


def split_of(prompt: str, val_share: float = 0.1, test_share: float = 0.1) -> str:
    """Split by a hash of the prompt: stable, seed-independent, and disjoint across splits."""
    h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") / 2**64
    return "test" if h < test_share else "val" if h < test_share + val_share else "train"


@dataclass(frozen=True)
class SkillSpec:
    """How many unique examples each split holds; the seed makes them reproducible."""

    train: int = 2000
    val: int = 64
    test: int = 128
    seed: int = 0


def generate(skill: str, spec: SkillSpec) -> dict[str, list[dict[str, str]]]:
    """Unique examples per split, each ``{"prompt", "answer"}``; deterministic in (skill, spec)."""
    if skill not in GENERATORS:
        raise InputError(f"unknown skill {skill!r}; known: {sorted(GENERATORS)}")
    rng = random.Random(f"{skill}:{spec.seed}")
    want = {"train": spec.train, "val": spec.val, "test": spec.test}
    out: dict[str, list[dict[str, str]]] = {s: [] for s in SPLITS}
    seen: set[str] = set()
    for _ in range(200 * sum(want.values())):
        if all(len(out[s]) >= want[s] for s in SPLITS):
            break
        body, answer = GENERATORS[skill](rng)
        prompt = render(body)
        split = split_of(prompt)
        if prompt in seen or len(out[split]) >= want[split]:
            continue
        seen.add(prompt)
        out[split].append({"prompt": prompt, "answer": answer + "\n"})
    short = [s for s in SPLITS if len(out[s]) < want[s]]
    if short:
        raise InputError(f"skill {skill}: could not draw enough unique examples for split(s) {short}")
    return out


def pretraining_examples(skill: str, count: int, seed: int) -> list[str]:
    """Full examples for the pretraining mix, drawn from the train region only."""
    rng = random.Random(f"pretrain:{skill}:{seed}")
    texts: list[str] = []
    while len(texts) < count:
        body, answer = GENERATORS[skill](rng)
        prompt = render(body)
        if split_of(prompt) == "train":
            texts.append(prompt + answer + "\n")
    return texts


def write_task(directory: Path, skill: str, spec: SkillSpec) -> Path:
    """A task directory: ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` and ``task.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in generate(skill, spec).items():
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    (directory / "task.json").write_text(json.dumps({"skill": skill, "spec": spec.__dict__}, indent=2))
    return directory


def load_split(task_dir: str | Path, split: str) -> list[tuple[str, str]]:
    """Read and validate one split: every line a JSON object with non-empty string prompt and answer."""
    return load_prompt_answer(task_dir, split)


parse_split = parse_prompt_answer  # the JSONL reader of prompt/answer rows (theseus_ops.evaluation.data)

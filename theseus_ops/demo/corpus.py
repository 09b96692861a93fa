"""Offline pretraining text: the Python standard library's sources, plus skills at low frequency.

The stdlib is on every machine that runs this project, so the corpus needs no download. Files
are taken in sorted order; every ``heldout_every``-th file is held out for the LM-loss metric
(general capability), the rest feed pretraining. The corpus digest goes into the family's
cache key and provenance, since another Python version ships other sources.
"""

from __future__ import annotations

import hashlib
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from theseus_ops.demo import skills
from theseus_ops.errors import InputError


@dataclass(frozen=True)
class CorpusSpec:
    """Sizes in bytes; ``skill_share`` is the fraction of pretraining examples that are skills."""

    train_bytes: int = 1_500_000
    heldout_bytes: int = 60_000
    heldout_every: int = 10
    skill_share: float = 0.02
    seed: int = 0


@dataclass(frozen=True)
class Corpus:
    code: str
    heldout: str
    skill_lines: tuple[str, ...]
    digest: str


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise InputError(f"no Python sources found under {root}; the offline corpus needs the standard library")
    return files


def build_corpus(spec: CorpusSpec, skill_names: tuple[str, ...]) -> Corpus:
    code: list[str] = []
    heldout: list[str] = []
    sizes = [0, 0]
    for i, path in enumerate(stdlib_files()):
        text = path.read_text(encoding="utf-8", errors="replace")
        text = text.encode("ascii", errors="ignore").decode()  # keep byte tokens meaningful at tiny scale
        slot = 1 if i % spec.heldout_every == spec.heldout_every - 1 else 0
        limit = spec.heldout_bytes if slot else spec.train_bytes
        if sizes[slot] < limit:
            (heldout if slot else code).append(text[: limit - sizes[slot]])
            sizes[slot] += min(len(text), limit - sizes[slot])
        if sizes[0] >= spec.train_bytes and sizes[1] >= spec.heldout_bytes:
            break
    # roughly skill_share of the pretraining examples (one example ~ 30 bytes vs a 128-byte window)
    per_skill = max(1, int(spec.skill_share * spec.train_bytes / 128 / max(1, len(skill_names))))
    lines = tuple(line for s in skill_names for line in skills.pretraining_examples(s, per_skill, spec.seed))
    code_text, heldout_text = "".join(code), "".join(heldout)
    digest = hashlib.sha256("\0".join([code_text, heldout_text, *lines]).encode()).hexdigest()
    return Corpus(code_text, heldout_text, lines, digest)


def pretraining_windows(corpus: Corpus, length: int, count: int, seed: int) -> list[str]:
    """``count`` random windows of ``length`` bytes; ``skill_share`` of them start with a skill example.

    A skill window is a skill example followed by code, so the model sees the format in context.
    """
    rng = random.Random(seed)
    windows = []
    text = corpus.code
    n_skill = len(corpus.skill_lines)
    share = n_skill / max(1, n_skill + len(text) // length)
    for _ in range(count):
        start = rng.randrange(0, len(text) - length)
        if n_skill and rng.random() < max(share, 0.0):
            line = corpus.skill_lines[rng.randrange(n_skill)]
            windows.append((line + text[start:start + length])[:length])
        else:
            windows.append(text[start:start + length])
    return windows

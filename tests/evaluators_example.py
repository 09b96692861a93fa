"""A user evaluator, as a team would write one (docs/evaluation.md shows the same code).

It scores a causal LM on JSONL rows ``{"prompt", "keyword"}``: the share of greedy completions
that contain the row's keyword. A task names it ``tests.evaluators_example:make``, or by an entry
point in group ``theseus_ops.evaluators``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from theseus_ops.errors import InputError
from theseus_ops.evaluation import Metric, TaskConfig
from theseus_ops.evaluation.base import ModelEvaluator
from theseus_ops.evaluation.decoding import greedy_generate, special_ids
from theseus_ops.evaluation.loading import load_tokenizer


class KeywordEvaluator(ModelEvaluator):
    """Keyword rate of greedy completions; ``ModelEvaluator`` supplies load(), the device and progress."""

    auto_class = "AutoModelForCausalLM"
    metrics = (Metric("keyword_rate"),)

    def load_processor(self, model_dir: str | Path):
        return load_tokenizer(model_dir)

    def rows(self, split: str) -> list[dict]:
        path = self.config.data_dir / f"{split}.jsonl"
        if not path.is_file():
            raise InputError(f"{path} does not exist")
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    @torch.no_grad()
    def score(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        tokenizer = self.processor(model)
        rows = self.rows(split)
        pad_id, eos_ids = special_ids(model, tokenizer)
        prompts = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
        outputs = greedy_generate(model, prompts, self.config.max_new_tokens or 16, pad_id=pad_id, eos_ids=eos_ids,
                                  batch_size=self.config.batch_size, report=self.report, what=split)
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in outputs]
        hits = sum(r["keyword"] in text for r, text in zip(rows, texts))
        return {"keyword_rate": hits / len(rows), "examples": len(rows)}


def make(config: TaskConfig) -> KeywordEvaluator:
    """The factory a task names: called with the task's config."""
    return KeywordEvaluator(config)


class NoScore:
    """Not an evaluator: it cannot score (used to check the refusal)."""

    metrics = ("x",)

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    def load(self, model_dir):  # pragma: no cover - never reached
        raise AssertionError


NOT_CALLABLE = 42

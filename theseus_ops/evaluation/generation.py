"""``generation`` tasks: ``{"prompt", "answer"}`` rows scored by greedy exact match and answer-token accuracy.

Exact match: the first ``len(answer)`` greedily generated tokens equal the answer's tokens (so an
answer that carries its final newline also checks that the model stops there). Answer-token
accuracy: teacher-forced, the share of answer tokens the model ranks first given the true prefix.
Prompt and answer are encoded separately without special tokens; with ``chat_template`` the prompt
is the tokenizer's chat template around a single user turn, with the generation prompt appended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from theseus_ops.errors import InputError
from theseus_ops.evaluation.base import ModelEvaluator, Report
from theseus_ops.evaluation.batches import chunks, prompt_answer_batch
from theseus_ops.evaluation.config import GENERATION, TASK_KIND_METRICS
from theseus_ops.evaluation.data import load_prompt_answer
from theseus_ops.evaluation.decoding import greedy_generate, special_ids
from theseus_ops.evaluation.device import model_device
from theseus_ops.evaluation.general import HeldoutLoss
from theseus_ops.evaluation.loading import load_tokenizer
from theseus_ops.evaluation.metrics import exact_match, token_accuracy
from theseus_ops.evaluation.results import GeneralScore
from theseus_ops.progress import Ticker

Encoded = list[tuple[list[int], list[int]]]


@dataclass(frozen=True)
class GenerationScore:
    exact_match: float
    token_accuracy: float
    examples: int

    def as_dict(self) -> dict:
        return {"exact_match": self.exact_match, "token_accuracy": self.token_accuracy, "examples": self.examples}


@torch.no_grad()
def answer_token_accuracy(model: torch.nn.Module, rows: Encoded, *, pad_id: int, batch_size: int = 64,
                          report: Report | None = None, what: str = "token accuracy") -> float:
    """Teacher-forced: the share of answer tokens the model ranks first given the true prefix."""
    device = model_device(model)
    parts = list(chunks(len(rows), batch_size))
    ticker = Ticker(len(parts))
    correct = counted = 0
    for k, part in enumerate(parts, 1):
        batch = {key: t.to(device) for key, t in prompt_answer_batch(rows[part], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        c, n = token_accuracy(logits, batch["labels"])
        correct, counted = correct + c, counted + n
        ticker.tick(k, report if len(parts) > 1 else None, f"{what}: batch")
    if counted == 0:
        raise InputError("no answer token to score (every answer is empty after encoding)")
    return correct / counted


def score_encoded(model: torch.nn.Module, rows: Encoded, *, pad_id: int, eos_ids: Sequence[int] = (),
                  batch_size: int = 64, max_new_tokens: int | None = None, report: Report | None = None,
                  what: str = "generation") -> GenerationScore:
    """Exact match and answer-token accuracy of encoded (prompt ids, answer ids) rows."""
    budgets = [len(a) if max_new_tokens is None else max_new_tokens for _, a in rows]
    preds = greedy_generate(model, [p for p, _ in rows], budgets, pad_id=pad_id, eos_ids=eos_ids,
                            batch_size=batch_size, report=report, what=f"{what}: generate")
    em = exact_match([pr[: len(a)] for pr, (_, a) in zip(preds, rows)], [a for _, a in rows])
    acc = answer_token_accuracy(model, rows, pad_id=pad_id, batch_size=batch_size, report=report,
                                what=f"{what}: token accuracy")
    return GenerationScore(em, acc, len(rows))


def prompt_ids(tokenizer, prompt: str, chat_template: bool) -> list[int]:
    """The prompt's ids: plain, or inside the tokenizer's chat template as one user turn."""
    if not chat_template:
        return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("the task asks for the chat template, but the model's tokenizer has none "
                         "(tokenizer_config.json lacks chat_template)")
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class GenerationEvaluator(ModelEvaluator):
    """Causal LMs on prompt/answer rows; general capability is the held-out LM loss (``config.heldout``)."""

    auto_class = "AutoModelForCausalLM"
    metrics = TASK_KIND_METRICS[GENERATION]

    def __init__(self, config, *, rows: dict[str, list[tuple[str, str]]] | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self._rows = dict(rows or {})
        self._encoded: dict[tuple[int, str], tuple[object, Encoded]] = {}  # holds the tokenizer: ids stay unique
        self._heldout = HeldoutLoss(config.heldout, self.report)

    def load_processor(self, model_dir: str | Path):
        return load_tokenizer(model_dir)

    def rows(self, split: str) -> list[tuple[str, str]]:
        if split not in self._rows:
            self._rows[split] = self.limited(load_prompt_answer(self.config.data_dir, split))
        return self._rows[split]

    def encode(self, tokenizer, split: str) -> Encoded:
        """The split's rows as (prompt ids, answer ids) of ``tokenizer``, encoded once."""
        key = (id(tokenizer), split)
        if key not in self._encoded:
            self._encoded[key] = (tokenizer, [(prompt_ids(tokenizer, p, self.config.chat_template),
                                               list(tokenizer(a, add_special_tokens=False)["input_ids"]))
                                              for p, a in self.rows(split)])
        return self._encoded[key][1]

    def score(self, model: torch.nn.Module, split: str) -> dict:
        tokenizer = self.processor(model)
        pad_id, eos_ids = special_ids(model, tokenizer)
        return score_encoded(model, self.encode(tokenizer, split), pad_id=pad_id, eos_ids=eos_ids,
                             batch_size=self.config.batch_size, max_new_tokens=self.config.max_new_tokens,
                             report=self.report, what=split).as_dict()

    def general(self, model: torch.nn.Module) -> GeneralScore | None:
        return self._heldout.score(model, self.processor(model))

    def calibration(self, model_dir: str | Path, limit: int) -> dict[str, torch.Tensor]:
        """Train prompts+answers in this directory's tokenizer, labels on the answer only."""
        tokenizer = load_tokenizer(model_dir)
        rows = [(prompt_ids(tokenizer, p, self.config.chat_template),
                 list(tokenizer(a, add_special_tokens=False)["input_ids"])) for p, a in self.rows("train")[:limit]]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        return prompt_answer_batch(rows, pad)

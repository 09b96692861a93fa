"""``classification`` tasks: ``{"text", "label"}`` or ``{"text_a", "text_b", "label"}`` rows.

Scored with ``AutoModelForSequenceClassification``: the prediction is the head's argmax, labels are
mapped through the model config's ``label2id``/``id2label``; accuracy and macro-F1. General
capability: the accuracy on ``TaskConfig.general_task`` (a second task of the same labels).
"""

from __future__ import annotations

from pathlib import Path

import torch

from theseus_ops.evaluation.batches import chunks
from theseus_ops.evaluation.config import CLASSIFICATION, TASK_KIND_METRICS
from theseus_ops.evaluation.data import TextExample, load_classification
from theseus_ops.evaluation.device import model_device
from theseus_ops.evaluation.labelled import LabelPredictionEvaluator
from theseus_ops.evaluation.labels import to_ids
from theseus_ops.evaluation.loading import load_tokenizer
from theseus_ops.progress import Ticker


def encode_texts(tokenizer, rows: list[TextExample], max_length: int) -> dict[str, torch.Tensor]:
    """The rows' texts (or text pairs) as one right-padded batch of the tokenizer's ids."""
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder classifiers (GPT-2) ship without a pad token
    texts = [r.text for r in rows]
    pairs = [r.text_pair for r in rows] if rows and rows[0].text_pair is not None else None
    return dict(tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="pt"))


@torch.no_grad()
def predict(model: torch.nn.Module, tokenizer, rows: list[TextExample], *, batch_size: int, max_length: int,
            report=None, what: str = "classify") -> list[int]:
    """The head's argmax class id per row."""
    device = model_device(model)
    parts = list(chunks(len(rows), batch_size))
    ticker = Ticker(len(parts))
    out: list[int] = []
    for k, part in enumerate(parts, 1):
        batch = {key: t.to(device) for key, t in encode_texts(tokenizer, rows[part], max_length).items()}
        out.extend(model(**batch).logits.argmax(-1).tolist())
        ticker.tick(k, report if len(parts) > 1 else None, f"{what}: batch")
    return out


class ClassificationEvaluator(LabelPredictionEvaluator):
    auto_class = "AutoModelForSequenceClassification"
    metrics = TASK_KIND_METRICS[CLASSIFICATION]

    def __init__(self, config, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self._rows: dict[tuple[Path, str], list[TextExample]] = {}

    def load_processor(self, model_dir: str | Path):
        return load_tokenizer(model_dir)

    def rows(self, split: str, task_dir: Path | None = None) -> list[TextExample]:
        task_dir = task_dir or self.config.data_dir
        if (task_dir, split) not in self._rows:
            self._rows[(task_dir, split)] = self.limited(load_classification(task_dir, split))
        return self._rows[(task_dir, split)]

    def _predict(self, model: torch.nn.Module, split: str, task_dir: Path | None) -> tuple[list[int], list[int]]:
        rows = self.rows(split, task_dir)
        where = f"{task_dir or self.config.data_dir}/{split}.jsonl"
        labels = to_ids([r.label for r in rows], model.config, where)
        preds = predict(model, self.processor(model), rows, batch_size=self.config.batch_size,
                        max_length=self.config.max_length, report=self.report, what=split)
        return preds, labels

    def calibration(self, model_dir: str | Path, limit: int) -> dict[str, torch.Tensor]:
        """Train texts in this directory's tokenizer (ids and mask; class labels are not token labels)."""
        batch = encode_texts(load_tokenizer(model_dir), self.rows("train")[:limit], self.config.max_length)
        return {"input_ids": batch["input_ids"].long(), "attention_mask": batch["attention_mask"].long()}

"""General-capability measures: how much of what the base could do a candidate kept.

Language models: the mean LM loss on a held-out text (``TaskConfig.heldout``). Classifiers: the
accuracy on a second task the fine-tune did not touch (``TaskConfig.general_task``), reported with
its error rate as the loss the promotion gate limits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from theseus_ops.evaluation.data import read_text
from theseus_ops.evaluation.decoding import special_ids
from theseus_ops.evaluation.lm import text_ids, token_lm_loss
from theseus_ops.evaluation.results import GeneralScore


class HeldoutLoss:
    """LM loss on a held-out text, read once and encoded once per tokenizer."""

    def __init__(self, path: Path | None, report: Callable[[str], None] | None = None) -> None:
        self.path, self.report = path, report
        self._text: str | None = None
        self._ids: dict[int, tuple[object, list[int]]] = {}  # holds the tokenizer: its id stays unique

    def score(self, model: torch.nn.Module, tokenizer) -> GeneralScore | None:
        if self.path is None:
            return None
        if self._text is None:
            self._text = read_text(self.path, "held-out text")
        if id(tokenizer) not in self._ids:
            self._ids[id(tokenizer)] = (tokenizer, text_ids(tokenizer, self._text))
        pad_id, _eos = special_ids(model, tokenizer)
        loss = token_lm_loss(model, self._ids[id(tokenizer)][1], pad_id=pad_id, report=self.report, what="held-out")
        return GeneralScore("lm_loss", loss, loss)


def accuracy_score(accuracy: float) -> GeneralScore:
    """A second task's accuracy as a general-capability score (the gate limits its error rate)."""
    return GeneralScore("general_accuracy", accuracy, 1.0 - accuracy)

"""What the text and image classifiers share: predicted labels against true ones, per split.

Each kind only says how it predicts (``_predict``); the metrics, the task score and the
general-capability score on a second, untouched task are the same for both.
"""

from __future__ import annotations

from pathlib import Path

import torch

from theseus_ops.evaluation.base import ModelEvaluator
from theseus_ops.evaluation.general import accuracy_score
from theseus_ops.evaluation.metrics import accuracy, macro_f1
from theseus_ops.evaluation.results import GeneralScore


class LabelPredictionEvaluator(ModelEvaluator):
    """A ModelEvaluator scored by accuracy and macro-F1 of predicted class ids."""

    def _predict(self, model: torch.nn.Module, split: str, task_dir: Path | None) -> tuple[list[int], list[int]]:
        """(predicted ids, true ids) of one split of ``task_dir`` (default: the task's own data)."""
        raise NotImplementedError

    def _scores(self, model: torch.nn.Module, split: str, task_dir: Path | None = None) -> dict:
        preds, labels = self._predict(model, split, task_dir)
        return {"accuracy": accuracy(preds, labels), "macro_f1": macro_f1(preds, labels), "examples": len(labels)}

    def score(self, model: torch.nn.Module, split: str) -> dict:
        return self._scores(model, split)

    def general(self, model: torch.nn.Module) -> GeneralScore | None:
        if self.config.general_task is None:
            return None
        return accuracy_score(self._scores(model, "test", self.config.general_task)["accuracy"])

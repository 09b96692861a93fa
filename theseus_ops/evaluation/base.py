"""What every built-in evaluator shares: the config, the device, progress, and the model's processor.

``ModelEvaluator`` is also the class a user evaluator may subclass to get loading and the optional
protocol methods for free (see docs/evaluation.md).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

from theseus_ops.errors import InputError
from theseus_ops.evaluation.config import Metric, TaskConfig
from theseus_ops.evaluation.device import eval_device
from theseus_ops.evaluation.loading import load_model
from theseus_ops.evaluation.results import GeneralScore, Scores

log = logging.getLogger("theseus_ops")
Report = Callable[[str], None]


class ModelEvaluator:
    """A task's evaluator bound to a config; loads with ``auto_class`` on ``device`` (default ``$THESEUS_DEVICE``).

    ``report`` receives throttled progress lines of long scoring passes (default: the
    ``theseus_ops`` logger, i.e. an Airflow task's log). The tokenizer or image processor of each
    model it loads is remembered beside the model, so :meth:`score` encodes with the model's own.
    """

    auto_class = "AutoModel"
    metrics: tuple[Metric, ...] = ()

    def __init__(self, config: TaskConfig, *, device: str | torch.device | None = None,
                 report: Report | None = None) -> None:
        self.config = config
        self.device = device if isinstance(device, torch.device) else eval_device(device)
        self.report = report if report is not None else log.info
        self._processors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- models ------------------------------------------------------------------------------------
    def load(self, model_dir: str | Path) -> torch.nn.Module:
        model = load_model(model_dir, self.auto_class, self.device)
        self.attach(model, self.load_processor(model_dir))
        return model

    def load_processor(self, model_dir: str | Path):
        """The tokenizer or image processor scoring needs for this model directory (None: none needed)."""
        return None

    def attach(self, model: torch.nn.Module, processor) -> torch.nn.Module:
        """Score ``model`` (loaded elsewhere) with ``processor``: its tokenizer or image processor."""
        self._processors[model] = processor
        return model

    def processor(self, model: torch.nn.Module):
        if model not in self._processors:
            raise InputError("this model was not loaded by the evaluator; load it with load() or attach() its "
                             "tokenizer first")
        return self._processors[model]

    # -- the protocol ----------------------------------------------------------------------------------
    def score(self, model: torch.nn.Module, split: str) -> Scores:  # pragma: no cover - every kind overrides
        raise NotImplementedError

    def general(self, model: torch.nn.Module) -> GeneralScore | None:
        return None

    def calibration(self, model_dir: str | Path, limit: int) -> dict[str, torch.Tensor] | None:
        return None

    def limited(self, rows: list) -> list:
        return rows if self.config.limit is None else rows[: self.config.limit]

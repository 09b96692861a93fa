"""The evaluator of a task config: a built-in kind's, or the user evaluator it names."""

from __future__ import annotations

import torch

from theseus_ops.evaluation.base import Report
from theseus_ops.evaluation.config import (
    CLASSIFICATION,
    CUSTOM,
    GENERATION,
    IMAGE_CLASSIFICATION,
    PERPLEXITY,
    Metric,
    TaskConfig,
)
from theseus_ops.evaluation.protocol import Evaluator


def evaluator_for(config: TaskConfig, *, device: str | torch.device | None = None,
                  report: Report | None = None) -> Evaluator:
    """The evaluator scoring ``config``'s task (``device``/``report`` apply to the built-in kinds)."""
    if config.task_kind == CUSTOM:
        from theseus_ops.evaluation.user import load_user_evaluator

        return load_user_evaluator(config)
    if config.task_kind == GENERATION:
        from theseus_ops.evaluation.generation import GenerationEvaluator as cls
    elif config.task_kind == CLASSIFICATION:
        from theseus_ops.evaluation.classification import ClassificationEvaluator as cls
    elif config.task_kind == IMAGE_CLASSIFICATION:
        from theseus_ops.evaluation.image import ImageClassificationEvaluator as cls
    else:
        assert config.task_kind == PERPLEXITY, config.task_kind
        from theseus_ops.evaluation.perplexity import PerplexityEvaluator as cls
    return cls(config, device=device, report=report)


def metric_of(evaluator: Evaluator, name: str) -> Metric:
    for metric in evaluator.metrics:
        if metric.name == name:
            return metric
    from theseus_ops.errors import InputError

    raise InputError(f"the evaluator does not report metric {name!r} ({', '.join(m.name for m in evaluator.metrics)})")


def tie_metric_of(evaluator: Evaluator, name: str) -> Metric | None:
    """The metric that breaks ties on ``name``: the first other one the evaluator reports."""
    return next((m for m in evaluator.metrics if m.name != name), None)

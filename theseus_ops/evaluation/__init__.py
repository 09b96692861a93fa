"""Scoring models on tasks, and the one sweep-and-select routine that picks a transported delta's α.

Task kinds (``generation``, ``classification``, ``image-classification``, ``perplexity``, and
``custom`` for user evaluators) share one protocol, :class:`Evaluator`: ``load`` a model once,
``score`` it per split, measure its ``general`` capability, and encode ``calibration`` inputs.
:func:`sweep_and_select` adds α·δ to the loaded model in place per candidate. See
docs/evaluation.md.

This module imports no model runtime itself (the catalog schema reads the kind names from
:mod:`theseus_ops.evaluation.config`); the heavy entry points load on first use.
"""

from __future__ import annotations

from importlib import import_module

from theseus_ops.evaluation.config import EVALUATOR_GROUP, TASK_KIND_METRICS, TASK_KINDS, Metric, TaskConfig
from theseus_ops.evaluation.protocol import Evaluator
from theseus_ops.evaluation.results import Candidate, GeneralScore, NotApplicable, Selection, SweepPoint

_LAZY = {
    "evaluator_for": "theseus_ops.evaluation.registry",
    "sweep_and_select": "theseus_ops.evaluation.sweep",
    "score_at": "theseus_ops.evaluation.sweep",
    "ModelEvaluator": "theseus_ops.evaluation.base",
    "DeltaApplier": "theseus_ops.evaluation.delta",
    "eval_device": "theseus_ops.evaluation.device",
}

__all__ = ["EVALUATOR_GROUP", "TASK_KINDS", "TASK_KIND_METRICS", "Candidate", "Evaluator", "GeneralScore", "Metric",
           "NotApplicable", "Selection", "SweepPoint", "TaskConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

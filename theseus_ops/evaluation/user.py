"""User evaluators: a task's ``evaluator`` names ``module:function`` or an entry point in ``theseus_ops.evaluators``.

The named object is called with the task's :class:`TaskConfig` and must return an object with
the :class:`~theseus_ops.evaluation.protocol.Evaluator` protocol's ``metrics``, ``load`` and
``score`` (``general`` and ``calibration`` are optional). It is wrapped so the rest of the
library can rely on the whole protocol, and every score it returns is checked.
"""

from __future__ import annotations

import importlib
import math
from importlib import metadata
from pathlib import Path

import torch

from theseus_ops.errors import InputError
from theseus_ops.evaluation.config import EVALUATOR_GROUP, Metric, TaskConfig, check_evaluator_name
from theseus_ops.evaluation.results import GeneralScore, Scores


def resolve(name: str):
    """The object ``module:attr`` (dotted attribute paths allowed) or entry point ``name`` refers to."""
    check_evaluator_name(name)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            obj = importlib.import_module(module_name)
        except ImportError as exc:
            raise InputError(f"evaluator {name}: cannot import module {module_name} ({exc})") from exc
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise InputError(f"evaluator {name}: {module_name} has no attribute {attr}")
            obj = getattr(obj, part)
        return obj
    found = [ep for ep in metadata.entry_points(group=EVALUATOR_GROUP) if ep.name == name]
    if not found:
        known = sorted({ep.name for ep in metadata.entry_points(group=EVALUATOR_GROUP)})
        raise InputError(f"evaluator {name!r} is not module:function nor an installed entry point of group "
                         f"{EVALUATOR_GROUP} (installed: {', '.join(known) or 'none'})")
    try:
        return found[0].load()
    except Exception as exc:  # the user's package failed to import: one line naming it
        raise InputError(f"evaluator {name}: entry point {found[0].value} does not load "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc


def _metrics(value, name: str) -> tuple[Metric, ...]:
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    metrics = tuple(Metric(m) if isinstance(m, str) else m for m in items)
    if not metrics or not all(isinstance(m, Metric) for m in metrics):
        raise InputError(f"evaluator {name}: 'metrics' must list the names (or Metric objects) its score returns")
    return metrics


class UserEvaluator:
    """A user's evaluator behind the full protocol, its scores checked to hold the task's metric as numbers."""

    def __init__(self, config: TaskConfig, inner, name: str) -> None:
        for attr in ("load", "score"):
            if not callable(getattr(inner, attr, None)):
                raise InputError(f"evaluator {name}: the object it makes has no {attr}() method "
                                 "(see the Evaluator protocol in docs/evaluation.md)")
        self.config, self.inner, self.name = config, inner, name
        self.metrics = _metrics(getattr(inner, "metrics", None), name)
        names = [m.name for m in self.metrics]
        if config.metric not in names:
            raise InputError(f"evaluator {name} does not report metric {config.metric!r} (it reports "
                             f"{', '.join(names)})")

    def load(self, model_dir: str | Path) -> torch.nn.Module:
        return self.inner.load(model_dir)

    def score(self, model: torch.nn.Module, split: str) -> Scores:
        scores = self.inner.score(model, split)
        if not isinstance(scores, dict):
            raise InputError(f"evaluator {self.name}: score() returned {type(scores).__name__}, not a dict of metrics")
        for metric in self.metrics:
            value = scores.get(metric.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InputError(f"evaluator {self.name}: score() on {split} gave {metric.name}={value!r}, "
                                 "not a finite number")
        return dict(scores)

    def general(self, model: torch.nn.Module) -> GeneralScore | None:
        general = getattr(self.inner, "general", None)
        result = general(model) if callable(general) else None
        if result is not None and not isinstance(result, GeneralScore):
            raise InputError(f"evaluator {self.name}: general() must return a GeneralScore or None")
        return result

    def calibration(self, model_dir: str | Path, limit: int) -> dict[str, torch.Tensor] | None:
        calibration = getattr(self.inner, "calibration", None)
        return calibration(model_dir, limit) if callable(calibration) else None


def load_user_evaluator(config: TaskConfig) -> UserEvaluator:
    """The evaluator ``config.evaluator`` names, made with ``config``."""
    assert config.evaluator is not None
    factory = resolve(config.evaluator)
    if not callable(factory):
        raise InputError(f"evaluator {config.evaluator} is a {type(factory).__name__}, not a function or class")
    try:
        inner = factory(config)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"evaluator {config.evaluator} failed to start ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    return UserEvaluator(config, inner, config.evaluator)

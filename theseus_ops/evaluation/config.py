"""What a task is: its kind, its metric, where its data lives, and how to score it.

Torch-free on purpose: the catalog schema validates a task vector's evaluation tags against
these names without importing a model runtime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from theseus_ops.errors import InputError

GENERATION = "generation"
CLASSIFICATION = "classification"
IMAGE_CLASSIFICATION = "image-classification"
PERPLEXITY = "perplexity"
CUSTOM = "custom"  # scored by a user evaluator (``TaskConfig.evaluator``)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Metric:
    """A score's name and direction; selection, the gate and the tie-break all read the direction."""

    name: str
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"a metric needs a non-empty name, got {self.name!r}")


# Each built-in kind's metrics, the default (primary) first; the next one breaks ties on the primary.
TASK_KIND_METRICS: dict[str, tuple[Metric, ...]] = {
    GENERATION: (Metric("exact_match"), Metric("token_accuracy")),
    CLASSIFICATION: (Metric("accuracy"), Metric("macro_f1")),
    IMAGE_CLASSIFICATION: (Metric("accuracy"), Metric("macro_f1")),
    PERPLEXITY: (Metric("lm_loss", higher_is_better=False), Metric("perplexity", higher_is_better=False)),
}
TASK_KINDS: tuple[str, ...] = (*TASK_KIND_METRICS, CUSTOM)
# Names users have cataloged that mean a kind's own metric ("accuracy" of a generation task is its
# exact match, as the workflow has always scored it).
METRIC_ALIASES: dict[str, dict[str, str]] = {GENERATION: {"accuracy": "exact_match"}}

# ``package.module:function`` (a factory or class), or an entry-point name in EVALUATOR_GROUP
EVALUATOR_GROUP = "theseus_ops.evaluators"
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_EVALUATOR = re.compile(rf"^(?:{_DOTTED}:{_DOTTED}|[A-Za-z0-9][A-Za-z0-9._-]*)$")


def check_task_kind(task_kind: str) -> str:
    if task_kind not in TASK_KINDS:
        raise InputError(f"unknown task kind {task_kind!r}; known: {', '.join(TASK_KINDS)}")
    return task_kind


def check_evaluator_name(name: str) -> str:
    """A user evaluator reference must be ``module:function`` or an entry-point name."""
    if not isinstance(name, str) or not _EVALUATOR.match(name):
        raise InputError(f"evaluator {name!r} is neither module:function nor an entry-point name "
                         f"(group {EVALUATOR_GROUP})")
    return name


def resolve_metric(task_kind: str, metric: str | None) -> str:
    """The kind's metric a name means (its default when None); InputError for one the kind lacks.

    A ``custom`` kind's metric is whatever its evaluator reports; it is checked once the evaluator
    is loaded (:func:`theseus_ops.evaluation.registry.evaluator_for`).
    """
    check_task_kind(task_kind)
    if task_kind == CUSTOM:
        if metric is None:
            raise InputError("a custom task needs the name of the metric its evaluator reports")
        return metric
    known = [m.name for m in TASK_KIND_METRICS[task_kind]]
    if metric is None:
        return known[0]
    metric = METRIC_ALIASES.get(task_kind, {}).get(metric, metric)
    if metric not in known:
        raise InputError(f"metric {metric!r} is not one a {task_kind} task measures ({', '.join(known)})")
    return metric


def _positive(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class TaskConfig:
    """How one task is scored; built from a task vector's catalog tags or by hand.

    ``dataset``: the local task directory (split files per kind, see docs/evaluation.md).
    ``heldout``: a text file for the general-capability LM loss of language models.
    ``general_task``: a second task directory of the same kind the fine-tune did not touch; its
    test accuracy is the general-capability measure of classifiers. ``chat_template``: wrap each
    generation prompt in the tokenizer's chat template. ``max_new_tokens``: generation budget (None:
    the longest answer of the batch, which is all exact match can compare). ``limit``: score only the
    first N rows of each split. ``evaluator``: the user evaluator of a ``custom`` task.
    """

    task_kind: str = GENERATION
    metric: str | None = None
    dataset: Path | None = None
    heldout: Path | None = None
    general_task: Path | None = None
    chat_template: bool = False
    max_new_tokens: int | None = None
    batch_size: int = 64
    max_length: int = 512
    limit: int | None = None
    evaluator: str | None = None

    def __post_init__(self) -> None:
        check_task_kind(self.task_kind)
        object.__setattr__(self, "metric", resolve_metric(self.task_kind, self.metric))
        for name in ("dataset", "heldout", "general_task"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if self.task_kind == CUSTOM and self.evaluator is None:
            raise InputError("a custom task needs an evaluator (module:function or an entry-point name)")
        if self.evaluator is not None:
            if self.task_kind != CUSTOM:
                raise InputError(f"an evaluator scores a custom task; this task's kind is {self.task_kind}")
            check_evaluator_name(self.evaluator)
        elif self.dataset is None:
            raise InputError(f"a {self.task_kind} task needs its dataset directory")
        if not isinstance(self.chat_template, bool):
            raise InputError(f"chat_template must be true or false, got {self.chat_template!r}")
        if self.chat_template and self.task_kind not in (GENERATION, CUSTOM):
            raise InputError(f"chat_template applies to generation tasks, not {self.task_kind}")
        for name in ("max_new_tokens", "limit"):
            if getattr(self, name) is not None:
                _positive(getattr(self, name), name)
        _positive(self.batch_size, "batch_size")
        _positive(self.max_length, "max_length")

    @property
    def data_dir(self) -> Path:
        """The dataset directory (InputError for a custom task that has none)."""
        if self.dataset is None:
            raise InputError(f"this {self.task_kind} task has no dataset directory")
        return self.dataset

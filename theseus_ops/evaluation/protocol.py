"""The evaluator protocol every task kind implements, built-in or supplied by a user.

The sweep loads the target model once (:meth:`Evaluator.load`), then adds α·δ to its weights in
place for every candidate and calls :meth:`Evaluator.score` per split, so an evaluator must never
reload or copy the model it is given: it scores whatever weights the model holds at the call.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from theseus_ops.evaluation.config import Metric, TaskConfig
    from theseus_ops.evaluation.results import GeneralScore, Scores


@runtime_checkable
class Evaluator(Protocol):
    """Scores one task.

    ``metrics``: every score :meth:`score` returns, with its direction; the task's metric ranks
    candidates and the next metric in this tuple breaks its ties. ``load``: the model of a model
    directory, on the scoring device, in eval mode (the evaluator remembers that model's tokenizer
    or image processor). ``score``: the metrics of ``model`` on a split (``train``, ``val``,
    ``test``). ``general``: a general-capability measure, or None when the task has no data for it.
    ``calibration``: inputs of the train split encoded for the model directory's own tokenizer or
    processor (``input_ids``/``attention_mask``/``labels`` or ``pixel_values``), for the methods
    that align on data, or None when the task cannot provide them.
    """

    config: TaskConfig
    metrics: tuple[Metric, ...]

    def load(self, model_dir: str | Path) -> torch.nn.Module: ...

    def score(self, model: torch.nn.Module, split: str) -> Scores: ...

    def general(self, model: torch.nn.Module) -> GeneralScore | None: ...

    def calibration(self, model_dir: str | Path, limit: int) -> dict[str, torch.Tensor] | None: ...

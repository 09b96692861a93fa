"""``perplexity`` tasks: the held-out LM loss on the task's own text as the task metric (lower is better).

A split is ``<split>.txt``; its score is the mean next-token NLL over consecutive windows
(``lm_loss``) and ``perplexity = exp(lm_loss)``. General capability is the LM loss on
``TaskConfig.heldout``, a text outside the task.
"""

from __future__ import annotations

from pathlib import Path

import torch

from theseus_ops.evaluation.base import ModelEvaluator
from theseus_ops.evaluation.batches import right_pad
from theseus_ops.evaluation.config import PERPLEXITY, TASK_KIND_METRICS
from theseus_ops.evaluation.data import read_text, split_file
from theseus_ops.evaluation.decoding import special_ids
from theseus_ops.evaluation.general import HeldoutLoss
from theseus_ops.evaluation.lm import WINDOW, text_ids, token_lm_loss, windows_of
from theseus_ops.evaluation.loading import load_tokenizer
from theseus_ops.evaluation.metrics import perplexity
from theseus_ops.evaluation.results import GeneralScore


class PerplexityEvaluator(ModelEvaluator):
    auto_class = "AutoModelForCausalLM"
    metrics = TASK_KIND_METRICS[PERPLEXITY]

    def __init__(self, config, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self._texts: dict[str, str] = {}
        self._ids: dict[tuple[int, str], tuple[object, list[int]]] = {}  # holds the tokenizer: ids stay unique
        self._heldout = HeldoutLoss(config.heldout, self.report)

    def load_processor(self, model_dir: str | Path):
        return load_tokenizer(model_dir)

    def text(self, split: str) -> str:
        if split not in self._texts:
            self._texts[split] = read_text(split_file(self.config.data_dir, split, ".txt"), "task split")
        return self._texts[split]

    def ids(self, tokenizer, split: str) -> list[int]:
        key = (id(tokenizer), split)
        if key not in self._ids:
            self._ids[key] = (tokenizer, text_ids(tokenizer, self.text(split)))
        return self._ids[key][1]

    def _windows(self) -> int:
        return self.config.limit or 64

    def score(self, model: torch.nn.Module, split: str) -> dict:
        tokenizer = self.processor(model)
        pad_id, _eos = special_ids(model, tokenizer)
        loss = token_lm_loss(model, self.ids(tokenizer, split), pad_id=pad_id, max_windows=self._windows(),
                             batch_size=self.config.batch_size, report=self.report, what=split)
        return {"lm_loss": loss, "perplexity": perplexity(loss)}

    def general(self, model: torch.nn.Module) -> GeneralScore | None:
        return self._heldout.score(model, self.processor(model))

    def calibration(self, model_dir: str | Path, limit: int) -> dict[str, torch.Tensor]:
        """Windows of the train text in this directory's tokenizer, as next-token labels."""
        tokenizer = load_tokenizer(model_dir)
        windows = windows_of(text_ids(tokenizer, self.text("train")), WINDOW, limit)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        ids, mask = right_pad(windows, pad)
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

"""Scoring a target base plus α·τ on a task split, with the target's own tokenizer, without writing models.

Reuses the demo harness's metrics (``theseus_ops.demo.evaluate``: greedy exact match, teacher-forced
answer-token accuracy, held-out LM loss); only the encoding comes from the model directory's
tokenizer, which for the demo's byte-level tokenizer gives exactly the demo's ids.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from theseus_ops.demo import evaluate as ev
from theseus_ops.errors import InputError

Encoder = Callable[[str], list[int]]


def load_tokenizer(model_dir: str | Path):
    """The model directory's own tokenizer; a base without one cannot be calibrated or scored."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds; the user gets one line
        raise InputError(f"{model_dir}: cannot load its tokenizer ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc


def encoder_of(tokenizer) -> Encoder:
    """Text to ids with no special tokens, so prompt and answer ids concatenate like the demo's bytes."""
    return lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])


def calibration_tensors(rows: list[tuple[str, str]], encode: Encoder, pad_id: int) -> dict[str, torch.Tensor]:
    """Prompt+answer rows, right-padded, labels on the answer only (as ``demo.train.example_data``)."""
    encoded = [(encode(p), encode(a)) for p, a in rows]
    length = max(len(p) + len(a) for p, a in encoded)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (p, a) in enumerate(encoded):
        seq = p + a
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(p): len(seq)] = torch.tensor(a)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def dense_delta(path: str | Path, target_dir: str | Path) -> dict[str, torch.Tensor]:
    """A task vector (full or LoRA) as dense deltas keyed like the target's state dict."""
    from theseus_ops.io.models import inspect_model_dir
    from theseus_ops.io.task_vectors import read_task_vector
    from theseus_ops.transport.engine import storage_delta

    tv = read_task_vector(path)
    family = inspect_model_dir(target_dir).family
    return {name: storage_delta(family, name, tv).float() for name in tv.names()}


class Scorer:
    """One target base loaded once on the CPU; scores base + α·δ by swapping its state dict."""

    def __init__(self, model_dir: str | Path) -> None:
        import transformers

        self.tokenizer = load_tokenizer(model_dir)
        self.encode = encoder_of(self.tokenizer)
        try:
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                str(model_dir), local_files_only=True, dtype=torch.float32).eval()
        except Exception as exc:
            raise InputError(f"{model_dir}: cannot load ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        self.base = {k: v.clone() for k, v in self.model.state_dict().items()}

    def _set(self, delta: dict[str, torch.Tensor] | None, alpha: float) -> None:
        if delta is None or alpha == 0:
            self.model.load_state_dict(self.base)
        else:
            self.model.load_state_dict({k: (v + alpha * delta[k].to(v.dtype)) if k in delta else v
                                        for k, v in self.base.items()})

    def score(self, delta: dict[str, torch.Tensor] | None, alpha: float, rows: list[tuple[str, str]]) -> dict:
        self._set(delta, alpha)
        return ev.score_rows(self.model, rows, encode=self.encode).as_dict()

    def general_loss(self, delta: dict[str, torch.Tensor] | None, alpha: float, text: str) -> float:
        self._set(delta, alpha)
        return ev.lm_loss(self.model, text, encode=self.encode)

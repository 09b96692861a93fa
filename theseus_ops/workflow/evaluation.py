"""Scoring a target base plus α·τ on a task split, with the target's own tokenizer, without writing models.

Reuses the demo harness's metrics (``theseus_ops.demo.evaluate``: greedy exact match, teacher-forced
answer-token accuracy, held-out LM loss); only the encoding comes from the model directory's
tokenizer, which for the demo's byte-level tokenizer gives exactly the demo's ids.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from theseus_ops.demo.evaluate import Scorer
from theseus_ops.errors import InputError

Encoder = Callable[[str], list[int]]


def load_tokenizer(model_dir: str | Path):
    """The model directory's own tokenizer; a base without one cannot be calibrated or scored."""
    import transformers

    from theseus_ops.io.models import check_tokenizer_fits, read_config

    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds; the user gets one line
        raise InputError(f"{model_dir}: cannot load its tokenizer ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    check_tokenizer_fits(tokenizer, read_config(Path(model_dir)), model_dir)
    return tokenizer


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


def target_scorer(model_dir: str | Path) -> Scorer:
    """A scorer for a base model on the CPU, encoding with the model's own tokenizer."""
    import transformers

    encode = encoder_of(load_tokenizer(model_dir))
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(model_dir), local_files_only=True, dtype=torch.float32).eval()
    except Exception as exc:
        raise InputError(f"{model_dir}: cannot load ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    return Scorer(model, encode)

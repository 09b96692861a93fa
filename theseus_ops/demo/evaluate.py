"""The demo's ``evaluate`` command and byte-level conveniences over :mod:`theseus_ops.evaluation`.

The metrics, decoding and loss live in the evaluation package; this module only adds the demo's
conventions: text encoded as the byte tokenizer's ids (``encode_bytes``), its pad id, and models
that must be byte-level (the demo family's). The metric names stay importable from here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from theseus_ops.demo.tokenizer import PAD_ID, encode_bytes
from theseus_ops.errors import InputError
from theseus_ops.evaluation.config import TaskConfig
from theseus_ops.evaluation.data import read_text
from theseus_ops.evaluation.decoding import greedy_generate
from theseus_ops.evaluation.generation import GenerationEvaluator, GenerationScore, score_encoded
from theseus_ops.evaluation.lm import token_lm_loss
from theseus_ops.evaluation.metrics import exact_match, lm_loss_from_logits, token_accuracy

__all__ = ["TaskScore", "evaluate_model", "exact_match", "greedy", "lm_loss", "lm_loss_from_logits",
           "load_for_eval", "score_rows", "token_accuracy"]

TaskScore = GenerationScore


def greedy(model: torch.nn.Module, prompts: list[list[int]], new_tokens: int, batch_size: int = 64) -> list[list[int]]:
    """Greedy continuation of byte-id prompts by ``new_tokens`` tokens (no end-of-sequence stop)."""
    return greedy_generate(model, prompts, new_tokens, pad_id=PAD_ID, batch_size=batch_size)


def score_rows(model: torch.nn.Module, rows: list[tuple[str, str]], batch_size: int = 64,
               encode: Callable[[str], list[int]] = encode_bytes) -> TaskScore:
    """Exact match and answer-token accuracy of text rows, prompt and answer encoded separately by ``encode``."""
    encoded = [(encode(p), encode(a)) for p, a in rows]
    return score_encoded(model, encoded, pad_id=PAD_ID, batch_size=batch_size)


def lm_loss(model: torch.nn.Module, text: str, length: int = 128, max_windows: int = 64, batch_size: int = 16,
            encode: Callable[[str], list[int]] = encode_bytes) -> float:
    """Mean next-token NLL (nats) over consecutive token windows of ``text`` encoded by ``encode``."""
    return token_lm_loss(model, encode(text), pad_id=PAD_ID, length=length, max_windows=max_windows,
                         batch_size=batch_size, report=None)


def load_for_eval(model_dir: str | Path):
    """(model, tokenizer) of a demo model directory; its tokenizer is required and must be byte-level."""
    import transformers

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: not a model directory (no config.json)")
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise InputError(f"{model_dir}: no tokenizer (tokenizer.json); save the tokenizer with the model")
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True,
                                                                  dtype=torch.float32).eval()
    except Exception as exc:  # transformers raises many kinds; the user gets one line
        raise InputError(f"{model_dir}: cannot load ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    from theseus_ops.io.models import check_tokenizer_fits

    check_tokenizer_fits(tokenizer, model.config.to_dict(), model_dir)
    probe = "Q: x\nA: y"
    if tokenizer(probe, add_special_tokens=False)["input_ids"] != encode_bytes(probe):
        raise InputError(f"{model_dir}: the harness scores byte-level models; this tokenizer is not byte-level")
    return model, tokenizer


def evaluate_model(model_dir: str | Path, task_dir: str | Path, split: str, heldout: str | Path | None = None,
                   limit: int | None = None) -> dict:
    """The ``evaluate`` command: one model on one task split (+ LM loss on held-out text)."""
    config = TaskConfig(dataset=Path(task_dir), limit=limit)
    started = time.perf_counter()
    evaluator = GenerationEvaluator(config, report=lambda _m: None)
    evaluator.rows(split)  # a malformed split fails before the model loads
    model, tokenizer = load_for_eval(model_dir)
    evaluator.attach(model, tokenizer)
    score = evaluator.score(model, split)
    result = {"model": str(model_dir), "task": str(task_dir), "split": split, **score}
    if heldout is not None:
        result["lm_loss"] = lm_loss(model, read_text(heldout, "held-out text"))
    result["seconds"] = round(time.perf_counter() - started, 3)
    if not all(math.isfinite(v) for v in (score["exact_match"], score["token_accuracy"])):
        raise InputError("evaluation produced a non-finite score")
    return result

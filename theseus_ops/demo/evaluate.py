"""Metrics: exact match under greedy decoding, answer-token accuracy, and held-out LM loss.

The metric functions on plain tensors/lists (``exact_match``, ``token_accuracy``, ``lm_loss_from_logits``)
are separate from the model-running code so tests can check them on hand-made inputs.
Greedy decoding runs batched with left padding and explicit position ids; a prediction is the
first ``len(answer)`` generated tokens, so a correct answer must also end where the reference
ends (answers carry their final newline).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from theseus_ops.demo.skills import load_split
from theseus_ops.demo.tokenizer import PAD_ID, encode_bytes
from theseus_ops.errors import InputError


def exact_match(predictions: list[list[int]], answers: list[list[int]]) -> float:
    """Share of examples whose predicted tokens equal the answer's exactly."""
    if len(predictions) != len(answers) or not answers:
        raise ValueError("exact_match needs as many predictions as answers, at least one")
    return sum(list(p) == list(a) for p, a in zip(predictions, answers)) / len(answers)


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, counted) answer tokens: logits [B, L, V] predict labels shifted by one; -100 is ignored."""
    pred = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    keep = target != -100
    return int((pred[keep] == target[keep]).sum()), int(keep.sum())


def lm_loss_from_logits(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """(summed next-token NLL, counted tokens) where both the position and its successor are real."""
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), target.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return float(loss), int((target != -100).sum())


def _left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


@torch.no_grad()
def greedy(model: torch.nn.Module, prompts: list[list[int]], new_tokens: int, batch_size: int = 64) -> list[list[int]]:
    """Greedy continuation of each prompt by ``new_tokens`` tokens (no early stop, no sampling)."""
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = _left_pad(prompts[start:start + batch_size])
        generated = []
        for _ in range(new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            nxt = logits.argmax(-1)
            generated.append(nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], 1)
        out.extend(torch.stack(generated, 1).tolist() if generated else [[] for _ in range(ids.shape[0])])
    return out


@torch.no_grad()
def answer_token_accuracy(model: torch.nn.Module, rows: list[tuple[list[int], list[int]]],
                          batch_size: int = 64) -> float:
    """Teacher-forced: the share of answer tokens the model ranks first given the true prefix."""
    correct = counted = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        for i, (p, a) in enumerate(chunk):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p): len(p) + len(a)] = torch.tensor(a)
        logits = model(input_ids=ids, attention_mask=(ids != PAD_ID).long()).logits
        c, n = token_accuracy(logits, labels)
        correct, counted = correct + c, counted + n
    return correct / counted


@torch.no_grad()
def lm_loss(model: torch.nn.Module, text: str, length: int = 128, max_windows: int = 64, batch_size: int = 16,
            encode: Callable[[str], list[int]] = encode_bytes) -> float:
    """Mean next-token NLL (nats) over consecutive non-overlapping token windows of held-out text.

    ``encode`` defaults to the demo's byte encoding; pass a tokenizer's encoder for other models.
    """
    ids = encode(text)
    windows = [ids[i:i + length] for i in range(0, len(ids) - 1, length)][:max_windows]
    windows = [w for w in windows if len(w) > 1]
    if not windows:
        raise InputError("the held-out text is too short to measure LM loss")
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        width = max(len(w) for w in chunk)
        batch = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros_like(batch)
        for i, w in enumerate(chunk):
            batch[i, : len(w)] = torch.tensor(w)
            mask[i, : len(w)] = 1
        s, n = lm_loss_from_logits(model(input_ids=batch, attention_mask=mask).logits, batch, mask)
        total, count = total + s, count + n
    return total / count


@dataclass(frozen=True)
class TaskScore:
    exact_match: float
    token_accuracy: float
    examples: int

    def as_dict(self) -> dict:
        return {"exact_match": self.exact_match, "token_accuracy": self.token_accuracy, "examples": self.examples}


def score_rows(model: torch.nn.Module, rows: list[tuple[str, str]], batch_size: int = 64,
               encode: Callable[[str], list[int]] = encode_bytes) -> TaskScore:
    """Exact match and answer-token accuracy; prompt and answer are encoded separately with ``encode``
    (the demo's bytes by default, so a tokenizer must not merge across the prompt/answer boundary)."""
    encoded = [(encode(p), encode(a)) for p, a in rows]
    preds = greedy(model, [p for p, _ in encoded], max(len(a) for _, a in encoded), batch_size)
    em = exact_match([pr[: len(a)] for pr, (_, a) in zip(preds, encoded)], [a for _, a in encoded])
    return TaskScore(em, answer_token_accuracy(model, encoded, batch_size), len(rows))


def load_for_eval(model_dir: str | Path):
    """(model, tokenizer) from a local model directory; a tokenizer is required, as for any user."""
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
    rows = load_split(task_dir, split)
    if limit is not None:
        rows = rows[:limit]
    started = time.perf_counter()
    model, _tokenizer = load_for_eval(model_dir)
    score = score_rows(model, rows)
    result = {"model": str(model_dir), "task": str(task_dir), "split": split, **score.as_dict()}
    if heldout is not None:
        path = Path(heldout)
        if not path.is_file():
            raise InputError(f"held-out text {path} does not exist")
        result["lm_loss"] = lm_loss(model, path.read_text(encoding="utf-8", errors="replace"))
    result["seconds"] = round(time.perf_counter() - started, 3)
    if not all(math.isfinite(v) for v in (score.exact_match, score.token_accuracy)):
        raise InputError("evaluation produced a non-finite score")
    return result


class Scorer:
    """One model loaded once; scores base + α·δ by swapping its state dict (no model files written)."""

    def __init__(self, model: torch.nn.Module, encode: Callable[[str], list[int]] = encode_bytes) -> None:
        self.model, self.encode = model, encode
        self.base = {k: v.clone() for k, v in model.state_dict().items()}

    def _set(self, delta: dict[str, torch.Tensor] | None, alpha: float) -> None:
        if delta is None or alpha == 0:
            self.model.load_state_dict(self.base)
        else:
            self.model.load_state_dict({k: (v + alpha * delta[k].to(v.dtype)) if k in delta else v
                                        for k, v in self.base.items()})

    def score(self, delta: dict[str, torch.Tensor] | None, alpha: float, rows: list[tuple[str, str]]) -> dict:
        self._set(delta, alpha)
        return score_rows(self.model, rows, encode=self.encode).as_dict()

    def general_loss(self, delta: dict[str, torch.Tensor] | None, alpha: float, text: str) -> float:
        self._set(delta, alpha)
        return lm_loss(self.model, text, encode=self.encode)

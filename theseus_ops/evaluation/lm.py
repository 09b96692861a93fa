"""Held-out language-model loss: mean next-token NLL over consecutive token windows of a text.

The general-capability measure of every language model, and the task metric of ``perplexity``
tasks. Windows are right-padded with a length mask, so the pad id never counts as a token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from theseus_ops.errors import InputError
from theseus_ops.evaluation.batches import chunks, right_pad
from theseus_ops.evaluation.device import model_device
from theseus_ops.evaluation.metrics import lm_loss_from_logits
from theseus_ops.progress import Ticker

WINDOW = 128
MAX_WINDOWS = 64
BATCH = 16


def windows_of(ids: Sequence[int], length: int = WINDOW, max_windows: int = MAX_WINDOWS) -> list[list[int]]:
    """Consecutive non-overlapping windows of at least two tokens (a loss needs a successor)."""
    windows = [list(ids[i:i + length]) for i in range(0, len(ids) - 1, length)][:max_windows]
    return [w for w in windows if len(w) > 1]


@torch.no_grad()
def token_lm_loss(model: torch.nn.Module, ids: Sequence[int], *, pad_id: int, length: int = WINDOW,
                  max_windows: int = MAX_WINDOWS, batch_size: int = BATCH,
                  report: Callable[[str], None] | None = None, what: str = "lm loss") -> float:
    """Mean next-token NLL (nats) of ``model`` on token ids ``ids``, window by window."""
    windows = windows_of(ids, length, max_windows)
    if not windows:
        raise InputError("the held-out text is too short to measure LM loss")
    device = model_device(model)
    parts = list(chunks(len(windows), batch_size))
    ticker = Ticker(len(parts))
    total, count = 0.0, 0
    for k, part in enumerate(parts, 1):
        batch, mask = (t.to(device) for t in right_pad(windows[part], pad_id))
        s, n = lm_loss_from_logits(model(input_ids=batch, attention_mask=mask).logits, batch, mask)
        total, count = total + s, count + n
        ticker.tick(k, report if len(parts) > 1 else None, f"{what}: batch")
    return total / count


def text_ids(tokenizer, text: str, length: int = WINDOW, max_windows: int = MAX_WINDOWS) -> list[int]:
    """A text as the tokenizer's ids, without special tokens (windows are cut from the middle of a corpus).

    Only a prefix long enough for every window is tokenized (no token spans 32 characters), so a
    large corpus costs no more than the windows scored from it.
    """
    prefix = text[: length * max_windows * 32]
    return list(tokenizer(prefix, add_special_tokens=False)["input_ids"])

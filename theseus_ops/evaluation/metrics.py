"""Metric functions on plain tensors and lists, apart from any model, so tests check them by hand.

Masks are always built from sequence lengths, never by comparing ids with a pad id: in real
vocabularies id 0 (or whatever the pad is) is an ordinary token that answers and prompts contain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def exact_match(predictions: Sequence[Sequence[int]], answers: Sequence[Sequence[int]]) -> float:
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


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Share of predictions equal to their label."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError("accuracy needs as many predictions as labels, at least one")
    return sum(int(p) == int(t) for p, t in zip(predictions, labels)) / len(labels)


def macro_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over every class that occurs as a label or a prediction.

    A class that is predicted but never true (or the reverse) scores F1 0, so a classifier cannot
    hide a wrong majority guess behind the accuracy of the other classes.
    """
    if len(predictions) != len(labels) or not labels:
        raise ValueError("macro_f1 needs as many predictions as labels, at least one")
    classes = sorted({int(x) for x in predictions} | {int(x) for x in labels})
    scores = []
    for c in classes:
        tp = sum(int(p) == c and int(t) == c for p, t in zip(predictions, labels))
        fp = sum(int(p) == c and int(t) != c for p, t in zip(predictions, labels))
        fn = sum(int(p) != c and int(t) == c for p, t in zip(predictions, labels))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def perplexity(loss: float) -> float:
    """exp(mean NLL in nats); inf rather than an OverflowError for a diverged model."""
    return math.exp(loss) if loss < 700 else math.inf

"""Padding token rows into batches: left for generation, right for teacher forcing, prompt+answer with labels.

The one place prompt+answer rows become ``input_ids``/``attention_mask``/``labels`` (calibration,
answer-token accuracy and the demo's fine-tuning all use it). Masks come from row lengths; the pad
id is only a filler under a zero mask, so any id of the vocabulary is safe there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def chunks(count: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` over ``count`` items."""
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) with every row ending at the last column, as generation continues it."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(list(r))
            mask[i, width - len(r):] = 1
    return ids, mask


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) with every row starting at column 0."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, : len(r)] = torch.tensor(list(r))
            mask[i, : len(r)] = 1
    return ids, mask


def prompt_answer_batch(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
                        length: int | None = None) -> dict[str, torch.Tensor]:
    """Prompt+answer rows right-padded (cut to ``length`` if given); labels on the answer only, -100 elsewhere."""
    length = length or max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        seq = (list(p) + list(a))[:length]
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        if len(seq) > len(p):
            labels[i, len(p): len(seq)] = torch.tensor(seq[len(p):])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}

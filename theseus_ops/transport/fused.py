"""Fused projections: one weight whose output axis holds several spaces (q, k, v; gate, up).

A :class:`~theseus_ops.transport.architecture.Split` says how: ``groups`` repeats of the parts, each part
contiguous inside its group. GPT-2's ``c_attn`` and Phi-3's ``qkv_proj`` and ``gate_up_proj`` are
one group; GPT-NeoX's ``query_key_value`` is one group per head ([q_h, k_h, v_h] for each head h).
Splitting gathers each part across groups, in group order, so a part's rows are head-major like
an unfused projection's; merging is the inverse, for the target's own split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from theseus_ops.errors import InputError

if TYPE_CHECKING:  # imported by the rules, which the architecture loader imports: no import back at run time
    from theseus_ops.transport.architecture import Split


def split_rows(x: torch.Tensor, split: Split, what: str) -> list[torch.Tensor]:
    """The parts of a fused leading axis, each [groups · part width, ...]."""
    widths = split.widths(x.shape[0], what)
    grouped = x.reshape(split.groups, sum(widths), *x.shape[1:])
    return [p.reshape(split.groups * w, *x.shape[1:]) for p, w in zip(grouped.split(list(widths), dim=1), widths,
                                                                       strict=True)]


def merge_rows(parts: list[torch.Tensor], split: Split, what: str) -> torch.Tensor:
    """The fused leading axis of ``parts`` (each [groups · part width, ...]) under ``split``."""
    total = sum(p.shape[0] for p in parts)
    widths = split.widths(total, what)
    if [p.shape[0] for p in parts] != [split.groups * w for w in widths]:
        raise InputError(f"{what}: parts of widths {[p.shape[0] for p in parts]} do not fit the target's fused "
                         f"layout ({split.groups} group(s) in proportion {list(split.ratio)})")
    grouped = [p.reshape(split.groups, w, *p.shape[1:]) for p, w in zip(parts, widths, strict=True)]
    return torch.cat(grouped, dim=1).reshape(total, *parts[0].shape[1:])


def select_part(value: torch.Tensor, split: Split, part: int, what: str) -> torch.Tensor:
    """Part ``part`` of a fused trailing axis (an activation [..., fused width]), head-major."""
    widths = split.widths(value.shape[-1], what)
    grouped = value.reshape(*value.shape[:-1], split.groups, sum(widths))
    start = sum(widths[:part])
    return grouped[..., start:start + widths[part]].reshape(*value.shape[:-1], split.groups * widths[part])

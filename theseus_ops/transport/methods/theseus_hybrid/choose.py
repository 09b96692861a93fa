"""The hybrid's split of the calibration examples and its per-space choice (see ``method``)."""

from __future__ import annotations

import math

import torch

from theseus_ops.errors import InputError
from theseus_ops.transport.maps import moment_residual, pad_map

Inputs = dict[str, torch.Tensor]


def split_examples(source: Inputs, target: Inputs, holdout: float) -> tuple[tuple[Inputs, Inputs],
                                                                              tuple[Inputs, Inputs]]:
    """The last ``holdout`` share of the examples (at least one) held out; the same rows of both models."""
    total = next(iter(source.values())).shape[0]
    held = max(1, math.floor(total * holdout))
    if total - held < 2:
        raise InputError(f"theseus-hybrid needs at least 3 calibration examples (2 to estimate, 1 held out); "
                         f"got {total}")
    cut = total - held

    def part(inputs: Inputs, rows: slice) -> Inputs:
        return {k: v[rows] for k, v in inputs.items()}

    return ((part(source, slice(0, cut)), part(target, slice(0, cut))),
            (part(source, slice(cut, None)), part(target, slice(cut, None))))


def held_out_residual(stats, t: torch.Tensor) -> float:
    """‖X_A T − X_B‖ / ‖X_B‖ on held-out rows, from their moments (with the source Gram); 0 without rows' energy."""
    if float(stats.sq_b) <= 0:
        return 0.0
    t = t.to(stats.cross)
    return moment_residual(t, stats.cross, float(stats.sq_a), float(stats.sq_b), stats.gram_a)


def choose_maps(maps: dict[str, torch.Tensor], held: dict) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Each space's map with the smaller held-out residual (Procrustes on a tie), and the record of each choice.

    A space the held-out rows do not reach (no statistics) keeps its Procrustes map.
    """
    chosen, record = {}, {}
    for key, t in maps.items():
        stats = held.get(key)
        if stats is None or stats.rows == 0:
            chosen[key] = t
            continue
        e = pad_map(t.shape[0], t.shape[1], torch.float64).to(stats.cross.device)
        r_t, r_e = held_out_residual(stats, t), held_out_residual(stats, e)
        use_pad = r_e < r_t
        chosen[key] = e.to(t) if use_pad else t
        record[key] = {"choice": "pad" if use_pad else "procrustes", "residual_procrustes": round(r_t, 6),
                       "residual_pad": round(r_e, 6)}
    return chosen, record

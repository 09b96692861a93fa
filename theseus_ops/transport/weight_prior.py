"""A weight-matching prior for the directions calibration data leaves open (the ``weights`` fill).

Where the data determines a space's map only partly (a LayerNorm output never moves along its
mean direction, a pooled space sees one row per example, massive activations leave most of a real
model's residual stream below the rank tolerance), the rest of the map must come from something that
depends on neither model's coordinate order, or a permuted target would receive a different task
vector. The base weights are such a thing: the map T_s of space s should also carry A's weights onto
B's. With every other space's map held at its data estimate, the score

    S(T) = Σ_p ⟨rule_p(W_A[p]; T), W_B[p]⟩

(each parameter moved by its own transport rule, compared with the target's parameter) is linear in
T_s, and its gradient G_s = ∂S/∂T_s is the weight-matching cross moment of the space: for a linear
weight reading s it is W_Aᵀ T_out W_B, for one writing s it is W_A T_in W_Bᵀ, for an embedding table
E_Aᵀ E_B over the shared vocabulary, for a norm or bias γ_A γ_Bᵀ. The rules are equivariant, so G_s is
too; on an identical or permuted target it is that permutation times a positive semi-definite
matrix, which is why a map completed from it stays exact there.

A backward pass through each parameter's rule gives its share of every G_s it touches (autograd), so the
prior costs about one transport of the base weights, and no decomposition; taken parameter by parameter,
its memory is one parameter's graph.

A space that no weight reads and only a norm writes (CLIP's pooled ``post_layernorm``, seen on one
token per image) gets almost nothing from its weights. The architecture then says which space it
follows (``SiteSpec.follows``): an elementwise op keeps its input's coordinates, so that space's
map, itself equivariant, joins the prior (:func:`with_followed_maps`).

The weights are first stripped of their float32 rounding (:func:`without_rounding_noise`). A weight of
low rank (trained q/k projections often are) is full rank once rounded, at about 1e-7 of its largest
singular value; paired with a real direction of the other base, that noise gives G_s a direction a
billionth of its largest. Completion rounds are an alternating weight matching, which raises any
direction G_s has towards full weight, so such a direction would end at a level set by how many rounds
ran and by the data's own rounding, which differs on a permuted copy of the target.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch

from theseus_ops.transport.architecture import is_shared
from theseus_ops.transport.engine import ParamPlan
from theseus_ops.transport.maps import unit_norm
from theseus_ops.transport.rule_table import transport_dense
from theseus_ops.transport.rules import RuleRefused

# Singular directions of a base weight below this (relative to its largest) are its float32 rounding, not
# weights: rounding puts every direction at about 1e-7, and trained weights' spectra span 1e2..1e4.
# Measured on tests/test_equivariance.py (q/k of rank 5): without this, the weights fill left 0.32 of the
# permuted q update's norm out of place at WEIGHT_PRIOR_RANK_TOL 1e-8; with it, 3e-6, down to 1e-10.
WEIGHT_NOISE_TOL = 1e-6


def without_rounding_noise(weight: torch.Tensor, tol: float = WEIGHT_NOISE_TOL) -> torch.Tensor:
    """``weight`` with its singular directions below ``tol`` of the largest smoothly removed.

    Only matrices are filtered (vectors have no rank; a patch kernel keeps its shape). One float64
    eigendecomposition of the smaller Gram gives the directions, so a vocabulary-sized embedding costs
    one d × d problem. The cut is smooth, like the maps' (weight (σ/λ)⁴/(1 + (σ/λ)⁴), λ = tol·σ_max), and
    a function of the Gram alone, so a permuted weight is filtered to the permuted result. A filtered
    weight stays float64 (rounding it to float32 would bring the noise back); a weight with no direction
    near the cut, as most trained weights, is returned as it was, so memory grows only where it must.
    """
    if weight.dim() != 2 or min(weight.shape) < 2:
        return weight
    x = weight.double()
    tall = x.shape[0] >= x.shape[1]
    evals, evecs = torch.linalg.eigh(x.T @ x if tall else x @ x.T)
    floor = tol**2 * float(evals[-1])
    if floor <= 0:
        return weight
    ratio = evals.clamp_min(0) / floor  # (σ/λ)²
    keep = ratio**2 / (1 + ratio**2)
    if float(keep.min()) > 1 - _UNFILTERED_SHARE:
        return weight
    projector = (evecs * keep) @ evecs.T
    return x @ projector if tall else projector @ x


# A weight whose every direction keeps more than 1 - this of itself is left unfiltered (σ_min ≳ 6·λ).
_UNFILTERED_SHARE = 1e-3


class FilteredWeights(Mapping[str, torch.Tensor]):
    """``weights`` as :func:`without_rounding_noise` returns them, filtered on first use.

    Why a mapping and not a dict of filtered copies: ``weights`` may read each tensor from disk when
    asked (``io.models.ShardTensors``), so that the completion's rounds hold one base weight at a
    time. The verdict is kept: a filtered weight (rare) stays in memory, an untouched one is read
    again next time without its eigendecomposition being repeated.
    """

    def __init__(self, weights: Mapping[str, torch.Tensor]) -> None:
        self._weights = weights
        self._filtered: dict[str, torch.Tensor] = {}
        self._untouched: set[str] = set()

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._filtered:
            return self._filtered[name]
        weight = self._weights[name]
        if name in self._untouched:
            return weight
        filtered = without_rounding_noise(weight)
        if filtered is weight:
            self._untouched.add(name)
        else:
            self._filtered[name] = filtered
        return filtered

    def __iter__(self) -> Iterator[str]:
        return iter(self._weights)

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, name: object) -> bool:
        return name in self._weights


def weight_matching_priors(
    plans: Iterable[ParamPlan],
    source_weights: Mapping[str, torch.Tensor],
    target_weights: Mapping[str, torch.Tensor],
    maps: Mapping[str, torch.Tensor],
    keys: Iterable[str],
) -> dict[str, torch.Tensor]:
    """G_s (d_A × d_B, float64) for each space in ``keys``, from the base weights and the other maps.

    Args:
        plans: the base weights' plans (``engine.plan_transport`` over the source's parameter names).
        source_weights / target_weights: the bases' parameters by name (A's source names, B's target names).
        maps: every space's current map (the data estimate); the spaces in ``keys`` are differentiated.
        keys: the spaces that need a prior.

    A parameter whose rule refuses it (a vocabulary that differs, a patch kernel that does not fit) or
    whose spaces lack a map contributes nothing. A space no parameter touches gets no entry.
    """
    wanted = {k for k in keys if k in maps}
    grads: dict[str, torch.Tensor] = {}
    for plan in plans:
        if plan.reason or plan.spec is None or plan.source_name not in source_weights:
            continue
        for target in plan.targets:
            spaces = [s for s in (target.reads, *target.writes) if s and not is_shared(s)]
            differentiated = list(dict.fromkeys(s for s in spaces if s in wanted))
            if not differentiated or any(s not in maps for s in spaces):
                continue
            tw = target_weights.get(target.name)
            if tw is None:
                continue
            # This parameter's own float64 leaves: a leaf per space for the whole model would hold a float64
            # copy of every map at once (a gigabyte on a 135M-parameter pair), as large as the priors.
            leaves = {s: maps[s].detach().double().requires_grad_(True) for s in differentiated}

            def map_of(space: str | None, leaves: dict[str, torch.Tensor] = leaves) -> torch.Tensor | None:
                if space is None or is_shared(space):
                    return None
                return leaves[space] if space in leaves else maps[space].detach().double()

            try:
                moved = transport_dense(plan.spec, plan.source_name, source_weights[plan.source_name].double(),
                                        map_of(target.reads), [map_of(w) for w in target.writes], target.shape,
                                        target.splits)
            except RuleRefused:
                continue
            term = (moved * tw.double()).sum() * target.factor
            # One backward per parameter: its graph (float64 copies of the weight, moved and compared) is
            # freed before the next one is built, so memory holds one parameter's, not the model's.
            for space, grad in zip(differentiated, torch.autograd.grad(term, [leaves[s] for s in differentiated]),
                                   strict=True):
                grads[space] = grad if space not in grads else grads[space] + grad
    return {k: g for k, g in grads.items() if bool(g.abs().sum() > 0)}


def with_followed_maps(priors: Mapping[str, torch.Tensor], follows: Mapping[str, str],
                       maps: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each prior plus the current map of the space it follows, both at unit Frobenius norm.

    ``follows``: space → the space whose coordinates it keeps (only spaces to complete). On an identical
    or permuted target the followed map is that permutation, and the weight moment the permutation
    times a positive semi-definite matrix, so their sum keeps the completed map exact there.
    """
    out = dict(priors)
    for key, followed in follows.items():
        if followed not in maps or key not in maps or maps[followed].shape != maps[key].shape:
            continue
        link = maps[followed].detach().double()
        own = out.get(key)
        out[key] = unit_norm(link) if own is None else unit_norm(own) + unit_norm(link)
    return out


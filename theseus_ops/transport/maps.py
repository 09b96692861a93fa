"""Orthogonal maps between coordinate spaces (METHOD.md step 4).

The polar factor of the cross moment is unique only on directions the data determines. Directions
with singular values under ``rank_tol``·s_max are *not* left to numerical noise: they are filled
deterministically with the zero-pad prior restricted to the undetermined complements, then (if
still short) with a seeded Gaussian, so the map stays semi-orthogonal, is reproducible, and does
not depend on any sign or ordering choice of the decomposition. The count is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from theseus_ops.errors import InputError

# The decompositions, as module attributes so a test can swap in one with other sign/order choices.
_svd = torch.linalg.svd
_eigh = torch.linalg.eigh

# Singular values of the prior's restriction below this are treated as undetermined by the prior too.
_PRIOR_TOL = 1e-3


@dataclass(frozen=True)
class MapOptions:
    """How each space's map is estimated from its statistics.

    Attributes:
        center: subtract the means before Procrustes (C − n·μ_A μ_Bᵀ).
        whiten_power: p in [0, 0.5]; polar factor of (G_A+εI)^-p C (G_B+εI)^-p. 0 is plain Procrustes.
        whiten_eps: ε, relative to the mean diagonal of each Gram matrix.
        rank_tol: singular values under rank_tol·s_max count as undetermined by the data.
    """

    center: bool = False
    whiten_power: float = 0.0
    whiten_eps: float = 1e-4
    rank_tol: float = 1e-6

    def __post_init__(self) -> None:
        if not 0.0 <= self.whiten_power <= 0.5:
            raise ValueError(f"whiten_power must be in [0, 0.5], got {self.whiten_power}")
        if not 0.0 < self.rank_tol < 1.0:
            raise ValueError(f"rank_tol must be in (0, 1), got {self.rank_tol}")
        if self.whiten_eps <= 0:
            raise ValueError(f"whiten_eps must be positive, got {self.whiten_eps}")

    @property
    def needs_gram(self) -> bool:
        return self.whiten_power > 0


@dataclass(frozen=True)
class PolarResult:
    """A semi-orthogonal map and how much of it the data determined."""

    map: torch.Tensor
    data_rank: int
    prior_filled: int
    seeded_filled: int


def pad_map(width_a: int, width_b: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The zero-pad / truncate embedding E: coordinate i of A goes to coordinate i of B."""
    return torch.eye(width_a, width_b, dtype=dtype)


def _complement(basis: torch.Tensor, dim: int) -> torch.Tensor:
    """Projector onto the orthogonal complement of the columns of ``basis``: basis-choice invariant."""
    eye = torch.eye(dim, dtype=basis.dtype, device=basis.device)
    return eye - basis @ basis.T


def polar_factor(cross: torch.Tensor, rank_tol: float = 1e-6, seed: int = 0) -> PolarResult:
    """Semi-orthogonal T (d_A × d_B) maximising tr(Tᵀ C), completed deterministically.

    Args:
        cross: the (possibly centered or whitened) cross moment, float64 preferred.
        rank_tol: relative singular-value threshold separating determined from undetermined directions.
        seed: seed of the last-resort Gaussian completion.

    Returns:
        PolarResult with T of full rank min(d_A, d_B).
    """
    a, b = cross.shape
    k = min(a, b)
    u, s, vh = _svd(cross, full_matrices=False)
    top = float(s.max()) if s.numel() else 0.0
    determined = s > rank_tol * top if top > 0 else torch.zeros_like(s, dtype=torch.bool)
    rank = int(determined.sum())
    left, right = u[:, determined], vh[determined].T
    result = left @ right.T
    filled = [0, 0]
    for stage in (0, 1):
        if left.shape[1] >= k:
            break
        if stage == 0:
            prior = pad_map(a, b, cross.dtype).to(cross.device)
        else:
            gen = torch.Generator().manual_seed(seed)
            prior = torch.randn(a, b, generator=gen, dtype=cross.dtype).to(cross.device)
        restricted = _complement(left, a) @ prior @ _complement(right, b)
        u2, s2, vh2 = _svd(restricted, full_matrices=False)
        order = torch.argsort(s2, descending=True, stable=True)
        u2, s2, vh2 = u2[:, order], s2[order], vh2[order]
        scale = float(s2[0]) if s2.numel() else 0.0
        keep = int((s2 > _PRIOR_TOL * scale).sum()) if scale > 0 else 0
        keep = min(keep, k - left.shape[1])
        result = result + u2[:, :keep] @ vh2[:keep]
        left = torch.cat([left, u2[:, :keep]], dim=1)
        right = torch.cat([right, vh2[:keep].T], dim=1)
        filled[stage] = keep
    return PolarResult(result, rank, filled[0], filled[1])


def _inverse_power(gram: torch.Tensor, power: float, eps: float) -> torch.Tensor:
    """(G + εI)^-p through a symmetric eigendecomposition: f(G) does not depend on eigenvector signs."""
    ridge = eps * float(gram.diagonal().mean().clamp_min(1e-30))
    vals, vecs = _eigh(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device))
    return (vecs * vals.clamp_min(ridge).pow(-power)) @ vecs.T


@dataclass(frozen=True)
class SpaceQuality:
    """What a user needs to trust one space's map.

    ``residual`` is ‖X_A T − X_B‖ / ‖X_B‖ on the calibration rows (an upper bound when narrowing
    without Gram statistics). It comes from the accumulated moments, so its resolution is about
    1e-3 (float32 products cancel in ‖X_A‖² − 2 tr(TᵀC) + ‖X_B‖²). ``data_rank`` counts
    directions the data determined; the rest were
    filled by the pad prior (``prior_filled``) or the seeded completion (``seeded_filled``).
    """

    source_key: str
    rows: int
    width_a: int
    width_b: int
    data_rank: int
    prior_filled: int
    seeded_filled: int
    residual: float
    underdetermined: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _statistics_terms(stats, options: MapOptions) -> tuple[torch.Tensor, float, float, torch.Tensor | None]:
    """Cross moment, squared norms and Gram of A, centered if asked."""
    cross, sq_a, sq_b, gram_a = stats.cross, float(stats.sq_a), float(stats.sq_b), stats.gram_a
    if options.center and stats.rows > 0:
        n = stats.rows
        cross = cross - torch.outer(stats.sum_a, stats.sum_b) / n
        sq_a -= float(stats.sum_a.square().sum()) / n
        sq_b -= float(stats.sum_b.square().sum()) / n
        if gram_a is not None:
            gram_a = gram_a - torch.outer(stats.sum_a, stats.sum_a) / n
    return cross, sq_a, sq_b, gram_a


def estimate_space_map(stats, source_key: str, options: MapOptions) -> tuple[torch.Tensor, SpaceQuality]:
    """The map T (float32, d_A × d_B) of one space, and its quality report."""
    if stats.rows < 2:
        raise InputError(f"space {source_key}: only {stats.rows} activation row(s); at least 2 are needed")
    cross, sq_a, sq_b, gram_a = _statistics_terms(stats, options)
    target = cross
    if options.needs_gram:
        gram_b = stats.gram_b
        if options.center:
            gram_b = gram_b - torch.outer(stats.sum_b, stats.sum_b) / stats.rows
        target = (
            _inverse_power(gram_a, options.whiten_power, options.whiten_eps)
            @ cross
            @ _inverse_power(gram_b, options.whiten_power, options.whiten_eps)
        )
    polar = polar_factor(target, options.rank_tol)
    t = polar.map
    # Without Gram statistics, tr(Tᵀ G_A T) = ‖X_A‖² is exact when T Tᵀ = I (d_A ≤ d_B), an upper bound otherwise.
    quad = float((t.T @ gram_a @ t).trace()) if gram_a is not None else sq_a
    err2 = max(quad - 2.0 * float((t * cross).sum()) + sq_b, 0.0)
    residual = (err2 / sq_b) ** 0.5 if sq_b > 0 else float("nan")
    width_a, width_b = cross.shape
    quality = SpaceQuality(
        source_key=source_key,
        rows=stats.rows,
        width_a=width_a,
        width_b=width_b,
        data_rank=polar.data_rank,
        prior_filled=polar.prior_filled,
        seeded_filled=polar.seeded_filled,
        residual=residual,
        underdetermined=stats.rows < max(width_a, width_b),
    )
    return t.float(), quality

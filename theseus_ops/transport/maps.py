"""Orthogonal maps between coordinate spaces (docs/method.md, the maps).

The polar factor of the cross moment is unique only on the directions the data determines. What a
map does on the others is the *fill*, and it must not depend on either model's coordinate order, or
a permuted target (which computes the same function) would receive a different task vector:

- ``project``: the map is the polar factor restricted to the determined directions,
  ``T = C·(CᵀC)^(-1/2)`` on singular values above ``rank_tol``·s_max, with a smooth cut-off below
  it. It is a matrix function of C, so it is equivariant under permutations and orthogonal
  transforms of either space, and it needs one symmetric eigendecomposition of the smaller Gram
  (d×d, d = min(d_A, d_B)), never an SVD. The part of an update that falls in undetermined
  directions is dropped (or, for ``theseus``, completed from seeded probe inputs that neither model's
  coordinates affect, see ``estimate_space_map``), and the report measures the dropped share per
  parameter.
- ``pad`` (an explicit option; ``weights``, the default, is ``project`` completed from the base weights,
  ``weight_prior``): undetermined directions are filled with the zero-pad prior restricted
  to the complements, then a seeded Gaussian, so the map stays semi-orthogonal. It keeps the identity
  oracle exact on spaces that are rank-deficient by construction (grouped-query attention outputs at
  init, pooled heads), but it depends on the target's coordinate order, so it is *not* equivariant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from theseus_ops.errors import InputError
from theseus_ops.transport.tolerances import (
    DEFAULT_FILL,
    DEFAULT_PRECISION,
    DEFAULT_RANK_TOL,
    DEFAULT_SOLVER,
    FILLS,
    PRECISIONS,
    PROJECTING_FILLS,
    SOLVERS,
)

# The decomposition, as a module attribute so a test can swap in one with other sign choices. Every map
# is built from symmetric eigendecompositions; none needs an SVD.
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
        fill: what the map does on undetermined directions: ``weights`` (the default: drop them, then
            complete them from the base weights; equivariant), ``project`` (drop them, or complete them from
            probe inputs; equivariant) or ``pad`` (the zero-pad prior; not equivariant).
        solver: how the ``pad`` fill's polar factor is computed: ``eigh`` (fast) or ``svd`` (exact to
            rounding on every direction); see ``tolerances.SOLVERS``.
    """

    center: bool = False
    whiten_power: float = 0.0
    whiten_eps: float = 1e-4
    rank_tol: float = DEFAULT_RANK_TOL
    fill: str = DEFAULT_FILL
    solver: str = DEFAULT_SOLVER
    precision: str = DEFAULT_PRECISION  # of the statistics' products (``tolerances.PRECISIONS``)

    def __post_init__(self) -> None:
        if not 0.0 <= self.whiten_power <= 0.5:
            raise ValueError(f"whiten_power must be in [0, 0.5], got {self.whiten_power}")
        if not 0.0 < self.rank_tol < 1.0:
            raise ValueError(f"rank_tol must be in (0, 1), got {self.rank_tol}")
        if self.whiten_eps <= 0:
            raise ValueError(f"whiten_eps must be positive, got {self.whiten_eps}")
        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {self.fill!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

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
    weak: int = 0


def pad_map(width_a: int, width_b: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The zero-pad / truncate embedding E: coordinate i of A goes to coordinate i of B."""
    return torch.eye(width_a, width_b, dtype=dtype)


def polar_factor(cross: torch.Tensor, rank_tol: float = DEFAULT_RANK_TOL, seed: int = 0,
                 fill: str = DEFAULT_FILL, solver: str = DEFAULT_SOLVER) -> PolarResult:
    """T (d_A × d_B) maximising tr(Tᵀ C) on the directions the data determines.

    Args:
        cross: the (possibly centered or whitened) cross moment, float64 preferred.
        rank_tol: relative singular-value threshold separating determined from undetermined directions.
        seed: seed of the last-resort Gaussian completion (``pad`` fill only).
        fill: ``project`` (equivariant; T is a partial isometry on the determined directions) or
            ``pad`` (semi-orthogonal, completed by the zero-pad prior).
        solver: ``eigh`` or ``svd``, for the ``pad`` fill (``project`` is one eigendecomposition anyway).

    Returns:
        PolarResult; with ``pad`` T has full rank min(d_A, d_B), with ``project`` its rank is the data rank.
    """
    if fill in PROJECTING_FILLS:
        return _projected_polar(cross, rank_tol)
    if fill != "pad":
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
    if solver == "svd":
        return _pad_filled_polar_svd(cross, rank_tol, seed)
    if solver != "eigh":
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    return _pad_filled_polar(cross, rank_tol, seed)


# The smooth cut-off's steepness: weight (s/λ)^4 / (1 + (s/λ)^4) on singular value s. A direction a
# decade above λ keeps 1 - 1e-4 of its weight, a float32-noise direction two decades below gets 1e-8.
_CUTOFF_POWER = 2
# Directions within this factor above the cut-off are only partly kept by it: "weakly determined".
_WEAK_FACTOR = 100.0
# The probe prior's weight against the data, each scaled to unit Frobenius norm: the data decides every
# direction it determines to better than this share of its largest one.
PROBE_PRIOR_WEIGHT = 1e-3
# The probe prior is estimated fully whitened, so weakly excited directions are determined too.
PROBE_WHITEN_POWER = 0.5
# Whitening divides by the ridge, PROBE_RIDGE of each Gram's trace, which lifts float32 rounding (about
# 1e-7 of the largest moment) in a direction no input excites to at most 1e-3 canonical correlation; the
# prior keeps only correlations a decade above that, so it never invents a direction or a sign.
PROBE_RIDGE = 1e-4
PROBE_PRIOR_RANK_TOL = 1e-2
# The weight prior's weight against the data, each scaled to unit Frobenius norm (``weights`` fill).
WEIGHT_PRIOR_WEIGHT = 1e-3
# The weight-matching moment is a float64 product of weights and float32-rounded maps. Directions of it
# below this (relative to its largest) are dropped from the prior: there the rounding of the maps can
# flip a direction's sign, and the prior's polar factor would carry that flip at full weight. Measured on
# the random-init identity oracles of tests/test_families.py with the weights fill: 1e-6 drops the
# direction of Qwen2's q space that W_q barely reaches (its smallest singular value, 4.4e-4 of the
# largest, is 1.9e-7 in this squared moment). Since completion iterates to a fixed point, 1e-8 keeps
# every random-init oracle and XLM-R's float64-statistics floor; 1e-9 and below let map rounding into
# that floor (XLM-R permutation 2.5e-6 -> 5e-5). On the real all-MiniLM-L6-v2, 1e-7 dropped one direction
# of layer 1's value space that only W_v and W_o determine (data rank 379 of 384) and with it 1.1% of the
# value-bias update: 1.5e-3 oracle error on the full fine-tune, 4.8e-5 at 1e-8 (BENCHMARKS.md §5).
WEIGHT_PRIOR_RANK_TOL = 1e-8


def _projected_polar(cross: torch.Tensor, rank_tol: float, scale: float | None = None) -> PolarResult:
    """T = C·h(CᵀC) (or h(CCᵀ)·C when d_A < d_B), h(w) = w^(-1/2)·φ(w/λ²), φ(x) = x²/(1 + x²).

    On singular values well above λ = rank_tol·s_max this is the polar factor U Vᵀ; well below, the
    direction is dropped. The cut-off is smooth, so float rounding in C (which differs between a model
    and its permuted copy) moves T continuously instead of flipping a direction in or out. Only the
    eigenvalues of the smaller Gram are decomposed, and T, a function of that Gram, does not depend on
    the decomposition's sign or order choices. ``scale`` (s_max of a larger matrix this one was cut
    from) sets λ instead of this matrix's own largest singular value, so rounding noise left in a
    restricted matrix is never promoted to signal.
    """
    a, b = cross.shape
    wide = a <= b
    vals, vecs = _eigh(cross @ cross.T if wide else cross.T @ cross)  # the Gram is freed once decomposed
    vals = vals.clamp_min(0.0)
    top = float(vals.max()) if vals.numel() else 0.0
    if scale is not None:
        top = max(top, scale**2)
    if top <= 0.0:
        return PolarResult(torch.zeros_like(cross), 0, 0, 0, min(a, b))
    lam2 = (rank_tol**2) * top
    rank = int((vals > lam2).sum())
    weak = int((vals <= (_WEAK_FACTOR**2) * lam2).sum())
    x = vals / lam2
    weight = x.pow(_CUTOFF_POWER) / (1.0 + x.pow(_CUTOFF_POWER))
    h = torch.where(vals > 0, weight / vals.clamp_min(torch.finfo(vals.dtype).tiny).sqrt(), torch.zeros_like(vals))
    middle = (vecs * h) @ vecs.T
    del vecs  # the largest map's float64 workspace is what a streamed prepare's peak is made of (docs/memory.md)
    t = middle @ cross if wide else cross @ middle
    return PolarResult(t, rank, 0, 0, weak)


def _pad_filled_polar(cross: torch.Tensor, rank_tol: float, seed: int) -> PolarResult:
    """The ``pad`` fill: Procrustes on determined directions, then the zero-pad prior, then a seeded Gaussian.

    Everything comes from symmetric eigendecompositions of small Grams, never an SVD (a float64 SVD of
    a 1536×2048 cross moment costs several times the eigendecomposition of its 1536×1536 Gram): the
    polar factor on the determined directions is U_d·S_d⁻¹·U_dᵀ·C from the eigenpairs (U, S²) of the
    smaller Gram C·Cᵀ, and each fill stage decomposes only the Gram of the prior restricted to the
    directions still missing, which is (k − r)×(k − r) for a space of rank r out of k. Eigenvalues
    are compared with the squared thresholds, so the determined set is the SVD's.
    """
    a, b = cross.shape
    if a > b:  # work on the wide orientation; the priors are drawn in the caller's orientation
        result = _pad_filled_polar_wide(cross.T, rank_tol, lambda stage: _prior(stage, a, b, cross, seed).T)
        return dataclasses.replace(result, map=result.map.T)
    return _pad_filled_polar_wide(cross, rank_tol, lambda stage: _prior(stage, a, b, cross, seed))


def _prior(stage: int, a: int, b: int, like: torch.Tensor, seed: int) -> torch.Tensor:
    """The fill's priors in order: the zero-pad embedding, then a seeded Gaussian."""
    if stage == 0:
        return pad_map(a, b, like.dtype).to(like.device)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(a, b, generator=gen, dtype=like.dtype).to(like.device)


def _pad_filled_polar_wide(cross: torch.Tensor, rank_tol: float, prior_of) -> PolarResult:
    """``_pad_filled_polar`` for a ≤ b: the map's rows are orthonormal, k = a."""
    vals, vecs = _eigh(cross @ cross.T)
    vals = vals.clamp_min(0.0)
    top = float(vals.max()) if vals.numel() else 0.0
    determined = vals > (rank_tol**2) * top if top > 0 else torch.zeros_like(vals, dtype=torch.bool)
    rank = int(determined.sum())
    left = vecs[:, determined]
    right = (cross.T @ left) / vals[determined].sqrt()
    result = left @ right.T
    missing = vecs[:, ~determined]  # an orthonormal basis of what the map does not reach yet
    del vecs
    filled = [0, 0]
    for stage in (0, 1):
        if missing.shape[1] == 0:
            break
        # The prior restricted to both complements, in the missing basis: Qᵀ P (I − R Rᵀ).
        reduced = _times_pad(missing.T, cross.shape[1]) if stage == 0 else missing.T @ prior_of(stage)
        reduced = reduced - (reduced @ right) @ right.T
        mu, w = _eigh(reduced @ reduced.T)
        mu = mu.clamp_min(0.0)
        scale = float(mu.max()) if mu.numel() else 0.0
        keep = mu > (_PRIOR_TOL**2) * scale if scale > 0 else torch.zeros_like(mu, dtype=torch.bool)
        new_left = missing @ w[:, keep]
        new_right = (reduced.T @ w[:, keep]) / mu[keep].sqrt()
        result = result + new_left @ new_right.T
        right = torch.cat([right, new_right], dim=1)
        missing = missing @ w[:, ~keep]
        filled[stage] = int(keep.sum())
    # an eigenvalue λ comes with an absolute error of about eps·λ_max, so 1/s is off by eps·λ_max/λ relatively
    defect = 10 * torch.finfo(vals.dtype).eps * top / float(vals[determined].min()) if rank else 0.0
    return PolarResult(_orthonormal_rows(result, defect), rank, filled[0], filled[1])


def _times_pad(rows: torch.Tensor, width: int) -> torch.Tensor:
    """``rows @ E`` for the zero-pad embedding E (k × width, k ≤ width), without building E or multiplying.

    Equal to the product bit for bit (each entry is one term times 1 plus zeros), and it spares a
    d_A × d_B float64 identity and a d_A²·d_B matrix product on every padded space.
    """
    out = torch.zeros(rows.shape[0], width, dtype=rows.dtype, device=rows.device)
    out[:, : rows.shape[1]] = rows
    return out


# T·Tᵀ may miss the identity by this much: maps are stored in float32, whose rounding is 6e-8.
_ORTHONORMAL_TOL = 1e-9


def _orthonormal_rows(t: torch.Tensor, predicted_defect: float, steps: int = 3) -> torch.Tensor:
    """Polish a nearly semi-orthogonal T (a ≤ b) to orthonormal rows when its predicted defect is too large.

    An eigenvalue of C·Cᵀ carries an absolute error of about eps·λ_max, so a direction with singular
    value s = 10⁻⁵·s_max gets 1/s wrong by about 10⁻⁶ relatively, and T·Tᵀ misses the identity by
    that much. One Newton–Schulz step T ← T(3I − TᵀT)/2 squares the defect (two matrix products,
    cheaper than the decomposition); it leaves an exactly orthogonal T unchanged. A well-conditioned
    space (predicted defect under the tolerance) skips even the check.
    """
    if t.numel() == 0 or predicted_defect <= _ORTHONORMAL_TOL:
        return t
    eye = torch.eye(t.shape[0], dtype=t.dtype, device=t.device)
    for _ in range(steps):
        gram = t @ t.T
        if float((gram - eye).abs().max()) <= _ORTHONORMAL_TOL:
            break
        t = 1.5 * t - 0.5 * (gram @ t)
    return t


def _pad_filled_polar_svd(cross: torch.Tensor, rank_tol: float, seed: int) -> PolarResult:
    """The ``pad`` fill through SVDs: the decompositions of the cross moment and of each restricted prior."""
    a, b = cross.shape
    k = min(a, b)
    u, s, vh = torch.linalg.svd(cross, full_matrices=False)
    top = float(s.max()) if s.numel() else 0.0
    determined = s > rank_tol * top if top > 0 else torch.zeros_like(s, dtype=torch.bool)
    rank = int(determined.sum())
    left, right = u[:, determined], vh[determined].T
    result = left @ right.T
    filled = [0, 0]
    eye_a = torch.eye(a, dtype=cross.dtype, device=cross.device)
    eye_b = torch.eye(b, dtype=cross.dtype, device=cross.device)
    for stage in (0, 1):
        if left.shape[1] >= k:
            break
        restricted = (eye_a - left @ left.T) @ _prior(stage, a, b, cross, seed) @ (eye_b - right @ right.T)
        u2, s2, vh2 = torch.linalg.svd(restricted, full_matrices=False)
        order = torch.argsort(s2, descending=True, stable=True)
        u2, s2, vh2 = u2[:, order], s2[order], vh2[order]
        scale = float(s2[0]) if s2.numel() else 0.0
        keep = min(int((s2 > _PRIOR_TOL * scale).sum()) if scale > 0 else 0, k - left.shape[1])
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
    probe_filled: int = 0
    weakly_determined: int = 0
    weight_filled: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @property
    def undetermined(self) -> int:
        """Directions of the map's full rank min(d_A, d_B) that the calibration data did not determine."""
        return max(0, min(self.width_a, self.width_b) - self.data_rank)

    @property
    def needs_completion(self) -> bool:
        """Some direction is undetermined, or so weakly determined that the cut-off shrinks it."""
        return self.weakly_determined > 0 and self.probe_filled == 0 and self.weight_filled == 0


def moment_residual(t: torch.Tensor, cross: torch.Tensor, sq_a: float, sq_b: float,
                    gram_a: torch.Tensor | None) -> float:
    """‖X_A T − X_B‖ / ‖X_B‖ from the moments: tr(Tᵀ G_A T) − 2 tr(Tᵀ C) + ‖X_B‖², NaN when ‖X_B‖ = 0.

    Without the Gram, tr(Tᵀ G_A T) is taken as ‖X_A‖²: exact when T Tᵀ = I (d_A ≤ d_B), an upper bound
    otherwise.
    """
    quad = float((t.T @ gram_a @ t).trace()) if gram_a is not None else sq_a
    err2 = max(quad - 2.0 * float((t * cross).sum()) + sq_b, 0.0)
    return (err2 / sq_b) ** 0.5 if sq_b > 0 else float("nan")


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


def _polar_target(stats, options: MapOptions, cross: torch.Tensor | None = None) -> torch.Tensor:
    """The matrix whose polar factor is the map: the (centered) cross moment, whitened if asked.

    ``cross``: the centered cross moment when the caller has it already (``_statistics_terms``).
    """
    if cross is None:
        cross = _statistics_terms(stats, options)[0]
    if not options.needs_gram:
        return cross
    gram_a, gram_b = stats.gram_a, stats.gram_b
    if options.center:
        gram_a = gram_a - torch.outer(stats.sum_a, stats.sum_a) / stats.rows
        gram_b = gram_b - torch.outer(stats.sum_b, stats.sum_b) / stats.rows
    return (_inverse_power(gram_a, options.whiten_power, options.whiten_eps) @ cross
            @ _inverse_power(gram_b, options.whiten_power, options.whiten_eps))


def unit_norm(m: torch.Tensor) -> torch.Tensor:
    """``m`` scaled to unit Frobenius norm (zero stays zero): how a prior and the data are weighed."""
    norm = float(torch.linalg.matrix_norm(m))
    return m / norm if norm > 0 else m


def _with_prior(target: torch.Tensor, prior_moment: torch.Tensor, prior_rank_tol: float, weight: float,
                rank_tol: float) -> PolarResult:
    """The projected polar factor of C/‖C‖ + w·P/‖P‖, P the prior moment's own projected polar factor.

    P's singular values are all 1, so every direction the prior determines stands well above the
    cut-off, and the data still decides every direction it determines beyond w of its largest.
    """
    prior = polar_factor(prior_moment, prior_rank_tol, fill="project").map
    return polar_factor(unit_norm(target) + weight * unit_norm(prior), rank_tol, fill="project")


def estimate_space_map(stats, source_key: str, options: MapOptions,
                       probe_stats=None, structure=None,
                       weight_prior: torch.Tensor | None = None,
                       data_quality: SpaceQuality | None = None) -> tuple[torch.Tensor, SpaceQuality]:
    """The map T (float32, d_A × d_B) of one space, and its quality report.

    ``data_quality``: this space's report from its data-only estimate, when the caller re-estimates it
    with a prior; its data rank stands, so the data-only polar factor is not decomposed again.

    ``probe_stats`` (``project`` fill only): the same space's statistics on seeded probe inputs, which
    both models see alike and which depend on neither model's coordinates (with Gram matrices). Their
    fully whitened cross moment G_A^(-1/2) C G_B^(-1/2), whose singular values are canonical
    correlations (all 1 on an identity or permuted target) rather than squared activation scales, has
    a projected polar factor T_probe determined on every direction the probes reach; it enters as a
    weak prior, C_data/‖C_data‖ + w·T_probe/‖T_probe‖ with
    w = ``PROBE_PRIOR_WEIGHT``: T_probe's singular values are all 1, so every direction the probes
    determine stands well above the cut-off, and the data still decides every direction it determines
    beyond w. Both terms are equivariant, and on an identity or permuted target each is that
    permutation times a positive matrix, so the completed map is exact there.

    What neither determines stays dropped: directions the architecture never excites, in data or
    probes alike, such as a LayerNorm output's null direction (γ⁻¹, the mean direction at init).

    ``weight_prior`` (``weights`` fill only): the space's weight-matching cross moment
    (``weight_prior.weight_matching_priors``). It enters like the probe prior, as
    C/‖C‖ + w·G/‖G‖ with w = ``WEIGHT_PRIOR_WEIGHT``: the data decides every direction it determines
    beyond w of its largest, the weights decide the rest. On an identical or permuted target both terms
    are the permutation times a positive semi-definite matrix, so the completed map is exact there.

    ``structure``: a per-head constraint (``head_maps.HeadStructure``) whose ``polar`` replaces the
    unconstrained polar factor; it needs no completion from probes.
    """
    if stats.rows < 2:
        raise InputError(f"space {source_key}: only {stats.rows} activation row(s); at least 2 are needed")
    cross, sq_a, sq_b, gram_a = _statistics_terms(stats, options)
    target = _polar_target(stats, options, cross)
    if structure is not None:  # a constrained map the architecture declares (head_maps.HeadStructure)
        data_only = structure.polar(target, options.rank_tol, options.fill)
    elif data_quality is not None and (weight_prior is not None or probe_stats is not None):
        data_only = PolarResult(torch.empty(0), data_quality.data_rank, 0, 0, data_quality.weakly_determined)
    else:
        data_only = polar_factor(target, options.rank_tol, fill=options.fill, solver=options.solver)
    polar, probe_filled = data_only, 0
    if probe_stats is not None and options.fill == "project" and structure is None:
        # A ridge of 1e-4 of each Gram's trace (≥ 1e-4 of its top eigenvalue) bounds the noise below.
        whitened = dataclasses.replace(options, whiten_power=PROBE_WHITEN_POWER,
                                       whiten_eps=PROBE_RIDGE * max(target.shape))
        polar = _with_prior(target, _polar_target(probe_stats, whitened), PROBE_PRIOR_RANK_TOL, PROBE_PRIOR_WEIGHT,
                            options.rank_tol)
        probe_filled = max(0, polar.data_rank - data_only.data_rank)
    weight_filled = 0
    if weight_prior is not None and options.fill == "weights" and structure is None:
        polar = _with_prior(target, weight_prior.to(target), WEIGHT_PRIOR_RANK_TOL, WEIGHT_PRIOR_WEIGHT,
                            options.rank_tol)
        weight_filled = max(0, polar.data_rank - data_only.data_rank)
    t = polar.map
    # Without Gram statistics, tr(Tᵀ G_A T) = ‖X_A‖² is exact when T Tᵀ = I (d_A ≤ d_B), an upper bound otherwise
    # (a projected map only drops directions the data barely reaches, so the bound stays tight).
    residual = moment_residual(t, cross, sq_a, sq_b, gram_a)
    width_a, width_b = cross.shape
    quality = SpaceQuality(
        source_key=source_key,
        rows=stats.rows,
        width_a=width_a,
        width_b=width_b,
        data_rank=data_only.data_rank,
        prior_filled=polar.prior_filled,
        seeded_filled=polar.seeded_filled,
        residual=residual,
        underdetermined=stats.rows < max(width_a, width_b),
        probe_filled=probe_filled,
        weakly_determined=data_only.weak,
        weight_filled=weight_filled,
    )
    return t.float(), quality


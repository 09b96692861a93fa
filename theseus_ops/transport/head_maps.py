"""Per-head maps: a space made of attention heads, mapped head to head with one map inside every head.

Why a space needs this: Qwen3's and Gemma 3's ``q_norm``/``k_norm`` normalise each head's query and
key over head_dim with one weight vector shared by every head, and rotary embeddings then rotate
coordinate pairs of head_dim at fixed frequencies. A general map of the q space mixes heads and
head_dim coordinates; neither the shared norm weight nor the rotation survives that. The maps that
keep the function are ``P ⊗ R``: a head correspondence P (heads are interchangeable, a softmax acts
on each alone) and one head_dim map R, the same in every head, so that the shared norm weight has
one image (``head_block_map``, transported with R).

What R may be (``within``):

- ``identity``: head_dim coordinates are pinned.
- ``shared``: any orthogonal R, the polar factor of the cross moment pooled over matched heads; right
  where nothing position-dependent acts on head_dim.
- ``rotary``: R commutes with every rotary rotation. RoPE rotates the pair (i, i + r/2) of the first
  r = rotary_fraction·head_dim coordinates by position·θ_i with distinct θ_i; the orthogonal maps
  that commute with all of those rotations are exactly a 2-D rotation (not a reflection) on each
  pair, so R is one such rotation per pair, estimated from the pooled 2×2 cross moments, plus any
  orthogonal map of the r..head_dim pass-through coordinates. A general R would turn position
  m's rotation into another matrix, changing every attention score q_m·k_n. With a per-coordinate
  norm weight in front, R is exact when it is a pair-wise sign (±I on a pair), and the norm's scale
  is transported as the diagonal of Rᵀ diag(w) R otherwise (the ``scale`` rule).

The head correspondence is the assignment (Hungarian method) that maximises the summed alignment of
matched heads under that constraint, so heads permuted in the target are found, and a target with
more heads leaves its extra heads without a source. Both models need one head_dim (rotary
frequencies depend on it), except under ``shared``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from theseus_ops.errors import InputError
from theseus_ops.transport.config_refs import config_int, config_value
from theseus_ops.transport.maps import PolarResult, polar_factor

if TYPE_CHECKING:  # the architecture loader imports this module (through the rule table): no import back at run time
    from theseus_ops.transport.architecture import HeadMapSpec

# How a per-head map may act inside one head (the module docstring); the architecture loader validates against it.
WITHIN_HEAD = ("identity", "shared", "rotary")


@dataclass(frozen=True)
class HeadStructure:
    """A per-head map constraint resolved for one model pair (see the module docstring)."""

    heads_a: int
    heads_b: int
    within: str = "rotary"
    rotary_fraction_a: float = 1.0
    rotary_fraction_b: float = 1.0

    def __post_init__(self) -> None:
        if self.heads_a < 1 or self.heads_b < 1:
            raise InputError(f"a per-head map needs at least one head per model, got {self.heads_a} and {self.heads_b}")
        if self.within not in WITHIN_HEAD:
            raise InputError(f"within must be one of {', '.join(WITHIN_HEAD)}, got {self.within!r}")
        for fraction in (self.rotary_fraction_a, self.rotary_fraction_b):
            if not 0.0 <= fraction <= 1.0:
                raise InputError(f"rotary fraction must be in [0, 1], got {fraction}")

    @classmethod
    def resolve(cls, spec: HeadMapSpec, source_config: Mapping[str, Any], target_config: Mapping[str, Any],
                what: str) -> HeadStructure:
        def fraction(config: Mapping[str, Any]) -> float:
            value = config_value(config, spec.rotary_fraction, what)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"{what}: rotary fraction {value!r} is not a number")
            return float(value)

        return cls(config_int(source_config, spec.heads, what), config_int(target_config, spec.heads, what),
                   spec.within, fraction(source_config), fraction(target_config))

    def head_dims(self, width_a: int, width_b: int, what: str) -> tuple[int, int]:
        """head_dim of each model; InputError where the widths do not divide or the constraint forbids it."""
        if width_a % self.heads_a or width_b % self.heads_b:
            raise InputError(f"{what}: widths {width_a} and {width_b} are not {self.heads_a} and {self.heads_b} heads")
        hd_a, hd_b = width_a // self.heads_a, width_b // self.heads_b
        if self.within != "shared" and hd_a != hd_b:
            raise InputError(f"{what}: head_dim differs ({hd_a} vs {hd_b}); a per-head {self.within} map needs one "
                             "head_dim (rotary frequencies depend on it)")
        if self.within == "rotary":
            rot_a = self.rotary_dims(hd_a, self.rotary_fraction_a)
            rot_b = self.rotary_dims(hd_b, self.rotary_fraction_b)
            if rot_a != rot_b:
                raise InputError(f"{what}: rotary dimensions differ ({rot_a} vs {rot_b} of head_dim {hd_a})")
        return hd_a, hd_b

    @staticmethod
    def rotary_dims(head_dim: int, fraction: float) -> int:
        rot = int(head_dim * fraction)
        if rot % 2:
            raise InputError(f"rotary dimension {rot} of head_dim {head_dim} is odd; rotary pairs cannot be formed")
        return rot

    def polar(self, cross: torch.Tensor, rank_tol: float, fill: str = "pad") -> PolarResult:
        """The constrained map ``P ⊗ R`` (d_A × d_B) maximising tr(Tᵀ C) for the cross moment C."""
        width_a, width_b = cross.shape
        hd_a, hd_b = self.head_dims(width_a, width_b, "per-head map")
        blocks = cross.reshape(self.heads_a, hd_a, self.heads_b, hd_b).permute(0, 2, 1, 3)
        rot = self.rotary_dims(hd_a, self.rotary_fraction_a) if self.within == "rotary" else 0
        assignment = _assign(_scores(blocks, self.within, rot))
        pooled = sum((blocks[a, b] for a, b in assignment), cross.new_zeros(hd_a, hd_b))
        within, rank = _within_map(pooled, self.within, rot, rank_tol, fill)
        t = torch.zeros_like(cross)
        for a, b in assignment:
            t[a * hd_a:(a + 1) * hd_a, b * hd_b:(b + 1) * hd_b] = within
        return PolarResult(t, rank * len(assignment), 0, 0, 0)


def _pair_sums(blocks: torch.Tensor, rot: int) -> torch.Tensor:
    """z_i = (C_ii + C_jj) + i (C_ij − C_ji), j = i + rot/2, for every block: its argument is the best
    rotation of pair i and its modulus that rotation's alignment."""
    half = rot // 2
    i = torch.arange(half, device=blocks.device)
    real = blocks[..., i, i] + blocks[..., i + half, i + half]
    imag = blocks[..., i, i + half] - blocks[..., i + half, i]
    return torch.complex(real, imag)


def _scores(blocks: torch.Tensor, within: str, rot: int) -> torch.Tensor:
    """[heads_a, heads_b]: how well head a of A aligns with head b of B under the constraint."""
    if within == "identity":
        return blocks.diagonal(dim1=-2, dim2=-1).sum(-1)
    if within == "shared":
        return torch.linalg.svdvals(blocks).sum(-1)
    score = _pair_sums(blocks, rot).abs().sum(-1)
    if rot < blocks.shape[-1]:
        score = score + torch.linalg.svdvals(blocks[..., rot:, rot:]).sum(-1)
    return score


def _within_map(pooled: torch.Tensor, within: str, rot: int, rank_tol: float, fill: str) -> tuple[torch.Tensor, int]:
    """R from the cross moment pooled over matched heads, and how many directions it carries."""
    hd_a, hd_b = pooled.shape
    if within == "identity":
        return torch.eye(hd_a, hd_b, dtype=pooled.dtype, device=pooled.device), min(hd_a, hd_b)
    if within == "shared":
        result = polar_factor(pooled, rank_tol, fill=fill)
        return result.map, result.data_rank + result.prior_filled + result.seeded_filled
    r = torch.zeros_like(pooled)
    half = rot // 2
    z = _pair_sums(pooled, rot)
    angle = torch.where(z.abs() > 0, torch.angle(z), torch.zeros_like(z.real))
    i = torch.arange(half, device=pooled.device)
    cos, sin = torch.cos(angle).to(pooled.dtype), torch.sin(angle).to(pooled.dtype)
    r[i, i], r[i + half, i + half] = cos, cos
    r[i, i + half], r[i + half, i] = sin, -sin
    rank = rot
    if rot < hd_a:
        rest = polar_factor(pooled[rot:, rot:], rank_tol, fill=fill)
        r[rot:, rot:] = rest.map
        rank += rest.data_rank + rest.prior_filled + rest.seeded_filled
    return r, rank


def _assign(score: torch.Tensor) -> list[tuple[int, int]]:
    """Pairs (a, b), each row and column at most once, maximising the summed score (Hungarian method).

    With more rows than columns the problem is solved transposed: some source heads then have no
    target head (a narrower target), and their rows of the map stay zero.
    """
    if score.shape[0] > score.shape[1]:
        return [(a, b) for b, a in _assign(score.T)]
    cost = (-score).tolist()
    n, m = len(cost), len(cost[0]) if cost else 0
    inf = math.inf
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    owner, way = [0] * (m + 1), [0] * (m + 1)  # owner[j]: row matched to column j (1-based, 0 = none)
    for row in range(1, n + 1):
        owner[0], j0 = row, 0
        low, used = [inf] * (m + 1), [False] * (m + 1)
        while owner[j0]:
            used[j0] = True
            i0, delta, j1 = owner[j0], inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    reduced = cost[i0 - 1][j - 1] - u[i0] - v[j]
                    if reduced < low[j]:
                        low[j], way[j] = reduced, j0
                    if low[j] < delta:
                        delta, j1 = low[j], j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    low[j] -= delta
            j0 = j1
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    return sorted((owner[j] - 1, j - 1) for j in range(1, m + 1) if owner[j])


def head_block_map(t: torch.Tensor, head_dim_a: int, head_dim_b: int) -> torch.Tensor:
    """R (head_dim_a × head_dim_b) of a per-head map ``P ⊗ R``: what a weight shared by every head
    (q_norm, k_norm) is transported with.

    Each source head's block row holds R at its matched head's column; their mean is R exactly for a
    per-head map, and the best shared block for any other map of the space (a pad map gives I).
    """
    width_a, width_b = t.shape
    if width_a % head_dim_a or width_b % head_dim_b:
        raise ValueError(f"a {width_a} x {width_b} map is not made of {head_dim_a} x {head_dim_b} head blocks")
    blocks = t.reshape(width_a // head_dim_a, head_dim_a, width_b // head_dim_b, head_dim_b).permute(0, 2, 1, 3)
    norms = torch.linalg.matrix_norm(blocks.double())
    chosen = [blocks[a, int(norms[a].argmax())] for a in range(blocks.shape[0]) if float(norms[a].max()) > 0]
    if not chosen:
        return torch.zeros(head_dim_a, head_dim_b, dtype=t.dtype)
    return torch.stack(chosen).mean(0)


def head_correspondence(t: torch.Tensor, heads_a: int, heads_b: int) -> torch.Tensor:
    """H (heads_a × heads_b) of a per-head map ``P ⊗ R``: P itself, what a per-head table moves with.

    T5's relative position bias holds one column per head; heads matched by P keep their column.
    H[a, b] is the squared norm of block (a, b) over the head's width, so P ⊗ R with orthogonal R gives
    exactly P, and any other map (a pad map's identity blocks included) gives its best head-level summary.
    """
    width_a, width_b = t.shape
    if width_a % heads_a or width_b % heads_b:
        raise ValueError(f"a {width_a} x {width_b} map is not made of {heads_a} x {heads_b} heads")
    hd_a, hd_b = width_a // heads_a, width_b // heads_b
    blocks = t.double().reshape(heads_a, hd_a, heads_b, hd_b)
    return (blocks * blocks).sum((1, 3)) / min(hd_a, hd_b)

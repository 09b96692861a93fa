"""Map-estimation defaults that the CLI shows in its help without importing torch."""

from __future__ import annotations

# Singular values under DEFAULT_RANK_TOL·s_max count as undetermined by the data. The cross moment is a
# sum of float32 products, whose rounding floor sits near 1e-7..1e-6 of s_max, so on near-degenerate
# spaces directions just above this threshold can still be noise (see docs/method.md).
DEFAULT_RANK_TOL = 1e-6

# What a map does on directions the data leaves undetermined (see ``maps``): ``weights`` completes them
# from the base weights (``weight_prior``), ``project`` drops them (or completes them from probe inputs),
# ``pad`` fills them with the zero-pad prior, which is not equivariant.
FILLS = ("weights", "project", "pad")
DEFAULT_FILL = "weights"
# The fills whose data-only map is the projected polar factor (equivariant; the rest is completed or dropped).
PROJECTING_FILLS = ("weights", "project")

# How the ``pad`` fill's polar factor is computed. ``eigh``: symmetric eigendecompositions of the smaller
# Gram and of the restricted priors, polished to orthonormal rows (several times faster than an SVD on the
# CPU; a direction at 1e-5 of the largest singular value is reproduced to about 1e-6, below the float32
# statistics' own noise there). ``svd``: the SVD route, exact to float64 rounding on every direction.
SOLVERS = ("eigh", "svd")
DEFAULT_SOLVER = "eigh"

# The precision of the statistics' per-batch products. ``float32`` (default): products in float32, sums in
# float64; on the permutation oracles of the tiny families that leaves 1e-6..5e-6 relative logits error.
# ``float64``: products in float64 too, about 5e-7 there (the float32 forward pass's own floor), at about
# twice the cost of the product on the CPU (BENCHMARKS.md §1b).
PRECISIONS = ("float32", "float64")
DEFAULT_PRECISION = "float32"

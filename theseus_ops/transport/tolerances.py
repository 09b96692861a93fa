"""Map-estimation defaults that the CLI shows in its help without importing torch."""

from __future__ import annotations

# Singular values under DEFAULT_RANK_TOL·s_max count as undetermined by the data. The cross moment is a
# sum of float32 products, whose rounding floor sits near 1e-7..1e-6 of s_max, so on near-degenerate
# spaces directions just above this threshold can still be noise (see docs/method.md).
DEFAULT_RANK_TOL = 1e-6

# What a map does on directions the data leaves undetermined (see ``maps``). ``pad`` stays the default
# until an equivariant fill also keeps the identity oracle exact on structurally rank-deficient spaces.
FILLS = ("project", "pad")
DEFAULT_FILL = "pad"

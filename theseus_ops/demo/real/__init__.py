"""Real pretrained models as fixtures: SmolLM2-135M-Instruct and all-MiniLM-L6-v2 on BBC News.

Built once from the `real` extra's packages (no hub access), deterministically, and cached by a
hash of the configuration and the packages' versions; see :mod:`theseus_ops.demo.real.build`.
"""

from theseus_ops.demo.real.build import RealConfig, RealFixtures, build_real

__all__ = ["RealConfig", "RealFixtures", "build_real"]

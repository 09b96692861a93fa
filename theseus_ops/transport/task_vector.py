"""In-memory task vectors: full deltas, or LoRA factors that stay factored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch


@dataclass
class LoraFactors:
    """One adapted weight: delta = scaling · B A, in the logical [out, in] orientation.

    For an embedding adapter ``a`` is [r, vocab] and ``b`` is [dim, r], and the delta of the
    [vocab, dim] table is (scaling · B A)ᵀ, as PEFT defines it.
    """

    a: torch.Tensor
    b: torch.Tensor
    scaling: float
    embedding: bool = False

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    def dense(self) -> torch.Tensor:
        """The logical dense delta (tests and ``apply`` only; transport never calls this)."""
        delta = self.scaling * (self.b.double() @ self.a.double())
        return (delta.T if self.embedding else delta).to(self.a.dtype)

    def frobenius(self) -> float:
        """‖scaling·B A‖_F without densifying: sqrt(tr((BᵀB)(A Aᵀ)))."""
        bb = self.b.double().T @ self.b.double()
        aa = self.a.double() @ self.a.double().T
        return abs(self.scaling) * float((bb * aa).sum().clamp_min(0).sqrt())


@dataclass
class TaskVector:
    """What fine-tuning added to a base, keyed by the base's parameter names.

    ``vector_format == "full"`` fills ``deltas``; ``"lora"`` fills ``lora`` (keyed by the adapted
    weight's parameter name, e.g. ``model.layers.0.self_attn.q_proj.weight``) and keeps the PEFT
    ``adapter_config`` to write a valid adapter back. ``base_layer_copies`` are full base weights
    PEFT saves beside embedding adapters; they must equal the source base and are not written back.
    """

    vector_format: Literal["full", "lora"]  # the catalog's theseus.format
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)
    lora: dict[str, LoraFactors] = field(default_factory=dict)
    adapter_config: dict | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    base_layer_copies: dict[str, torch.Tensor] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.deltas) if self.vector_format == "full" else sorted(self.lora)

    def norm(self, name: str) -> float:
        if self.vector_format == "full":
            return float(torch.linalg.vector_norm(self.deltas[name], dtype=torch.float64))  # no float64 copy
        return self.lora[name].frobenius()

"""Function-preserving widening and consistent permutation of a Llama state dict.

Why both: a *grown* release (v2-wide) keeps v1's coordinates in its first channels, which is the
case where zero-padding a task vector is already sensible; a *shuffled* one (v2-wide-shuffled)
computes the same function in scrambled coordinates, where padding is meaningless and only an
activation-aligned method can find the correspondence.

Widening rules (old parts are copied into the leading block):
- new residual channels are *written* by nothing (zero embedding columns, zero o_proj / down_proj
  rows), so they stay exactly zero; their *readers* (q/k/v/gate/up/lm_head columns) get small
  random values, which changes nothing now but lets gradients reach the writers later;
- new attention heads and MLP units have random inputs and zero output weights, so they are silent;
- RMSNorm averages over the width, so old norm weights are scaled by sqrt(d/d') and eps by d/d'
  (``widened_config``), which keeps every norm output identical.
Head dimension and the query-per-kv group size are kept: rotary embeddings depend on the former
and grouped-query attention's head-to-kv assignment on the latter.
"""

from __future__ import annotations

import math

import torch
import transformers

from theseus_ops.errors import InputError
from theseus_ops.permutations import head_rows, permutations, permutations_for, permute_state

__all__ = ["head_rows", "permutations", "permutations_for", "permute_state", "widen_state", "widened_config"]


def widened_config(config: transformers.LlamaConfig, hidden: int, heads: int, kv_heads: int,
                   intermediate: int) -> transformers.LlamaConfig:
    head_dim = config.hidden_size // config.num_attention_heads if getattr(config, "head_dim", None) is None \
        else config.head_dim
    if hidden < config.hidden_size or heads < config.num_attention_heads or intermediate < config.intermediate_size \
            or kv_heads < config.num_key_value_heads:
        raise InputError("widening needs every width to be at least the source's")
    if heads // kv_heads != config.num_attention_heads // config.num_key_value_heads or heads % kv_heads:
        raise InputError("widening keeps the number of query heads per kv head")
    new = transformers.LlamaConfig(**{**config.to_dict(), "hidden_size": hidden, "num_attention_heads": heads,
                                      "num_key_value_heads": kv_heads, "intermediate_size": intermediate,
                                      "head_dim": head_dim,
                                      "rms_norm_eps": config.rms_norm_eps * config.hidden_size / hidden})
    return new


def _embed(old: torch.Tensor, shape: tuple[int, ...], fill: str, gen: torch.Generator, std: float) -> torch.Tensor:
    """``old`` in the leading block of a ``shape`` tensor; the rest zero or small random."""
    out = torch.zeros(shape, dtype=old.dtype) if fill == "zero" else std * torch.randn(shape, generator=gen)
    out = out.to(old.dtype)
    out[tuple(slice(0, s) for s in old.shape)] = old
    return out


def widen_state(state: dict[str, torch.Tensor], old: transformers.LlamaConfig, new: transformers.LlamaConfig,
                seed: int = 0, std: float = 0.02) -> dict[str, torch.Tensor]:
    """v1's state in the wider ``new`` config, computing exactly the same function (see module doc)."""
    gen = torch.Generator().manual_seed(seed)
    d, d2 = old.hidden_size, new.hidden_size
    hd = new.head_dim
    scale = math.sqrt(d / d2)
    out: dict[str, torch.Tensor] = {}
    for name in sorted(state):
        w = state[name]
        if name.endswith("embed_tokens.weight"):
            out[name] = _embed(w, (w.shape[0], d2), "zero", gen, std)
        elif name.endswith("lm_head.weight"):
            out[name] = _embed(w, (w.shape[0], d2), "rand", gen, std)
        elif name.endswith("norm.weight"):
            v = torch.full((d2,), float(w.mean()) * scale, dtype=w.dtype)
            v[:d] = w * scale
            out[name] = v
        elif name.endswith("q_proj.weight"):
            out[name] = _embed(w, (new.num_attention_heads * hd, d2), "rand", gen, std)
        elif name.endswith(("k_proj.weight", "v_proj.weight")):
            out[name] = _embed(w, (new.num_key_value_heads * hd, d2), "rand", gen, std)
        elif name.endswith("o_proj.weight"):
            out[name] = _embed(w, (d2, new.num_attention_heads * hd), "zero", gen, std)
        elif name.endswith(("gate_proj.weight", "up_proj.weight")):
            out[name] = _embed(w, (new.intermediate_size, d2), "rand", gen, std)
        elif name.endswith("down_proj.weight"):
            out[name] = _embed(w, (d2, new.intermediate_size), "zero", gen, std)
        else:
            raise InputError(f"widening has no rule for {name}")
    return out

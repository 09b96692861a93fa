"""Consistent permutations of a model's coordinates: the same function in scrambled coordinates.

Residual channels, MLP units and attention heads (query heads within their kv group, so grouped-query
attention's head-to-kv assignment holds) permuted together leave what a model computes unchanged,
which is what the permutation oracle and the demo's shuffled release rest on. The library owns these;
the demo and the examples use them.
"""

from __future__ import annotations

import torch
import transformers

from theseus_ops.errors import InputError


def permutations(config: transformers.LlamaConfig, seed: int) -> dict[str, torch.Tensor]:
    """Random residual, MLP-unit, kv-head and query-head (within their kv group) permutations."""
    return permutations_for(config.hidden_size, config.intermediate_size, config.num_attention_heads,
                            config.num_key_value_heads, seed)


def permutations_for(hidden: int, intermediate: int, heads: int, kv: int, seed: int) -> dict[str, torch.Tensor]:
    """The same permutations from explicit widths (any architecture with those units)."""
    gen = torch.Generator().manual_seed(seed)
    group = heads // kv
    resid = torch.randperm(hidden, generator=gen)
    mlp = torch.randperm(intermediate, generator=gen)
    kv_perm = torch.randperm(kv, generator=gen)
    q_heads = torch.cat([kv_perm[i] * group + torch.randperm(group, generator=gen) for i in range(kv)])
    return {"resid": resid, "mlp": mlp, "kv_heads": kv_perm, "q_heads": q_heads}


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def permute_state(state: dict[str, torch.Tensor], config: transformers.PretrainedConfig,
                  perms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same function in permuted coordinates: residual channels, heads and MLP units.

    For the Llama layout and the decoders that share it (Mistral, Qwen2/3, Gemma 2/3). The per-head
    ``q_norm``/``k_norm`` weights stay as they are: every head shares them, so a head permutation leaves
    them alone. Every other norm (Gemma's pre/post feed-forward and post-attention ones too) acts on
    the residual.
    """
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    pr, pm = perms["resid"], perms["mlp"]
    qrows, kvrows = head_rows(perms["q_heads"], hd), head_rows(perms["kv_heads"], hd)
    out = {}
    for name, w in state.items():
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            out[name] = w
        elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
            out[name] = w[:, pr]
        elif name.endswith("q_proj.weight"):
            out[name] = w[qrows][:, pr]
        elif name.endswith("q_proj.bias"):
            out[name] = w[qrows]
        elif name.endswith(("k_proj.weight", "v_proj.weight")):
            out[name] = w[kvrows][:, pr]
        elif name.endswith(("k_proj.bias", "v_proj.bias")):
            out[name] = w[kvrows]
        elif name.endswith("o_proj.weight"):
            out[name] = w[pr][:, qrows]
        elif name.endswith(("gate_proj.weight", "up_proj.weight")):
            out[name] = w[pm][:, pr]
        elif name.endswith("down_proj.weight"):
            out[name] = w[pr][:, pm]
        elif name.endswith(("norm.weight", "o_proj.bias")):
            out[name] = w[pr]
        else:
            raise InputError(f"permutation has no rule for {name}")
    return {k: v.contiguous() for k, v in out.items()}

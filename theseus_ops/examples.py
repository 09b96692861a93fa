"""A tiny, self-built model pair to try the engine on, and the function-preserving transforms
the oracles use.

``python -m theseus_ops.examples tiny-pair --out DIR`` writes:

- ``v1``: a tiny Llama-style base (random init, seeded);
- ``v1-tuned``: v1 fine-tuned for a few steps on a synthetic lookup skill (x -> 7x+3 mod V);
- ``v2``: v1 with extra silent MLP units, then residual channels, heads and MLP units permuted
  consistently: the same function in unknown, wider coordinates, the case Theseus exists for;
- ``calibration.safetensors``: unlabeled task inputs (from the skill's train split).

Transport of the v1 fine-tune to v2 is then exact, and pad is not: a quick end-to-end check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from theseus_ops.errors import InputError
from theseus_ops.permutations import head_rows, permutations, permutations_for, permute_state


def permute_llama(state: dict[str, torch.Tensor], config, seed: int = 5) -> dict[str, torch.Tensor]:
    """B = A with residual channels, kv-head groups, query heads within groups and MLP units permuted."""
    return permute_state(state, config, permutations(config, seed))


def permute_gpt2(state: dict[str, torch.Tensor], config, seed: int = 5) -> dict[str, torch.Tensor]:
    """B = A with residual channels, heads (q, k, v alike) and MLP units permuted; Conv1D is [in, out]."""
    d, h = config.n_embd, config.n_head
    inner = config.n_inner or 4 * d
    perms = permutations_for(d, inner, h, h, seed)
    pr, pm = perms["resid"], perms["mlp"]
    heads = head_rows(perms["q_heads"], d // h)
    qkv = torch.cat([heads, d + heads, 2 * d + heads])
    out = {}
    for name, w in state.items():
        if name.endswith(("wte.weight", "wpe.weight", "lm_head.weight")):
            out[name] = w[:, pr]
        elif name.endswith("c_attn.weight"):
            out[name] = w[pr][:, qkv]
        elif name.endswith("c_attn.bias"):
            out[name] = w[qkv]
        elif name.endswith("attn.c_proj.weight"):
            out[name] = w[heads][:, pr]
        elif name.endswith("mlp.c_fc.weight"):
            out[name] = w[pr][:, pm]
        elif name.endswith("mlp.c_fc.bias"):
            out[name] = w[pm]
        elif name.endswith("mlp.c_proj.weight"):
            out[name] = w[pm][:, pr]
        elif name.endswith((".bias", "ln_1.weight", "ln_2.weight", "ln_f.weight")):
            out[name] = w[pr]
        else:
            raise AssertionError(f"unhandled {name}")
    return out


def widen_mlp_llama(state: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    """Extra MLP units with zero input and output weights: silent, so the function is unchanged."""
    out = dict(state)
    for name, w in state.items():
        if name.endswith(("gate_proj.weight", "up_proj.weight")):
            out[name] = torch.cat([w, torch.zeros(extra, w.shape[1])], 0)
        elif name.endswith("down_proj.weight"):
            out[name] = torch.cat([w, torch.zeros(w.shape[0], extra)], 1)
    return out


def widen_mlp_gpt2(state: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    out = dict(state)
    for name, w in state.items():
        if name.endswith("mlp.c_fc.weight"):
            out[name] = torch.cat([w, torch.zeros(w.shape[0], extra)], 1)
        elif name.endswith("mlp.c_fc.bias"):
            out[name] = torch.cat([w, torch.zeros(extra)])
        elif name.endswith("mlp.c_proj.weight"):
            out[name] = torch.cat([w, torch.zeros(extra, w.shape[1])], 0)
    return out


def bert_permutations(config, seed: int = 5) -> dict[str, torch.Tensor]:
    """Residual, attention-head, MLP-unit and pooler-output permutations of a BERT encoder."""
    gen = torch.Generator().manual_seed(seed)
    d, heads = config.hidden_size, config.num_attention_heads
    return {"resid": torch.randperm(d, generator=gen), "heads": torch.randperm(heads, generator=gen),
            "mlp": torch.randperm(config.intermediate_size, generator=gen),
            "pooler": torch.randperm(d, generator=gen)}


def permute_bert(state: dict[str, torch.Tensor], config, seed: int = 5) -> dict[str, torch.Tensor]:
    """B = A with residual channels, heads, MLP units and pooler outputs permuted consistently.

    LayerNorm averages over channels, so it commutes with a channel permutation; a classifier head
    reads the permuted pooler output and writes labels unchanged, so logits are identical. Names may
    carry the ``bert.`` prefix (a model with a head) or not (a bare ``BertModel``); buffers such as
    ``embeddings.position_ids`` pass through.
    """
    perms = bert_permutations(config, seed)
    pr, pm, pp = perms["resid"], perms["mlp"], perms["pooler"]
    heads = head_rows(perms["heads"], config.hidden_size // config.num_attention_heads)
    out = {}
    for full, w in state.items():
        name = full.removeprefix("bert.")
        if name.startswith("embeddings.") and name.endswith("_embeddings.weight"):
            out[full] = w[:, pr]
        elif name.startswith("embeddings.LayerNorm") or name.endswith(("LayerNorm.weight", "LayerNorm.bias")):
            out[full] = w[pr]
        elif name.endswith(("query.weight", "key.weight", "value.weight")):
            out[full] = w[heads][:, pr]
        elif name.endswith(("query.bias", "key.bias", "value.bias")):
            out[full] = w[heads]
        elif name.endswith("attention.output.dense.weight"):
            out[full] = w[pr][:, heads]
        elif name.endswith("intermediate.dense.weight"):
            out[full] = w[pm][:, pr]
        elif name.endswith("intermediate.dense.bias"):
            out[full] = w[pm]
        elif name.endswith("output.dense.weight"):
            out[full] = w[pr][:, pm]
        elif name.endswith(("output.dense.bias", "attention.output.dense.bias")):
            out[full] = w[pr]
        elif name == "pooler.dense.weight":
            out[full] = w[pp][:, pr]
        elif name == "pooler.dense.bias":
            out[full] = w[pp]
        elif name == "classifier.weight":
            out[full] = w[:, pp]
        elif name in ("classifier.bias", "embeddings.position_ids", "embeddings.token_type_ids"):
            out[full] = w
        else:
            raise AssertionError(f"unhandled {full}")
    return {k: v.contiguous() for k, v in out.items()}


def widen_mlp_bert(state: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    """Extra MLP units with zero input weights, bias and output weights: GELU(0) = 0, so they are silent.

    Only the MLP: widening BERT's residual stream is not function-preserving, because LayerNorm
    subtracts the mean over all channels and zero channels shift it (RMSNorm only rescales, see
    :func:`widen_residual_llama`).
    """
    out = dict(state)
    for name, w in state.items():
        if name.endswith("intermediate.dense.weight"):
            out[name] = torch.cat([w, torch.zeros(extra, w.shape[1], dtype=w.dtype)], 0)
        elif name.endswith("intermediate.dense.bias"):
            out[name] = torch.cat([w, torch.zeros(extra, dtype=w.dtype)])
        elif name.endswith("output.dense.weight") and "attention" not in name:
            out[name] = torch.cat([w, torch.zeros(w.shape[0], extra, dtype=w.dtype)], 1)
    return out


def widen_residual_llama(state: dict[str, torch.Tensor], config, extra: int):
    """``extra`` residual channels that stay exactly zero; returns ``(state, wider config)``.

    Nothing writes the new channels (zero embedding columns, zero o_proj/down_proj rows) and nothing
    reads them (zero q/k/v/gate/up/lm_head columns). RMSNorm divides by the root mean square over
    all d + k channels, which zeros shrink by sqrt(d / (d + k)); scaling every norm weight by
    sqrt(d / (d + k)) and ``rms_norm_eps`` by d / (d + k) compensates exactly:
    rsqrt(ms·d/(d+k) + eps·d/(d+k)) = sqrt((d+k)/d)·rsqrt(ms + eps). Heads keep their ``head_dim``.
    """
    import math

    import transformers

    d = config.hidden_size
    wide = d + extra
    if wide % config.num_attention_heads:  # transformers validates it even when head_dim is explicit
        raise InputError(f"widening the residual stream to {wide} channels: transformers needs a multiple of the "
                         f"{config.num_attention_heads} attention heads")
    scale = math.sqrt(d / wide)
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    new_config = transformers.LlamaConfig(**{**config.to_dict(), "hidden_size": wide, "head_dim": head_dim,
                                             "rms_norm_eps": config.rms_norm_eps * d / wide})

    def zero_cols(w):
        return torch.cat([w, torch.zeros(w.shape[0], extra, dtype=w.dtype)], 1)

    def zero_rows(w):
        return torch.cat([w, torch.zeros(extra, w.shape[1], dtype=w.dtype)], 0)

    out = {}
    for name, w in state.items():
        if name.endswith(("embed_tokens.weight", "lm_head.weight", "q_proj.weight", "k_proj.weight",
                          "v_proj.weight", "gate_proj.weight", "up_proj.weight")):
            out[name] = zero_cols(w)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            out[name] = zero_rows(w)
        elif name.endswith("norm.weight"):
            out[name] = torch.cat([w * scale, torch.full((extra,), float(w.mean()) * scale, dtype=w.dtype)])
        elif name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
            out[name] = w
        else:
            raise AssertionError(f"unhandled {name}")
    return out, new_config
def _perms(hidden: int, intermediate: int, heads: int, kv: int, head_dim: int, seed: int) -> dict[str, torch.Tensor]:
    """The permutations plus the weight rows of the query heads and the kv heads they imply."""
    perms = permutations_for(hidden, intermediate, heads, kv, seed)
    return {**perms, "q_rows": head_rows(perms["q_heads"], head_dim), "kv_rows": head_rows(perms["kv_heads"], head_dim)}


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def permute_decoder(state: dict[str, torch.Tensor], config, seed: int = 5) -> dict[str, torch.Tensor]:
    """Llama-layout decoders (Mistral, Qwen2/3, Gemma 2/3): residual channels, kv-head groups, query
    heads within groups and MLP units permuted (:func:`theseus_ops.permutations.permute_state`)."""
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return permute_state(state, config, permutations_for(config.hidden_size, config.intermediate_size,
                                                         config.num_attention_heads, kv, seed))


def quarter_turns(head_dim: int, seed: int = 3) -> torch.Tensor:
    """R (head_dim × head_dim): each rotary pair (i, i + head_dim/2) turned by a random multiple of 90°.

    A 2-D rotation commutes with RoPE's rotation of the pair, and a quarter turn is a signed permutation,
    so it also commutes with a per-coordinate norm weight (which it permutes): applied to every head's
    queries and keys alike it keeps the function, whatever q_norm/k_norm hold.
    """
    gen = torch.Generator().manual_seed(seed)
    half = head_dim // 2
    angle = torch.randint(0, 4, (half,), generator=gen).double() * (torch.pi / 2)
    cos, sin = torch.cos(angle).round(), torch.sin(angle).round()
    r = torch.zeros(head_dim, head_dim, dtype=torch.float64)
    i = torch.arange(half)
    r[i, i], r[i + half, i + half] = cos, cos
    r[i, i + half], r[i + half, i] = sin, -sin
    return r


def rotate_head_pairs(state: dict[str, torch.Tensor], config, r: torch.Tensor) -> dict[str, torch.Tensor]:
    """B = A with every head's queries and keys (and the q_norm/k_norm weights) expressed through R:
    q_B = q_A R per head, so W_B = Rᵀ W_A per head block and w_B = (R∘R)ᵀ w_A (see ``quarter_turns``)."""
    hd = _head_dim(config)
    out = dict(state)
    for name, w in state.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            blocks = w.double().reshape(-1, hd, w.shape[1])
            out[name] = torch.einsum("ji,hjd->hid", r, blocks).reshape(w.shape).to(w.dtype).contiguous()
        elif name.endswith(("q_norm.weight", "k_norm.weight")):
            out[name] = ((r * r).T @ w.double()).to(w.dtype)
    return out


def widen_residual_gemma(state: dict[str, torch.Tensor], config, hidden: int):
    """Gemma with ``hidden`` residual channels computing the same function; returns (state, config).

    The new channels are written by nothing (zero embedding columns, zero o_proj/down_proj rows). Gemma
    multiplies embeddings by √d and its (1 + w) RMSNorms average over d, so the embedding table is scaled
    by √(d/d'), every norm but the final one by the same factor (s' = s·√(d/d'), eps by d/d'), and the
    final norm is kept: the tied head then reads √(d/d')·E through a norm √(d'/d) larger, the same logits.
    """
    d = config.hidden_size
    s = (d / hidden) ** 0.5
    wide = type(config)(**{**config.to_dict(), "hidden_size": hidden, "rms_norm_eps": config.rms_norm_eps * d / hidden})
    out = {}
    for name, w in state.items():
        if name.endswith("embed_tokens.weight"):
            out[name] = torch.cat([w * s, torch.zeros(w.shape[0], hidden - d)], 1)
        elif name.endswith(("q_norm.weight", "k_norm.weight")):
            out[name] = w
        elif name.endswith("model.norm.weight"):
            out[name] = torch.cat([w, torch.zeros(hidden - d)])
        elif name.endswith("norm.weight"):
            out[name] = torch.cat([(1 + w) * s - 1, torch.full((hidden - d,), s - 1)])
        elif name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight")):
            out[name] = torch.cat([w, torch.zeros(w.shape[0], hidden - d)], 1)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            out[name] = torch.cat([w, torch.zeros(hidden - d, w.shape[1])], 0)
        else:
            raise AssertionError(f"unhandled {name}")
    return out, wide


def permute_phi3(state: dict[str, torch.Tensor], config, seed: int = 5) -> dict[str, torch.Tensor]:
    """Phi-3: as ``permute_decoder``, through the fused ``qkv_proj`` ([q | k | v] rows, q with all heads,
    k and v with the kv heads) and ``gate_up_proj`` ([gate | up] rows)."""
    h, kv, hd = config.num_attention_heads, config.num_key_value_heads, _head_dim(config)
    inter = config.intermediate_size
    p = _perms(config.hidden_size, inter, h, kv, hd, seed)
    pr, pm = p["resid"], p["mlp"]
    qkv = torch.cat([p["q_rows"], h * hd + p["kv_rows"], (h + kv) * hd + p["kv_rows"]])
    gate_up = torch.cat([pm, inter + pm])
    out = {}
    for name, w in state.items():
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            out[name] = w[:, pr]
        elif name.endswith("qkv_proj.weight"):
            out[name] = w[qkv][:, pr]
        elif name.endswith("o_proj.weight"):
            out[name] = w[pr][:, p["q_rows"]]
        elif name.endswith("gate_up_proj.weight"):
            out[name] = w[gate_up][:, pr]
        elif name.endswith("down_proj.weight"):
            out[name] = w[pr][:, pm]
        elif name.endswith("norm.weight"):
            out[name] = w[pr]
        else:
            raise AssertionError(f"unhandled {name}")
    return {k: v.contiguous() for k, v in out.items()}


def widen_mlp_phi3(state: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    """Silent extra MLP units in both halves of the fused ``gate_up_proj``."""
    out = dict(state)
    for name, w in state.items():
        if name.endswith("gate_up_proj.weight"):
            gate, up = w.chunk(2, dim=0)
            pad = torch.zeros(extra, w.shape[1])
            out[name] = torch.cat([gate, pad, up, pad], 0)
        elif name.endswith("down_proj.weight"):
            out[name] = torch.cat([w, torch.zeros(w.shape[0], extra)], 1)
    return out


def permute_gpt_neox(state: dict[str, torch.Tensor], config, seed: int = 5) -> dict[str, torch.Tensor]:
    """GPT-NeoX / Pythia: ``query_key_value`` holds [q_h, k_h, v_h] per head h, so a head permutation
    moves whole 3·head_dim row groups; ``dense`` reads the heads' outputs head-major."""
    h, hd = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    p = _perms(config.hidden_size, config.intermediate_size, h, h, hd, seed)
    pr, pm = p["resid"], p["mlp"]
    qkv = head_rows(p["q_heads"], 3 * hd)
    out = {}
    for name, w in state.items():
        if name.endswith(("embed_in.weight", "embed_out.weight")):
            out[name] = w[:, pr]
        elif name.endswith("query_key_value.weight"):
            out[name] = w[qkv][:, pr]
        elif name.endswith("query_key_value.bias"):
            out[name] = w[qkv]
        elif name.endswith("attention.dense.weight"):
            out[name] = w[pr][:, p["q_rows"]]
        elif name.endswith("dense_h_to_4h.weight"):
            out[name] = w[pm][:, pr]
        elif name.endswith("dense_h_to_4h.bias"):
            out[name] = w[pm]
        elif name.endswith("dense_4h_to_h.weight"):
            out[name] = w[pr][:, pm]
        elif name.endswith((".bias", "layernorm.weight", "layer_norm.weight")):
            out[name] = w[pr]
        else:
            raise AssertionError(f"unhandled {name}")
    return {k: v.contiguous() for k, v in out.items()}


def widen_mlp_gpt_neox(state: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    out = dict(state)
    for name, w in state.items():
        if name.endswith("dense_h_to_4h.weight"):
            out[name] = torch.cat([w, torch.zeros(extra, w.shape[1])], 0)
        elif name.endswith("dense_h_to_4h.bias"):
            out[name] = torch.cat([w, torch.zeros(extra)])
        elif name.endswith("dense_4h_to_h.weight"):
            out[name] = torch.cat([w, torch.zeros(w.shape[0], extra)], 1)
    return out


# Post-norm encoders: (suffix, rows, columns) for each weight; "heads" are the attention heads' rows.
_BERT_LIKE = (
    ("attention.self.query.weight", "heads", "resid"), ("attention.self.key.weight", "heads", "resid"),
    ("attention.self.value.weight", "heads", "resid"), ("attention.self.query.bias", "heads", None),
    ("attention.self.key.bias", "heads", None), ("attention.self.value.bias", "heads", None),
    ("attention.output.dense.weight", "resid", "heads"), ("intermediate.dense.weight", "mlp", "resid"),
    ("intermediate.dense.bias", "mlp", None), ("output.dense.weight", "resid", "mlp"),
    ("classifier.dense.weight", None, "resid"), ("pooler.dense.weight", None, "resid"),
    ("classifier.dense.bias", None, None), ("pooler.dense.bias", None, None), ("out_proj.weight", None, None),
    ("out_proj.bias", None, None), ("classifier.weight", None, None), ("classifier.bias", None, None),
    ("embeddings.weight", None, "resid"), ("LayerNorm.weight", "resid", None), ("LayerNorm.bias", "resid", None),
    ("dense.bias", "resid", None),
)
_DISTILBERT = (
    ("q_lin.weight", "heads", "resid"), ("k_lin.weight", "heads", "resid"), ("v_lin.weight", "heads", "resid"),
    ("q_lin.bias", "heads", None), ("k_lin.bias", "heads", None), ("v_lin.bias", "heads", None),
    ("out_lin.weight", "resid", "heads"), ("out_lin.bias", "resid", None), ("lin1.weight", "mlp", "resid"),
    ("lin1.bias", "mlp", None), ("lin2.weight", "resid", "mlp"), ("lin2.bias", "resid", None),
    ("pre_classifier.weight", None, "resid"), ("pre_classifier.bias", None, None),
    ("classifier.weight", None, None), ("classifier.bias", None, None),
    ("embeddings.weight", None, "resid"), ("LayerNorm.weight", "resid", None), ("LayerNorm.bias", "resid", None),
    ("layer_norm.weight", "resid", None), ("layer_norm.bias", "resid", None),
)


def _permute_by_table(state: dict[str, torch.Tensor], table, perms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, w in state.items():
        rows, cols = next(((r, c) for suffix, r, c in table if name.endswith(suffix)), ("?", "?"))
        if rows == "?":
            raise AssertionError(f"unhandled {name}")
        w = w[perms[rows]] if rows else w
        out[name] = (w[:, perms[cols]] if cols else w).contiguous()
    return out


def permute_bert_like(state: dict[str, torch.Tensor], config, seed: int = 5) -> dict[str, torch.Tensor]:
    """BERT / RoBERTa / XLM-R encoders: residual channels, heads (q, k, v alike) and MLP units; the
    classification head's input columns follow the residual, its own units stay."""
    h = config.num_attention_heads
    p = _perms(config.hidden_size, config.intermediate_size, h, h, config.hidden_size // h, seed)
    return _permute_by_table(state, _BERT_LIKE, {"resid": p["resid"], "mlp": p["mlp"], "heads": p["q_rows"]})


def widen_mlp_bert_like(state: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    out = dict(state)
    for name, w in state.items():
        if name.endswith("intermediate.dense.weight"):
            out[name] = torch.cat([w, torch.zeros(extra, w.shape[1])], 0)
        elif name.endswith("intermediate.dense.bias"):
            out[name] = torch.cat([w, torch.zeros(extra)])
        elif name.endswith("output.dense.weight") and not name.endswith("attention.output.dense.weight"):
            out[name] = torch.cat([w, torch.zeros(w.shape[0], extra)], 1)
    return out


def permute_distilbert(state: dict[str, torch.Tensor], config, seed: int = 5) -> dict[str, torch.Tensor]:
    """DistilBERT: as ``permute_bert_like``, under its own names (q_lin, ffn.lin1, sa_layer_norm...)."""
    h = config.n_heads
    p = _perms(config.dim, config.hidden_dim, h, h, config.dim // h, seed)
    return _permute_by_table(state, _DISTILBERT, {"resid": p["resid"], "mlp": p["mlp"], "heads": p["q_rows"]})


def widen_mlp_distilbert(state: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    out = dict(state)
    for name, w in state.items():
        if name.endswith("ffn.lin1.weight"):
            out[name] = torch.cat([w, torch.zeros(extra, w.shape[1])], 0)
        elif name.endswith("ffn.lin1.bias"):
            out[name] = torch.cat([w, torch.zeros(extra)])
        elif name.endswith("ffn.lin2.weight"):
            out[name] = torch.cat([w, torch.zeros(w.shape[0], extra)], 1)
    return out


# T5 (encoder-decoder, pre-norm, no biases): (suffix, rows, columns); "heads" are the attention heads'
# weight rows, "head_cols" the heads themselves (the relative attention bias is [buckets, heads]).
_T5 = (
    ("SelfAttention.q.weight", "heads", "resid"), ("SelfAttention.k.weight", "heads", "resid"),
    ("SelfAttention.v.weight", "heads", "resid"), ("SelfAttention.o.weight", "resid", "heads"),
    ("EncDecAttention.q.weight", "heads", "resid"), ("EncDecAttention.k.weight", "heads", "resid"),
    ("EncDecAttention.v.weight", "heads", "resid"), ("EncDecAttention.o.weight", "resid", "heads"),
    ("relative_attention_bias.weight", None, "head_cols"),
    ("DenseReluDense.wi.weight", "mlp", "resid"), ("DenseReluDense.wi_0.weight", "mlp", "resid"),
    ("DenseReluDense.wi_1.weight", "mlp", "resid"), ("DenseReluDense.wo.weight", "resid", "mlp"),
    ("layer_norm.weight", "resid", None),
    ("shared.weight", None, "resid"), ("embed_tokens.weight", None, "resid"), ("lm_head.weight", None, "resid"),
)


def permute_t5(state: dict[str, torch.Tensor], config, seed: int = 5) -> dict[str, torch.Tensor]:
    """T5 / Flan-T5 (``T5ForConditionalGeneration``, ``T5Model``, ``T5EncoderModel``): residual channels,
    heads (q, k, v and o's input columns alike) in every attention (encoder self-, decoder self- and
    cross-attention) and MLP units (``wi`` or the gated ``wi_0``/``wi_1``, and ``wo``'s columns).

    T5LayerNorm only rescales by the root mean square over all channels, so it commutes with a channel
    permutation and its weight follows the residual. Block 0 of each stack holds the relative position
    bias, [num_buckets, num_heads], which every later block of that stack reuses: its columns are the
    heads, so they take the head permutation, or the permuted heads would get other heads' position
    biases. The tied decoder output scaling (d_model ** -0.5) is a scalar and is unaffected.
    """
    h = config.num_heads
    p = _perms(config.d_model, config.d_ff, h, h, config.d_kv, seed)
    return _permute_by_table(state, _T5, {"resid": p["resid"], "mlp": p["mlp"], "heads": p["q_rows"],
                                          "head_cols": p["q_heads"]})


def widen_mlp_t5(state: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    """Extra MLP units in every feed-forward (encoder and decoder) with zero input rows and output columns:
    relu(0) = gelu(0) = 0 (and a gated unit is 0 · 0), so they are silent; no biases to pad."""
    out = dict(state)
    for name, w in state.items():
        if name.endswith(("DenseReluDense.wi.weight", "DenseReluDense.wi_0.weight", "DenseReluDense.wi_1.weight")):
            out[name] = torch.cat([w, torch.zeros(extra, w.shape[1], dtype=w.dtype)], 0)
        elif name.endswith("DenseReluDense.wo.weight"):
            out[name] = torch.cat([w, torch.zeros(w.shape[0], extra, dtype=w.dtype)], 1)
    return out


def _build(config, seed: int):
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.15)
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def lookup_task(rows: int, pairs: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences "x1 f(x1) x2 f(x2) ..." with f(x) = (7x + 3) mod (vocab − 3) + 3; labels on the f(x)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(3, vocab, (rows, pairs), generator=gen)
    fx = (7 * x + 3) % (vocab - 3) + 3
    ids = torch.stack([x, fx], dim=2).reshape(rows, 2 * pairs)
    labels = ids.clone()
    labels[:, 0::2] = -100
    return ids, labels


def build_tiny_pair(out: Path, steps: int = 120) -> dict:
    """Write v1, v1-tuned, v2 and a calibration file under ``out``; returns a summary."""
    import transformers
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    v1 = _build(config, 0)
    v1.save_pretrained(str(out / "v1"))
    state = load_file(str(out / "v1" / "model.safetensors"))

    train, labels = lookup_task(256, 8, config.vocab_size, seed=1)
    tuned = _build(config, 0)
    tuned.train()
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=1e-2)
    losses = []
    for step in range(steps):
        batch = slice((step * 32) % 256, (step * 32) % 256 + 32)
        loss = tuned(input_ids=train[batch], labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    tuned.eval().save_pretrained(str(out / "v1-tuned"))

    wide = transformers.LlamaConfig(**{**config.to_dict(), "intermediate_size": 96})
    state_v2 = permute_llama(widen_mlp_llama(state, 32), wide, seed=7)
    v2 = transformers.LlamaForCausalLM(wide).eval()
    v2.load_state_dict(state_v2, strict=False)
    v2.save_pretrained(str(out / "v2"))
    save_file({"input_ids": train[:32], "attention_mask": torch.ones_like(train[:32])},
              str(out / "calibration.safetensors"))
    summary = {"out": str(out), "fine_tune_loss": [round(losses[0], 3), round(losses[-1], 3)]}
    (out / "example.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m theseus_ops.examples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    pair = sub.add_parser("tiny-pair", help="write v1, v1-tuned, v2 and a calibration file")
    pair.add_argument("--out", required=True, type=Path)
    pair.add_argument("--steps", type=int, default=120)
    args = parser.parse_args(argv)
    summary = build_tiny_pair(args.out, args.steps)
    print(f"wrote {summary['out']}: v1, v1-tuned (loss {summary['fine_tune_loss'][0]} -> "
          f"{summary['fine_tune_loss'][1]}), v2, calibration.safetensors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

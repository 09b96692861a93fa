"""Tiny models built from configs, and the function-preserving transforms the oracles need.

``permute_*`` returns B = A with residual channels, attention heads and MLP units permuted
consistently (same function, scrambled coordinates); ``widen_mlp_*`` returns B = A with extra MLP
units whose input and output weights are zero (same function, wider).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

VOCAB = 64


def llama_config(hidden: int = 32, inter: int = 64, layers: int = 2, heads: int = 4, kv: int = 2,
                 tie: bool = False, vocab: int = VOCAB) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=128, tie_word_embeddings=tie,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )


def gpt2_config(hidden: int = 32, layers: int = 2, heads: int = 4, inner: int | None = None,
                vocab: int = VOCAB) -> transformers.GPT2Config:
    return transformers.GPT2Config(
        n_embd=hidden, n_layer=layers, n_head=heads, n_inner=inner, vocab_size=vocab, n_positions=64,
        bos_token_id=1, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )


def build(config: transformers.PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = transformers.LlamaForCausalLM if config.model_type == "llama" else transformers.GPT2LMHeadModel
    model = cls(config).eval()
    with torch.no_grad():  # larger weights than the default init, so every site carries signal
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.15)
            elif "bias" in name:
                p.normal_(0, 0.05)
            else:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def save(model: torch.nn.Module, path: Path) -> Path:
    model.save_pretrained(str(path))
    return path


def with_state(config: transformers.PretrainedConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = build(config, seed=123)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k == "lm_head.weight" for k in missing), missing
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def file_state(model: torch.nn.Module, tmp: Path) -> dict[str, torch.Tensor]:
    """The tensors save_pretrained writes (tied duplicates removed), as a task vector would key them."""
    from safetensors.torch import load_file

    d = save(model, tmp)
    return load_file(str(d / "model.safetensors"))


def random_delta(state: dict[str, torch.Tensor], scale: float = 0.05, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(v.shape, generator=gen) for k, v in state.items()}


def save_delta(delta: dict[str, torch.Tensor], path: Path, base_sha: str | None = None) -> Path:
    meta = {"theseus.format_version": "1", "theseus.kind": "full_delta"}
    if base_sha:
        meta["theseus.base_sha256"] = base_sha
    save_file({k: v.contiguous() for k, v in delta.items()}, str(path), metadata=meta)
    return path


def calibration(path: Path, rows: int = 16, length: int = 24, seed: int = 2, labels: bool = False) -> Path:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=gen)
    tensors = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if labels:
        lab = ids.clone()
        lab[:, : length // 2] = -100  # the "answer" is the second half
        tensors["labels"] = lab
    save_file(tensors, str(path))
    return path


def _perms(seed: int, hidden: int, inter: int, heads: int, kv: int):
    gen = torch.Generator().manual_seed(seed)
    pr = torch.randperm(hidden, generator=gen)
    pm = torch.randperm(inter, generator=gen)
    pk = torch.randperm(kv, generator=gen)
    group = heads // kv
    within = [torch.randperm(group, generator=gen) for _ in range(kv)]
    q_heads = torch.cat([pk[i] * group + within[i] for i in range(kv)])
    return pr, pm, pk, q_heads


def _rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def permute_llama(state: dict[str, torch.Tensor], config, seed: int = 5) -> dict[str, torch.Tensor]:
    """B = A with residual channels, kv-head groups, query heads within groups and MLP units permuted."""
    hd = config.hidden_size // config.num_attention_heads
    pr, pm, pk, qh = _perms(seed, config.hidden_size, config.intermediate_size, config.num_attention_heads,
                            config.num_key_value_heads)
    qrows, kvrows = _rows(qh, hd), _rows(pk, hd)
    out = {}
    for name, w in state.items():
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            out[name] = w[:, pr]
        elif name.endswith("q_proj.weight"):
            out[name] = w[qrows][:, pr]
        elif name.endswith(("k_proj.weight", "v_proj.weight")):
            out[name] = w[kvrows][:, pr]
        elif name.endswith("o_proj.weight"):
            out[name] = w[pr][:, qrows]
        elif name.endswith(("gate_proj.weight", "up_proj.weight")):
            out[name] = w[pm][:, pr]
        elif name.endswith("down_proj.weight"):
            out[name] = w[pr][:, pm]
        elif name.endswith("norm.weight"):
            out[name] = w[pr]
        else:
            raise AssertionError(f"unhandled {name}")
    return out


def permute_gpt2(state: dict[str, torch.Tensor], config, seed: int = 5) -> dict[str, torch.Tensor]:
    """B = A with residual channels, heads (q, k, v alike) and MLP units permuted; Conv1D is [in, out]."""
    d, h = config.n_embd, config.n_head
    inner = config.n_inner or 4 * d
    pr, pm, _pk, qh = _perms(seed, d, inner, h, h)
    heads = _rows(qh, d // h)
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


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.double()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def add_delta(state: dict[str, torch.Tensor], delta: dict[str, torch.Tensor], alpha: float = 1.0):
    return {k: v + alpha * delta[k] if k in delta else v for k, v in state.items()}


class Case:
    """A source base A, a target base B (a function-preserving transform of A), a task vector and
    a calibration file, all on disk, plus what the oracle needs to compare A + τ_A with B + τ_B."""

    def __init__(self, root: Path, family: str, oracle: str, tie: bool = False, seed: int = 0) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.family, self.oracle = root, family, oracle
        llama = family == "llama"
        self.config_a = llama_config(tie=tie) if llama else gpt2_config()
        model_a = build(self.config_a, seed)
        self.state_a = file_state(model_a, root / "A")
        self.source = root / "A"
        if oracle == "identity":
            self.config_b, self.state_b = self.config_a, self.state_a
        elif oracle == "permutation":
            self.config_b = self.config_a
            self.state_b = (permute_llama if llama else permute_gpt2)(self.state_a, self.config_a)
        elif oracle == "widening":
            self.config_b = llama_config(inter=96, tie=tie) if llama else gpt2_config(inner=160)
            self.state_b = (widen_mlp_llama if llama else widen_mlp_gpt2)(self.state_a, 32)
        else:
            raise ValueError(oracle)
        self.target = root / "B"
        save(with_state(self.config_b, self.state_b), self.target)
        self.delta = random_delta(self.state_a, seed=seed + 1)
        self.task_vector = save_delta(self.delta, root / "tv.safetensors")
        self.calibration = calibration(root / "calibration.safetensors")

    def error(self, delta_b: dict[str, torch.Tensor], alpha: float = 1.0) -> float:
        """Relative logits error of B + α·τ_B against A + α·τ_A on fresh inputs."""
        ids = torch.randint(3, VOCAB, (4, 20), generator=torch.Generator().manual_seed(99))
        tuned_a = with_state(self.config_a, add_delta(self.state_a, self.delta, alpha))
        tuned_b = with_state(self.config_b, add_delta(self.state_b, delta_b, alpha))
        return relative_error(logits(tuned_b, ids), logits(tuned_a, ids))

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

from theseus_ops.examples import (
    permute_gpt2,
    permute_llama,
    widen_mlp_gpt2,
    widen_mlp_llama,
)

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
    model = tie_head(cls(config), config).eval()
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
    return tie_head(model, config).eval()


def tie_head(model: torch.nn.Module, config: transformers.PretrainedConfig) -> torch.nn.Module:
    """Tie the LM head to the input embedding ourselves when the config says so.

    The oracles' tied cases rest on this: left to transformers, a clean-clone CI run built tied
    configs with an untied, randomly initialised head, so A and B differed by that head alone.
    """
    if config.tie_word_embeddings:
        model.lm_head.weight = model.get_input_embeddings().weight
        assert model.lm_head.weight is model.get_input_embeddings().weight
    return model


def file_state(model: torch.nn.Module, tmp: Path) -> dict[str, torch.Tensor]:
    """The tensors save_pretrained writes (tied duplicates removed), as a task vector would key them."""
    from safetensors.torch import load_file

    d = save(model, tmp)
    state = load_file(str(d / "model.safetensors"))
    if getattr(model.config, "tie_word_embeddings", False):
        # A tied head is the embedding: drop it here as well, whether or not save_pretrained did.
        state.pop("lm_head.weight", None)
    return state


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

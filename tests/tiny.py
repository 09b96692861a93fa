"""Tiny models built from configs, and the function-preserving transforms the oracles need.

``permute_*`` returns B = A with residual channels, attention heads and MLP units permuted
consistently (same function, scrambled coordinates); ``widen_mlp_*`` returns B = A with extra MLP
units whose input and output weights are zero (same function, wider).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

from theseus_ops.examples import (
    permute_bert_like,
    permute_decoder,
    permute_distilbert,
    permute_gpt2,
    permute_gpt_neox,
    permute_llama,
    permute_phi3,
    permute_t5,
    quarter_turns,
    rotate_head_pairs,
    widen_mlp_bert_like,
    widen_mlp_distilbert,
    widen_mlp_gpt2,
    widen_mlp_gpt_neox,
    widen_mlp_llama,
    widen_mlp_phi3,
    widen_mlp_t5,
    widen_residual_gemma,
)
from theseus_ops.io.task_vectors import FULL_DELTA, META_FORMAT, META_VECTOR_FORMAT

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


_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
_DECODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=VOCAB, max_position_embeddings=128, **_IDS)
_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB, num_labels=3)


def mistral_config(inter: int = 64, tie: bool = False) -> transformers.MistralConfig:
    return transformers.MistralConfig(intermediate_size=inter, tie_word_embeddings=tie, sliding_window=16, **_DECODER)


def xlm_roberta_config(inter: int = 64, tie: bool = False) -> transformers.XLMRobertaConfig:
    """XLM-R with a classification head (no MLM head, so nothing to tie)."""
    return transformers.XLMRobertaConfig(intermediate_size=inter, max_position_embeddings=66, bos_token_id=0,
                                         pad_token_id=1, eos_token_id=2, **_ENCODER)


def phi3_config(inter: int = 64, tie: bool = False) -> transformers.Phi3Config:
    """Phi-3 with grouped-query attention (unequal fused q/k/v parts) and partial rotary (half of head_dim)."""
    return transformers.Phi3Config(intermediate_size=inter, tie_word_embeddings=tie, partial_rotary_factor=0.5,
                                   **_DECODER)


def gpt_neox_config(inter: int = 48, tie: bool = False) -> transformers.GPTNeoXConfig:
    """Pythia's layout: parallel attention and MLP, rotary on a quarter of head_dim, untied head.

    The MLP is narrower than the vocabulary: layer 0's MLP runs in parallel with attention, so it reads
    token embeddings alone and its units span at most as many directions as there are distinct tokens
    (61 in the calibration); a wider one leaves directions that no input determines.
    """
    return transformers.GPTNeoXConfig(hidden_size=32, intermediate_size=inter, num_hidden_layers=2,
                                      num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=128,
                                      rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=tie, **_IDS)


def distilbert_config(inter: int = 64, tie: bool = False) -> transformers.DistilBertConfig:
    return transformers.DistilBertConfig(dim=32, hidden_dim=inter, n_layers=2, n_heads=4, vocab_size=VOCAB,
                                         max_position_embeddings=64, num_labels=3, pad_token_id=0)


def qwen3_config(inter: int = 64, tie: bool = False) -> transformers.Qwen3Config:
    return transformers.Qwen3Config(intermediate_size=inter, head_dim=8, tie_word_embeddings=tie, **_DECODER)


def gemma2_config(inter: int = 64, tie: bool = True) -> transformers.Gemma2Config:
    """Gemma 2 as released: tied head, sandwich norms, √d-scaled embeddings, a sliding-window layer."""
    return transformers.Gemma2Config(intermediate_size=inter, head_dim=8, tie_word_embeddings=True, sliding_window=8,
                                     **_DECODER)


def gemma3_config(inter: int = 64, tie: bool = True) -> transformers.Gemma3TextConfig:
    """Gemma 3 text: as Gemma 2 plus q_norm/k_norm; one sliding and one full-attention layer (two RoPE bases)."""
    return transformers.Gemma3TextConfig(intermediate_size=inter, head_dim=8, tie_word_embeddings=True,
                                         sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                                         **_DECODER)


def t5_config(inter: int = 64, tie: bool = False) -> transformers.T5Config:
    """Flan-T5's layout (gated-GELU feed-forward, no decoder output scaling), with a decoder deeper than the
    encoder so that each stack has its own depth and layer map. ``tie``: original T5 (the output scaled by
    d_model^-0.5; transformers 5 ties T5's head to the embedding either way)."""
    return transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=inter, num_layers=2, num_decoder_layers=3,
                                 num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                 dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=tie,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


@dataclass(frozen=True)
class Kit:
    """How to build one architecture's tiny models and its function-preserving transforms.

    ``config(inter, tie)``: the config with MLP width ``inter``; ``permute(state, config)``; ``widen(state, extra)``
    adds ``extra`` silent MLP units; ``inter`` is the source's MLP width; ``lora`` the adapter's target modules.
    ``rows``: calibration examples. A classifier's head reads one pooled row per example, so its spaces
    need at least their width in examples to be determined (fewer leave float noise to decide directions).
    """

    config: Callable[..., transformers.PretrainedConfig]
    permute: Callable
    widen: Callable
    inter: int = 64
    lora: tuple[str, ...] = ()
    rows: int = 16


_LLAMA_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens")
# Gemma ties its head to the embedding: PEFT's embedding adapter leaves the tied head alone while a merged delta
# moves both, so an adapted and a merged Gemma differ by construction. Its adapters skip the embedding.
_GEMMA_LORA = _LLAMA_LORA[:-1]
KITS: dict[str, Kit] = {
    "llama": Kit(lambda inter=64, tie=False: llama_config(inter=inter, tie=tie), permute_llama, widen_mlp_llama,
                 lora=_LLAMA_LORA),
    "gpt2": Kit(lambda inter=None, tie=False: gpt2_config(inner=inter), permute_gpt2, widen_mlp_gpt2, inter=128,
                lora=("c_attn", "c_proj", "c_fc")),
    "mistral": Kit(mistral_config, permute_decoder, widen_mlp_llama, lora=_LLAMA_LORA),
    "xlm-roberta": Kit(xlm_roberta_config, permute_bert_like, widen_mlp_bert_like,
                       lora=("query", "key", "value", "dense"), rows=48),
    "phi3": Kit(phi3_config, permute_phi3, widen_mlp_phi3, lora=("qkv_proj", "o_proj", "gate_up_proj", "down_proj",
                                                                 "embed_tokens")),
    "gpt_neox": Kit(gpt_neox_config, permute_gpt_neox, widen_mlp_gpt_neox, inter=48,
                    lora=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")),
    "distilbert": Kit(distilbert_config, permute_distilbert, widen_mlp_distilbert,
                      lora=("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"), rows=48),
    "qwen3": Kit(qwen3_config, permute_decoder, widen_mlp_llama, lora=_LLAMA_LORA),
    "gemma2": Kit(gemma2_config, permute_decoder, widen_mlp_llama, lora=_GEMMA_LORA),
    "gemma3": Kit(gemma3_config, permute_decoder, widen_mlp_llama, lora=_GEMMA_LORA),
    "t5": Kit(t5_config, permute_t5, widen_mlp_t5, lora=("q", "k", "v", "o", "wi_0", "wi_1", "wo")),
}

MODEL_CLASSES = {
    "llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel", "mistral": "MistralForCausalLM",
    "xlm-roberta": "XLMRobertaForSequenceClassification", "phi3": "Phi3ForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM", "distilbert": "DistilBertForSequenceClassification",
    "qwen3": "Qwen3ForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
    "t5": "T5ForConditionalGeneration",
}
# Checkpoint names that transformers 5 loads under another module name.
LOAD_ALIASES = {"embed_out.weight": "lm_head.weight"}


# LayerNorm biases of the post-norm encoders (mean, std). A LayerNorm's output lies in the affine hyperplane
# y·γ⁻¹ = Σβ/γ. With zero-mean biases that offset is near zero, so the direction γ⁻¹ of every space the
# LayerNorm feeds has ~1e-3 of the activations' scale (1e-6 of the cross moment's): below rank_tol, its
# sign is left to the pad prior, which is not equivariant, and the permutation oracle fails at ~1e-2.
# Biases with a clear mean (as trained encoders' often have) offset the hyperplane and determine it.
ENCODER_NORM_BIAS = (0.5, 0.3)
_ENCODERS = ("xlm-roberta", "distilbert")


def build(config: transformers.PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = getattr(transformers, MODEL_CLASSES[config.model_type])
    model = tie_head(cls(config), config).eval()
    norm_bias = ENCODER_NORM_BIAS if config.model_type in _ENCODERS else (0.0, 0.05)
    with torch.no_grad():  # larger weights than the default init, so every site carries signal
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.15)
            elif "bias" in name:
                p.normal_(*(norm_bias if "norm" in name.lower() else (0.0, 0.05)))
            else:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def save(model: torch.nn.Module, path: Path) -> Path:
    model.save_pretrained(str(path))
    return path


def with_state(config: transformers.PretrainedConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = build(config, seed=123)
    missing, unexpected = model.load_state_dict({LOAD_ALIASES.get(k, k): v for k, v in state.items()}, strict=False)
    assert not unexpected, unexpected
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) | {"lm_head.weight"}
    assert all(k in tied for k in missing), missing
    return tie_head(model, config).eval()


def tie_head(model: torch.nn.Module, config: transformers.PretrainedConfig) -> torch.nn.Module:
    """Tie the LM head to the input embedding ourselves when the config says so.

    The oracles' tied cases rest on this: left to transformers, a clean-clone CI run built tied
    configs with an untied, randomly initialised head, so A and B differed by that head alone.
    """
    head = model.get_output_embeddings()
    if getattr(config, "tie_word_embeddings", False) and head is not None:
        head.weight = model.get_input_embeddings().weight
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return model


def file_state(model: torch.nn.Module, tmp: Path) -> dict[str, torch.Tensor]:
    """The tensors save_pretrained writes (tied duplicates removed), as a task vector would key them."""
    from safetensors.torch import load_file

    d = save(model, tmp)
    state = load_file(str(d / "model.safetensors"))
    if getattr(model.config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        # A tied head is the embedding: drop it here as well, whether or not save_pretrained did.
        state.pop("lm_head.weight", None)
    return state


def random_delta(state: dict[str, torch.Tensor], scale: float = 0.05, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(v.shape, generator=gen) for k, v in state.items()}


def save_delta(delta: dict[str, torch.Tensor], path: Path, base_sha: str | None = None) -> Path:
    meta = {META_FORMAT: "1", META_VECTOR_FORMAT: FULL_DELTA}
    if base_sha:
        meta["theseus.base_sha256"] = base_sha
    save_file({k: v.contiguous() for k, v in delta.items()}, str(path), metadata=meta)
    return path


def calibration(path: Path, rows: int = 16, length: int = 24, seed: int = 2, labels: bool = False,
                decoder: bool = False) -> Path:
    """Random token examples; ``decoder``: with an encoder-decoder's decoder_input_ids (half as long)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=gen)
    tensors = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if decoder:
        tensors["decoder_input_ids"] = torch.randint(3, VOCAB, (rows, length // 2), generator=gen)
    if labels:
        lab = ids.clone()
        lab[:, : length // 2] = -100  # the "answer" is the second half
        tensors["labels"] = lab
    save_file(tensors, str(path))
    return path


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Full-model logits; an encoder-decoder's decoder reads the second half of the ids."""
    extra = {"decoder_input_ids": ids[:, ids.shape[1] // 2:]} if model.config.is_encoder_decoder else {}
    with torch.no_grad():
        return model(input_ids=ids, **extra).logits.double()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def add_delta(state: dict[str, torch.Tensor], delta: dict[str, torch.Tensor], alpha: float = 1.0):
    return {k: v + alpha * delta[k] if k in delta else v for k, v in state.items()}


class Case:
    """A source base A, a target base B (a function-preserving transform of A), a task vector and
    a calibration file, all on disk, plus what the oracle needs to compare A + τ_A with B + τ_B."""

    def __init__(self, root: Path, architecture: str, oracle: str, tie: bool = False, seed: int = 0) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.architecture, self.oracle = root, architecture, oracle
        kit = KITS[architecture]
        self.config_a = kit.config(tie=tie)
        model_a = build(self.config_a, seed)
        self.state_a = file_state(model_a, root / "A")
        self.source = root / "A"
        if oracle == "identity":
            self.config_b, self.state_b = self.config_a, self.state_a
        elif oracle == "permutation":
            self.config_b = self.config_a
            self.state_b = kit.permute(self.state_a, self.config_a)
        elif oracle == "widening":
            self.config_b = kit.config(inter=kit.inter + 32, tie=tie)
            self.state_b = kit.widen(self.state_a, 32)
        elif oracle == "rotary":  # heads permuted, every head's q and k turned per rotary pair (Qwen3, Gemma 3)
            self.config_b = self.config_a
            self.rotation = quarter_turns(self.config_a.head_dim)
            self.state_b = rotate_head_pairs(kit.permute(self.state_a, self.config_a), self.config_a, self.rotation)
        elif oracle == "residual-widening":  # Gemma: 16 extra residual channels, √d-scaled embeddings rescaled
            self.state_b, self.config_b = widen_residual_gemma(self.state_a, self.config_a, 48)
        else:
            raise ValueError(oracle)
        self.target = root / "B"
        save(with_state(self.config_b, self.state_b), self.target)
        self.delta = random_delta(self.state_a, seed=seed + 1)
        if oracle == "residual-widening":
            # A widened RMSNorm's weights are rescaled by √(d/d'), which no orthogonal map carries: the
            # oracle's task vector leaves the norm weights out.
            self.delta = {k: v for k, v in self.delta.items() if not k.endswith("norm.weight")}
        self.task_vector = save_delta(self.delta, root / "tv.safetensors")
        self.calibration = calibration(root / "calibration.safetensors", rows=kit.rows,
                                       decoder=self.config_a.is_encoder_decoder)

    def base_error(self) -> float:
        """Relative logits error of base B against base A: ~0 when the transform keeps the function."""
        ids = torch.randint(3, VOCAB, (4, 20), generator=torch.Generator().manual_seed(99))
        return relative_error(logits(with_state(self.config_b, self.state_b), ids),
                              logits(with_state(self.config_a, self.state_a), ids))

    def error(self, delta_b: dict[str, torch.Tensor], alpha: float = 1.0) -> float:
        """Relative logits error of B + α·τ_B against A + α·τ_A on fresh inputs."""
        ids = torch.randint(3, VOCAB, (4, 20), generator=torch.Generator().manual_seed(99))
        tuned_a = with_state(self.config_a, add_delta(self.state_a, self.delta, alpha))
        tuned_b = with_state(self.config_b, add_delta(self.state_b, delta_b, alpha))
        return relative_error(logits(tuned_b, ids), logits(tuned_a, ids))


def lookup_examples(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """The lookup skill's examples for the case's model: sequences "x1 f(x1) x2 f(x2) ..." with labels on the
    f(x) for a decoder or an encoder; for an encoder-decoder, the x read by the encoder and the f(x) as labels."""
    from theseus_ops.examples import lookup_task

    ids, labels = lookup_task(96, 8, VOCAB, seed=1)
    if case.config_a.is_encoder_decoder:
        return ids[:, 0::2].contiguous(), labels[:, 1::2].contiguous()
    return ids, labels


def finetune_lookup(case: Case, steps: int = 40) -> tuple[list[float], torch.Tensor, torch.Tensor]:
    """Fine-tune A on the lookup skill (x -> 7x+3 mod V) for ``steps`` AdamW steps and make what it changed the
    case's task vector (``case.delta`` and its file): a real update rather than a random one.

    Returns the per-step losses and the fine-tuning examples (ids, labels).
    """
    model = with_state(case.config_a, case.state_a).train()
    ids, labels = lookup_examples(case)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(steps):
        batch = slice((step * 16) % 96, (step * 16) % 96 + 16)
        loss = model(input_ids=ids[batch], labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    tuned = file_state(model.eval(), case.root / "tuned")
    case.delta = {k: tuned[k] - case.state_a[k] for k in case.state_a}
    save_delta(case.delta, case.task_vector)
    return losses, ids, labels


def answer_accuracy(config: transformers.PretrainedConfig, state: dict[str, torch.Tensor], ids: torch.Tensor,
                    labels: torch.Tensor) -> float:
    """Teacher-forced accuracy on the answer tokens (labels other than -100) of a model with ``state``.

    A decoder predicts token t + 1 at position t; an encoder-decoder's decoder predicts label t at position t.
    """
    model = with_state(config, state)
    with torch.no_grad():
        if config.is_encoder_decoder:
            logits = model(input_ids=ids, labels=labels).logits
            return float((logits.argmax(-1) == labels)[labels != -100].float().mean())
        logits = model(input_ids=ids).logits
    answer = labels[:, 1:] != -100
    return float((logits[:, :-1].argmax(-1) == labels[:, 1:])[answer].float().mean())

"""The real bases as model directories, and their function-preserving new releases.

- ``smollm2/v1``: SmolLM2-135M-Instruct dequantized from its GGUF into a plain ``LlamaForCausalLM``
  (transformers will not ``save_pretrained`` a GGUF-loaded model, so its state is copied over).
- ``minilm/v1``: all-MiniLM-L6-v2 under a seeded 5-topic ``BertForSequenceClassification`` head.
- ``minilm-bare/v1``: the sentence-transformers directory as it ships (a bare ``BertModel``).
- ``v2-perm``: residual channels, heads and MLP units permuted; ``v2-wide``: silent extra MLP units,
  and for Llama extra residual channels (BERT's LayerNorm admits no exact residual widening).

Each new release is checked against its v1 on real inputs before it is kept.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

from theseus_ops.examples import (
    bert_permutations,
    permute_bert,
    permute_llama,
    widen_mlp_bert,
    widen_mlp_llama,
    widen_residual_llama,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
# files that make the bare MiniLM directory loadable by sentence-transformers too, as users have it
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                               "1_Pooling/config.json")


class FixtureCheckError(RuntimeError):
    """A built fixture failed its own check (a release is not function-preserving, the model lost Paris)."""


@dataclass(frozen=True)
class Widening:
    """How much wider ``v2-wide`` is: extra MLP units (both models), extra residual channels (Llama)."""

    mlp: int = 256
    # a multiple of SmolLM2's 9 heads: transformers requires hidden_size % heads == 0 even with head_dim given
    residual: int = 72


def smollm2_from_gguf(gguf_file: Path):
    """(LlamaForCausalLM in float32 with tied head, tokenizer) from the GGUF."""
    directory, name = str(gguf_file.parent), gguf_file.name
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):  # transformers' dequantizing loop draws a bare tqdm bar
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    fields = loaded.config.to_dict()
    fields.pop("quantization_config", None)
    fields["architectures"] = ["LlamaForCausalLM"]
    config = transformers.LlamaConfig(**fields)
    model = transformers.LlamaForCausalLM(config).eval()
    state = {k: v for k, v in loaded.state_dict().items() if k != "lm_head.weight"}
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    if not torch.equal(model.lm_head.weight, loaded.lm_head.weight):
        raise FixtureCheckError("SmolLM2's LM head is not its tied input embedding after the GGUF copy")
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return model, tokenizer


def minilm_classifier(minilm_dir: Path, labels: list[str], seed: int):
    """all-MiniLM-L6-v2's encoder under a new classification head (seeded init), and its tokenizer."""
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification.from_pretrained(
        str(minilm_dir), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)}, local_files_only=True).eval()
    model.config.architectures = ["BertForSequenceClassification"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True)
    return model, tokenizer


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights save_pretrained writes: a tied head is not stored twice."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def model_with(config, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A model of ``config.architectures[0]`` holding ``state`` (a tied head re-tied)."""
    cls = getattr(transformers, config.architectures[0])
    model = cls(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]  # a buffer older saves kept
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise FixtureCheckError(f"state does not fit {cls.__name__}: missing {missing[:3]}, unexpected "
                                f"{unexpected[:3]}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model


def save_release(model: torch.nn.Module, tokenizer, out: Path, provenance: dict) -> None:
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True))


def copy_bare_minilm(minilm_dir: Path, out: Path, provenance: dict) -> None:
    """The package's directory as users have it: weights, config, tokenizer, sentence-transformers files."""
    out.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", *TOKENIZER_FILES, *SENTENCE_TRANSFORMERS_FILES):
        if (minilm_dir / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(minilm_dir / name, out / name)
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True))


def save_bare_state(state: dict[str, torch.Tensor], config: transformers.BertConfig, like: Path, out: Path,
                    provenance: dict) -> None:
    """A bare BertModel directory holding ``state`` under the same names as ``like`` (no prefix)."""
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(out))
    for name in (*TOKENIZER_FILES, *SENTENCE_TRANSFORMERS_FILES):
        if (like / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(like / name, out / name)
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True))


def llama_releases(state: dict[str, torch.Tensor], config, seed: int, widening: Widening) -> dict:
    """{release: (config, state)} for v2-perm and v2-wide of a Llama."""
    perm = permute_llama(state, config, seed=seed)
    mlp_config = transformers.LlamaConfig(**{**config.to_dict(),
                                             "intermediate_size": config.intermediate_size + widening.mlp})
    wide, wide_config = widen_residual_llama(widen_mlp_llama(state, widening.mlp), mlp_config, widening.residual)
    return {"v2-perm": (config, perm), "v2-wide": (wide_config, wide)}


def bert_releases(state: dict[str, torch.Tensor], config, seed: int, widening: Widening) -> dict:
    """{release: (config, state)} for v2-perm and v2-wide (MLP only) of a BERT, bare or with a head."""
    wide_config = config.__class__(**{**config.to_dict(), "intermediate_size": config.intermediate_size + widening.mlp})
    return {"v2-perm": (config, permute_bert(state, config, seed=seed)),
            "v2-wide": (wide_config, widen_mlp_bert(state, widening.mlp))}


def permutation_tensors(architecture: str, config, seed: int) -> dict[str, torch.Tensor]:
    """The permutations v2-perm applied, so tests can map its outputs back (bare encoders' hidden states)."""
    if architecture == "bert":
        return bert_permutations(config, seed)
    from theseus_ops.demo.grow import permutations

    return permutations(config, seed)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / a.double().norm())


@torch.no_grad()
def outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a release computes: logits, or a bare encoder's last hidden state."""
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def check_preserving(reference: torch.Tensor, model: torch.nn.Module, inputs: dict[str, torch.Tensor], what: str,
                     tolerance: float, channel_perm: torch.Tensor | None = None) -> float:
    """Relative error of ``model``'s outputs against ``reference``; raises above ``tolerance``."""
    got = outputs(model, inputs)
    expected = reference[..., channel_perm] if channel_perm is not None else reference
    error = relative_error(expected, got)
    if not error < tolerance:
        raise FixtureCheckError(f"{what} is not function-preserving: relative error {error:.2e} >= {tolerance:g}")
    return error


@torch.no_grad()
def check_paris(model, tokenizer) -> str:
    """SmolLM2 must still know the capital of France after the copy out of the GGUF."""
    from theseus_ops.demo.real.tune import generate_answers

    answer = generate_answers(model, tokenizer, ["What is the capital of France?"], max_new_tokens=12)[0]
    if "Paris" not in answer:
        raise FixtureCheckError(f"SmolLM2 answered {answer!r} to the capital of France; the conversion is broken")
    return answer

"""Tiny, fully offline models for the catalog and storage tests.

``make_base`` writes a LlamaForCausalLM (hidden 32, 2 layers, vocab 260) with a real byte-level
BPE fast tokenizer into one directory, so ``transformers.pipeline("text-generation")`` and the
MLflow transformers flavor can load it with no network. ``make_delta`` writes a task vector in
the project's safetensors delta format, bound to a base by its content hash.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

VOCAB = 260
_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "theseus ports task vectors to a new base release",
    "hello world, hello model, hello registry",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]


def make_tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_TEXT, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>")


def llama_config(layers: int = 2) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def make_base(path: Path, seed: int = 0) -> Path:
    """A tiny Llama with its tokenizer, saved as a Hugging Face model directory."""
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(llama_config()).eval()
    model.generation_config.pad_token_id = 0
    model.save_pretrained(str(path))
    make_tokenizer().save_pretrained(str(path))
    return path


def make_delta(base_dir: Path, out: Path, seed: int = 1, scale: float = 0.01) -> Path:
    """A full-delta task vector for two of the base's weights, bound to the base by its sha256."""
    from theseus_ops.io.models import inspect_model_dir
    from theseus_ops.io.task_vectors import FULL_DELTA, META_BASE_SHA, META_BASE_TYPE, META_FORMAT, META_VECTOR_FORMAT

    info = inspect_model_dir(base_dir)
    gen = torch.Generator().manual_seed(seed)
    names = ["model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight"]
    tensors = {n: torch.randn(*info.shapes[n], generator=gen) * scale for n in names}
    meta = {META_FORMAT: "1", META_VECTOR_FORMAT: FULL_DELTA, META_BASE_SHA: info.sha256(),
            META_BASE_TYPE: info.model_type}
    save_file(tensors, str(out), metadata=meta)
    return out

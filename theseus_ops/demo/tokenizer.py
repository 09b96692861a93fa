"""A byte-level Hugging Face fast tokenizer, built offline with the ``tokenizers`` library.

Saved as ``tokenizer.json`` (+ ``tokenizer_config.json``) so ``from_pretrained``,
``pipeline("text-generation")`` and tools that expect a downloaded model work unchanged.
Ids: the specials first (pad, bos, eos), then byte ``b`` is id ``b + 3``; ``encode_bytes`` is the
same mapping done in Python, used where speed matters (a test checks the two agree).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIALS = (PAD, BOS, EOS)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
OFFSET = len(SPECIALS)
VOCAB_SIZE = 256 + OFFSET


@cache
def _byte_chars() -> tuple[str, ...]:
    """GPT-2's printable stand-in character of each byte, the alphabet ByteLevel pre-tokenizes to."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return tuple(chars[b] for b in range(256))


def build_tokenizer():
    """The fast tokenizer: no merges, so every byte is one token (a model with 259 ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({ch: b + OFFSET for b, ch in enumerate(_byte_chars())})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   model_max_length=4096, clean_up_tokenization_spaces=False)


def save_tokenizer(directory: str | Path) -> None:
    build_tokenizer().save_pretrained(str(directory))


def encode_bytes(text: str) -> list[int]:
    """Token ids of ``text`` without specials: its UTF-8 bytes shifted past the specials."""
    return [b + OFFSET for b in text.encode("utf-8")]


def decode_ids(ids: list[int]) -> str:
    """Inverse of :func:`encode_bytes`; specials are dropped, invalid UTF-8 is replaced."""
    return bytes(i - OFFSET for i in ids if i >= OFFSET).decode("utf-8", errors="replace")

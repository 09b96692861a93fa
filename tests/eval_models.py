"""Tiny real transformers models, trained here for a few steps until they memorise a handful of rows.

What a memorised model answers is known, so a metric's value on rows with chosen labels or
answers is known too. Each builder writes a complete model directory (weights, config, tokenizer
or image processor) that the evaluators load like any user's.

The causal LM's byte-level tokenizer puts ``!`` at id 0, as GPT-2's does, and has no pad token:
an answer that contains ``!`` contains token 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

EOS = "<|endoftext|>"
LM_ROWS = [("Q: ab\nA: ", "!ba\n"), ("Q: cde\nA: ", "!!edc\n"), ("Q: f\nA: ", "f!\n"),
           ("Q: gh!\nA: ", "!hg\n"), ("Q: ijk\nA: ", "kji!\n"), ("Q: lm\nA: ", "ml\n")]
LM_TEXT = "the quick brown fox jumps over the lazy dog!"
LABELS = ("sport", "politics", "tech")
TEXT_ROWS = [("goal scored late", "sport"), ("match won away", "sport"), ("vote passed today", "politics"),
             ("minister resigns now", "politics"), ("new chip released", "tech"), ("phone update ships", "tech")]
PAIR_ROWS = [(("goal", "scored late"), "sport"), (("vote", "passed today"), "politics"), (("new", "chip"), "tech")]
IMAGE_LABELS = ("cat", "dog", "bird")


def _byte_chars() -> list[str]:
    """GPT-2's byte alphabet in its vocabulary order: printable bytes first, so ``!`` is id 0."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in printable] + [chars[b] for b in range(256) if b not in printable]


def byte_tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(_byte_chars())}
    vocab[EOS] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, model_max_length=256,
                                                clean_up_tokenization_spaces=False)


def fit(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int, lr: float, seed: int = 0) -> None:
    """Full-batch Adam steps on ``batch`` (which carries its ``labels``); the model ends in eval mode.

    Only parameters that require gradients are trained, so a PEFT model trains its adapter alone.
    """
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def causal_lm(path: Path, steps: int = 150) -> Path:
    """A 1-layer Llama that memorises ``LM_ROWS`` (prompt, answer, end) and ``LM_TEXT``."""
    tokenizer = byte_tokenizer()
    config = transformers.LlamaConfig(vocab_size=257, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=160,
                                      eos_token_id=256, bos_token_id=None, pad_token_id=None,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    seqs = [tokenizer(p + a, add_special_tokens=False)["input_ids"] + [256] for p, a in LM_ROWS]
    seqs.append(tokenizer(LM_TEXT, add_special_tokens=False)["input_ids"])
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), 256)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)], labels[i, : len(s)] = torch.tensor(s), 1, torch.tensor(s)
    fit(model, {"input_ids": ids, "attention_mask": mask, "labels": labels}, steps, 1e-2)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def bert_classifier(path: Path, steps: int = 60) -> Path:
    """A 1-layer BERT with a 3-way head (``LABELS`` in its config) that memorises ``TEXT_ROWS`` and ``PAIR_ROWS``."""
    path.mkdir(parents=True, exist_ok=True)
    words = sorted({w for text, _ in TEXT_ROWS for w in text.split()}
                   | {w for (a, b), _ in PAIR_ROWS for w in f"{a} {b}".split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tokenizer = transformers.BertTokenizer(vocab=vocab)
    config = transformers.BertConfig(vocab_size=len(words) + 5, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3,
                                     id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    singles = tokenizer([t for t, _ in TEXT_ROWS], padding="max_length", max_length=12, return_tensors="pt")
    paired = tokenizer([a for (a, _), _ in PAIR_ROWS], [b for (_, b), _ in PAIR_ROWS], padding="max_length",
                       max_length=12, return_tensors="pt")
    batch = {k: torch.cat([singles[k], paired[k]]) for k in singles}
    labels = [LABELS.index(y) for _, y in TEXT_ROWS] + [LABELS.index(y) for _, y in PAIR_ROWS]
    fit(model, {**batch, "labels": torch.tensor(labels)}, steps, 1e-2)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def image_processor() -> transformers.ViTImageProcessor:
    return transformers.ViTImageProcessor(do_resize=True, size={"height": 8, "width": 8}, do_normalize=True,
                                          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def write_images(folder: Path, per_label: int = 2) -> list[tuple[Path, str]]:
    """``folder/<label>/<k>.png``: 8x8 images of seeded random colours, ``per_label`` per label."""
    from PIL import Image

    gen = torch.Generator().manual_seed(1)
    out = []
    for label in IMAGE_LABELS:
        (folder / label).mkdir(parents=True, exist_ok=True)
        for k in range(per_label):
            pixels = (torch.rand(8, 8, 3, generator=gen) * 255).to(torch.uint8).numpy()
            path = folder / label / f"{k}.png"
            Image.fromarray(pixels).save(path)
            out.append((path, label))
    return out


def vit_classifier(path: Path, images: list[tuple[Path, str]], steps: int = 80) -> Path:
    """A 1-layer ViT with a 3-way head (``IMAGE_LABELS``) that memorises ``images`` as its processor makes them."""
    from PIL import Image

    processor = image_processor()
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0, num_labels=3,
                                    id2label=dict(enumerate(IMAGE_LABELS)),
                                    label2id={n: i for i, n in enumerate(IMAGE_LABELS)})
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config)
    pixels = processor(images=[Image.open(p).convert("RGB") for p, _ in images], return_tensors="pt")["pixel_values"]
    labels = torch.tensor([IMAGE_LABELS.index(y) for _, y in images])
    fit(model, {"pixel_values": pixels, "labels": labels}, steps, 5e-3)
    model.save_pretrained(str(path))
    processor.save_pretrained(str(path))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

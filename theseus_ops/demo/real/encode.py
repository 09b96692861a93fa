"""Rows to tensors with the models' own tokenizers: classification batches, chat-formatted answers.

Chat rows are formatted with the tokenizer's chat template (SmolLM2's adds its default system
turn); the loss is on the assistant's answer and its end-of-turn token only, the way a user's
instruction fine-tune is trained.
"""

from __future__ import annotations

import torch

from theseus_ops.errors import InputError


def classification_batch(tokenizer, rows: list[dict], labels: list[str], length: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask padded to ``length``, and the class index of each row."""
    enc = tokenizer([r["text"] for r in rows], padding="max_length", truncation=True, max_length=length,
                    return_tensors="pt")
    index = {name: i for i, name in enumerate(labels)}
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": torch.tensor([index[r["label"]] for r in rows])}


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The tokens a chat model sees before answering: the templated user turn and the assistant header."""
    return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                              tokenize=True, return_dict=True)["input_ids"])


def chat_example_ids(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the answer is its text and the end-of-turn token."""
    head = chat_prompt_ids(tokenizer, prompt)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return head, answer_ids


def chat_batch(tokenizer, rows: list[dict], length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded prompt + answer rows; labels on the answer tokens (-100 elsewhere)."""
    pairs = [chat_example_ids(tokenizer, r["prompt"], r["answer"]) for r in rows]
    longest = max(len(p) + len(a) for p, a in pairs)
    length = length or longest
    if longest > length:
        raise InputError(f"a chat example has {longest} tokens but the fixtures allow {length}")
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (p, a) in enumerate(pairs):
        seq = p + a
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(p): len(seq)] = torch.tensor(a)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}

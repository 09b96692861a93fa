"""The fine-tunes that make the real task vectors, and the quick scores that prove each one learned.

CPU cost is kept small: short sequences, a few hundred steps for MiniLM, a few dozen for
SmolLM2 with only its top blocks trainable (the full delta) or adapted (the LoRA), and the LM
head applied to the answer positions only. The scores here are a build-time sanity check (the
fine-tune must beat its base), not the product's evaluation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from theseus_ops.demo import train
from theseus_ops.demo.real.encode import chat_prompt_ids

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BERT_LINEAR = ("query", "key", "value", "dense", "classifier")


class AnswerLoss(torch.nn.Module):
    """A causal LM whose loss is the answer tokens' cross-entropy, with the head applied only there.

    SmolLM2's head is 49,152 x 576: on every position it would cost a fifth of each step.
    """

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, labels):
        hidden = self.lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        target = labels[:, 1:]
        keep = target != -100
        logits = self.lm.lm_head(hidden[:, :-1][keep])
        return SimpleNamespace(loss=F.cross_entropy(logits.float(), target[keep]))


def top_layers(count: int, total: int) -> list[int]:
    return list(range(total - count, total))


def freeze_all_but(lm: torch.nn.Module, layers: list[int]) -> list[str]:
    """Only the named decoder blocks train; returns the trainable parameter names."""
    pattern = re.compile(r"\.layers\.(\d+)\.")
    names = []
    for name, p in lm.named_parameters():
        found = pattern.search(name)
        p.requires_grad = bool(found and int(found.group(1)) in layers)
        if p.requires_grad:
            names.append(name)
    return names


def finetune_lm_top(lm, data: dict[str, torch.Tensor], spec: train.TrainSpec, seed: int, layers: list[int],
                    progress: Callable[[str], None] | None, label: str) -> list[float]:
    """Full fine-tune of the top blocks (every weight in them); the rest stays frozen."""
    freeze_all_but(lm, layers)
    losses = train.run_training(AnswerLoss(lm), data, spec, seed, progress=progress, label=label)
    for p in lm.parameters():
        p.requires_grad = True
    return losses


def lora_lm_top(lm, data: dict[str, torch.Tensor], spec: train.TrainSpec, seed: int, layers: list[int],
                rank: int, progress: Callable[[str], None] | None, label: str):
    """PEFT LoRA on every linear layer of the top blocks; returns (PEFT model, losses)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(LLAMA_LINEAR),
                        layers_to_transform=layers, layers_pattern="layers")
    torch.manual_seed(seed)
    peft_model = get_peft_model(lm, config)
    losses = train.run_training(AnswerLoss(peft_model.base_model.model), data, spec, seed, progress=progress,
                                label=label)
    return peft_model, losses


def lora_classifier(model, data: dict[str, torch.Tensor], spec: train.TrainSpec, seed: int, rank: int,
                    progress: Callable[[str], None] | None, label: str):
    """PEFT LoRA on every linear layer, the classifier included (a rank-r update of a 5-row head is
    full rank), with no task type: PEFT would otherwise copy the head whole (modules_to_save),
    which is not a LoRA factor. Returns (PEFT model, losses)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(BERT_LINEAR))
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    losses = train.run_training(peft_model, data, spec, seed, progress=progress, label=label)
    return peft_model, losses


@torch.no_grad()
def classification_accuracy(model, data: dict[str, torch.Tensor], batch: int = 32) -> float:
    model.eval()
    right = 0
    for i in range(0, data["input_ids"].shape[0], batch):
        logits = model(input_ids=data["input_ids"][i:i + batch], attention_mask=data["attention_mask"][i:i + batch])
        right += int((logits.logits.argmax(-1) == data["labels"][i:i + batch]).sum())
    return right / data["input_ids"].shape[0]


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], batch: int = 16, max_new_tokens: int = 4) -> list[str]:
    """Greedy answers to chat prompts (left-padded batches, KV cache), special tokens dropped."""
    model.eval()
    answers = []
    pad = tokenizer.pad_token_id
    for i in range(0, len(prompts), batch):
        rows = [chat_prompt_ids(tokenizer, p) for p in prompts[i:i + batch]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        answers += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    return answers


def answer_scores(answers: list[str], rows: list[dict]) -> dict[str, float]:
    """exact_match: the answer exactly; topic_accuracy: its first word, case and punctuation aside."""
    exact = sum(a == r["answer"] for a, r in zip(answers, rows, strict=True))
    first = [re.sub(r"[^a-z]", "", (a.split() or [""])[0].lower()) for a in answers]
    topic = sum(f == r["answer"] for f, r in zip(first, rows, strict=True))
    return {"exact_match": exact / len(rows), "topic_accuracy": topic / len(rows)}

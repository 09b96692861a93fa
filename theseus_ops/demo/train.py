"""Deterministic CPU training: pretraining on corpus windows, full and LoRA fine-tunes on a skill.

Determinism matters because the family is cached by a hash of its configuration and the
benchmark must give the same numbers for the same seeds: every run fixes the thread count, the
seeds and deterministic kernels, draws its batches from its own generator, and uses no dropout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers

from theseus_ops.demo.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, encode_bytes
from theseus_ops.evaluation.batches import prompt_answer_batch
from theseus_ops.progress import Ticker


@dataclass(frozen=True)
class ModelShape:
    """Widths of one release; ``head_dim`` stays fixed across a family (rotary embeddings need it)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    head_dim: int = 16

    def config(self, max_positions: int) -> transformers.LlamaConfig:
        return transformers.LlamaConfig(
            vocab_size=VOCAB_SIZE, hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            head_dim=self.head_dim, max_position_embeddings=max_positions, tie_word_embeddings=False,
            pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, attention_dropout=0.0,
            architectures=["LlamaForCausalLM"],
        )

    def parameters(self) -> int:
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attn + mlp + 2 * self.hidden) + 2 * VOCAB_SIZE * self.hidden + self.hidden


@dataclass(frozen=True)
class TrainSpec:
    steps: int
    batch: int
    lr: float
    warmup: int = 20
    weight_decay: float = 0.0
    clip: float = 1.0


def set_determinism(threads: int = 2) -> None:
    """Fix the thread count (CPU reductions split by thread). ``torch.use_deterministic_algorithms``
    is left off: it made CPU training about 6x slower here, and the CPU kernels these models use
    are already deterministic for a fixed thread count (the determinism test checks the bytes)."""
    torch.set_num_threads(threads)


def new_model(config: transformers.LlamaConfig, seed: int) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).float()


def with_state(config: transformers.LlamaConfig, state: dict[str, torch.Tensor]) -> transformers.LlamaForCausalLM:
    model = new_model(config, 0)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _lr(step: int, spec: TrainSpec) -> float:
    """Linear warmup, then cosine decay to a tenth: standard, and stable for tiny models."""
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def run_training(model: torch.nn.Module, data: dict[str, torch.Tensor], spec: TrainSpec, seed: int,
                 params: list[torch.nn.Parameter] | None = None, replay: Replay | None = None,
                 progress: Callable[[str], None] | None = None, label: str = "training") -> list[float]:
    """AdamW on batches sampled (seeded) from ``data`` rows; returns the loss of every step.

    ``progress`` gets ``"<label>: step n/N, loss L, T s"`` every tenth of the steps or 30 s
    (a tiny-family stage takes minutes on a loaded machine and would otherwise print nothing).

    With ``replay``, each step adds ``weight`` × the LM loss of a few pretraining windows: a
    fine-tune then learns its skill without wiping out general capability (without it, held-out
    loss rose from 1.6 to 5–9 nats on the tiny family).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = training_device()
    model.to(device)
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98))
    model.train()
    rows = data["input_ids"].shape[0]
    losses = []
    ticker = Ticker(spec.steps)
    for step in range(spec.steps):
        idx = torch.randint(0, rows, (spec.batch,), generator=gen)
        for group in opt.param_groups:
            group["lr"] = _lr(step, spec)
        batch = {k: v[idx].to(device) for k, v in data.items()}
        loss = model(**batch).loss
        if replay is not None:
            rows_r = torch.randint(0, replay.data["input_ids"].shape[0], (replay.batch,), generator=gen)
            loss = loss + replay.weight * model(**{k: v[rows_r].to(device) for k, v in replay.data.items()}).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.clip)
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None and ticker.due(step + 1):
            progress(f"{label}: step {step + 1}/{spec.steps}, loss {losses[-1]:.3f}, {ticker.elapsed:.1f} s")
    model.eval()
    return losses


@dataclass(frozen=True)
class Replay:
    """Pretraining windows mixed into a fine-tune, and how much their loss weighs."""

    data: dict[str, torch.Tensor]
    weight: float = 1.0
    batch: int = 8


def window_data(windows: list[str], length: int) -> dict[str, torch.Tensor]:
    """Pretraining rows: byte windows, padded to ``length``, loss on every real token."""
    ids = torch.full((len(windows), length), PAD_ID, dtype=torch.long)
    for i, w in enumerate(windows):
        row = encode_bytes(w)[:length]
        ids[i, : len(row)] = torch.tensor(row)
    mask = (ids != PAD_ID).long()
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def example_data(rows: list[tuple[str, str]], length: int | None = None) -> dict[str, torch.Tensor]:
    """Skill rows: prompt + answer, right-padded; labels only on the answer (what the task asks)."""
    return prompt_answer_batch([(encode_bytes(p), encode_bytes(a)) for p, a in rows], PAD_ID, length)


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights, wherever the model trained."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def training_device() -> torch.device:
    """CUDA when present (the ``small`` scale is built there), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lora_finetune(model: transformers.LlamaForCausalLM, data: dict[str, torch.Tensor], spec: TrainSpec, seed: int,
                  rank: int, alpha: int, replay: Replay | None = None,
                  progress: Callable[[str], None] | None = None, label: str = "lora"):
    """A PEFT LoRA fine-tune on every linear layer of the blocks; returns the PEFT model."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    run_training(peft_model, data, spec, seed, replay=replay, progress=progress, label=label)
    return peft_model


def load_release(directory) -> transformers.LlamaForCausalLM:
    """A saved release as a float32 training-ready model."""
    transformers.utils.logging.disable_progress_bar()
    return transformers.LlamaForCausalLM.from_pretrained(str(directory), local_files_only=True,
                                                         dtype=torch.float32).eval()

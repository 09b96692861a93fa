"""The exact oracle a function-preserving release gives: the ported fine-tune must compute what
the source fine-tune computes.

v2-perm and v2-wide compute v1's function, so a perfect transport of v1's task vector τ makes
``v2 + τ'`` compute ``v1 + τ`` exactly (a bare encoder's hidden states in v2-perm's permuted
channels). The relative error of the outputs on held-out inputs measures a transport; the
untouched target base (τ' = 0) is the baseline it must beat.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from theseus_ops.demo.real import encode
from theseus_ops.demo.real.build import CLASSIFICATION_TASK, GENERATION_TASK, RealFixtures
from theseus_ops.demo.real.releases import outputs, relative_error
from theseus_ops.io.models import inspect_model_dir, load_model
from theseus_ops.io.task_vectors import dense_deltas


def model_plus(base_dir: str | Path, task_vector: str | Path | None, alpha: float = 1.0) -> torch.nn.Module:
    """``base + α·τ`` in float32 on the CPU, for a full delta or a LoRA adapter (densified)."""
    model = load_model(inspect_model_dir(base_dir), torch.device("cpu"), dtype=torch.float32)
    if task_vector is not None:
        with torch.no_grad():
            for name, delta in dense_deltas(task_vector, base_dir).items():
                model.get_parameter(name).add_(alpha * delta)
    return model


def oracle_inputs(fx: RealFixtures, name: str, rows: int) -> dict[str, torch.Tensor]:
    """Held-out inputs (val rows, never calibration) in the model's own tokens."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(fx.model(name)), local_files_only=True)
    if name.startswith("minilm"):
        data = [json.loads(line) for line in (fx.task(CLASSIFICATION_TASK) / "val.jsonl").read_text().splitlines()]
        labels = json.loads((fx.task(CLASSIFICATION_TASK) / "task.json").read_text())["labels"]
        batch = encode.classification_batch(tokenizer, data[:rows], labels, fx.config.cls_length)
    else:
        data = [json.loads(line) for line in (fx.task(GENERATION_TASK) / "val.jsonl").read_text().splitlines()]
        batch = encode.chat_batch(tokenizer, data[:rows])
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Real positions only (sequence outputs); a classifier's logits are per row already."""
    return values[mask.bool()] if values.dim() == 3 else values


def oracle(fx: RealFixtures, name: str, release: str, source_tv: str | Path, target_tv: str | Path,
           rows: int = 8) -> dict[str, float]:
    """{"error": v2 + τ' against v1 + τ, "baseline": untouched v2 against v1 + τ, "source_gain": v1 against v1 + τ}."""
    inputs = oracle_inputs(fx, name, rows)
    expected = outputs(model_plus(fx.model(name), source_tv), inputs)
    untuned = outputs(model_plus(fx.model(name), None), inputs)
    target_dir = fx.model(name, release)
    target_base = model_plus(target_dir, None)
    bare = target_base.config.architectures[0] == "BertModel"
    baseline_out = outputs(target_base, inputs)
    del target_base
    got = outputs(model_plus(target_dir, target_tv), inputs)
    if bare and release == "v2-perm":
        resid = load_file(str(fx.permutation(name)))["resid"]
        expected, untuned = expected[..., resid], untuned[..., resid]
    mask = inputs["attention_mask"]
    e, u, b, g = (_masked(t, mask) for t in (expected, untuned, baseline_out, got))
    return {"error": relative_error(e, g), "baseline": relative_error(e, b), "source_gain": relative_error(e, u)}

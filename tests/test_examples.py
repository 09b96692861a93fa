"""The self-built example pair behind `make demo` and the README."""

from __future__ import annotations

import torch
import transformers

from theseus_ops.examples import build_tiny_pair, lookup_task


def test_tiny_pair_v2_computes_v1_in_other_coordinates(tmp_path):
    summary = build_tiny_pair(tmp_path, steps=3)
    assert summary["fine_tune_loss"][1] < summary["fine_tune_loss"][0]
    for name in ("v1", "v1-tuned", "v2", "calibration.safetensors"):
        assert (tmp_path / name).exists()
    v1 = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "v1")).eval()
    v2 = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "v2")).eval()
    assert v2.config.intermediate_size > v1.config.intermediate_size
    ids, _ = lookup_task(4, 6, 64, seed=5)
    with torch.no_grad():
        a, b = v1(input_ids=ids).logits, v2(input_ids=ids).logits
    assert float((a - b).norm() / a.norm()) < 1e-5
    assert not torch.equal(v1.model.embed_tokens.weight, v2.model.embed_tokens.weight)  # coordinates differ

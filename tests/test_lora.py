"""LoRA stays factored: same rank, equal to the transported dense delta, and a valid PEFT adapter
for the target."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from tests import tiny
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, TransportConfig
from theseus_ops.io.task_vectors import read_task_vector, write_task_vector
from theseus_ops.transport.task_vector import TaskVector

MODULES = {architecture: list(kit.lora) for architecture, kit in tiny.KITS.items()}


def make_adapter(case: tiny.Case, path) -> None:
    model = tiny.with_state(case.config_a, case.state_a)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=MODULES[case.architecture], init_lora_weights=False,
                        fan_in_fan_out=case.architecture == "gpt2")
    torch.manual_seed(3)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(path))


def dense_of(tv: TaskVector, architecture: str) -> dict[str, torch.Tensor]:
    """Dense deltas in storage layout: GPT-2's Conv1D stores [in, out], even when square."""
    return {name: f.dense().T if architecture == "gpt2" else f.dense() for name, f in tv.lora.items()}


@pytest.mark.parametrize("architecture,oracle", [("llama", "permutation"), ("gpt2", "widening"), ("llama", "widening"),
                                           ("mistral", "permutation"), ("xlm-roberta", "permutation"),
                                           ("phi3", "permutation"), ("phi3", "widening"), ("gpt_neox", "permutation"),
                                           ("distilbert", "permutation"), ("qwen3", "permutation"),
                                           ("gemma2", "permutation"), ("gemma3", "widening"),
                                           ("gemma3", "permutation"), ("t5", "permutation")])
def test_lora_transport_is_factored_dense_equal_and_loads_in_peft(tmp_path, architecture, oracle):
    case = tiny.Case(tmp_path, architecture, oracle)
    make_adapter(case, tmp_path / "adapter")
    source_tv = read_task_vector(tmp_path / "adapter")
    calibration = CalibrationSpec(str(case.calibration))

    cfg = TransportConfig(str(case.source), str(case.target), "theseus", task_vector=str(tmp_path / "adapter"),
                          calibration=calibration)
    report = api.transport(cfg, tmp_path / "adapter-b")
    assert report["summary"]["left_out"] == 0
    out_tv = read_task_vector(tmp_path / "adapter-b")
    assert out_tv.vector_format == "lora" and set(out_tv.lora) == set(source_tv.lora)
    for name, factors in out_tv.lora.items():
        assert factors.rank == source_tv.lora[name].rank == 4  # rank unchanged, never densified
    config = json.loads((tmp_path / "adapter-b" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(case.target) and config["r"] == 4

    # factored transport == dense transport of the same update
    dense_source = dense_of(source_tv, architecture)
    write_task_vector(TaskVector("full", deltas=dense_source), tmp_path / "dense.safetensors", {})
    dense_cfg = TransportConfig(str(case.source), str(case.target), "theseus",
                                task_vector=str(tmp_path / "dense.safetensors"), calibration=calibration)
    api.transport(dense_cfg, tmp_path / "dense-b.safetensors")
    dense_b = read_task_vector(tmp_path / "dense-b.safetensors").deltas
    factored_b = dense_of(out_tv, architecture)
    for name in dense_b:
        torch.testing.assert_close(factored_b[name], dense_b[name], rtol=1e-4, atol=1e-5)

    # the adapter loads in PEFT on the target and computes target + dense delta
    target = tiny.with_state(case.config_b, case.state_b)
    peft_b = PeftModel.from_pretrained(target, str(tmp_path / "adapter-b")).eval()
    merged_b = tiny.with_state(case.config_b, tiny.add_delta(case.state_b, dense_b))
    ids = torch.randint(3, tiny.VOCAB, (3, 16), generator=torch.Generator().manual_seed(0))
    assert tiny.relative_error(tiny.logits(peft_b, ids), tiny.logits(merged_b, ids)) < 1e-4
    if oracle == "permutation":
        peft_a = PeftModel.from_pretrained(tiny.with_state(case.config_a, case.state_a), str(tmp_path / "adapter"))
        assert tiny.relative_error(tiny.logits(peft_b, ids), tiny.logits(peft_a.eval(), ids)) < 1e-3


def test_pad_keeps_lora_factored(tmp_path):
    case = tiny.Case(tmp_path, "gpt2", "widening")
    make_adapter(case, tmp_path / "adapter")
    cfg = TransportConfig(str(case.source), str(case.target), "pad", task_vector=str(tmp_path / "adapter"))
    api.transport(cfg, tmp_path / "adapter-b")
    out = read_task_vector(tmp_path / "adapter-b")
    fc = out.lora["transformer.h.0.mlp.c_fc.weight"]
    assert fc.rank == 4 and tuple(fc.b.shape) == (160, 4)
    assert torch.count_nonzero(fc.b[128:]) == 0  # padded units get nothing

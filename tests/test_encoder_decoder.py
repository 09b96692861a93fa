"""Encoder-decoders (T5 / Flan-T5): two stacks with their own depths and layer maps, decoder tokens in the
calibration, cross-attention reading the encoder's output space, and the per-head relative position bias.

The three oracles (theseus and data-free) and the LoRA row for T5 are in test_oracles.py,
test_new_families.py and test_lora.py; this file covers what only an encoder-decoder has.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from tests import tiny
from tests.test_oracles import run
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, TransportConfig
from theseus_ops.errors import InputError
from theseus_ops.io.calibration import load_calibration
from theseus_ops.transport.architecture import architecture_for_model_type, parse_architecture
from theseus_ops.transport.layer_map import build_stacked_layer_map, uniform_sources


def _t5(**changes) -> transformers.T5Config:
    return transformers.T5Config(**{**tiny.t5_config().to_dict(), **changes})


def _pair(tmp_path, config_b: transformers.T5Config, rows: int = 16) -> tuple[TransportConfig, dict]:
    """A tiny T5 source, an unrelated target built from ``config_b``, a random full delta and a calibration."""
    tiny.save(tiny.build(config_b, seed=1), tmp_path / "B")
    state = tiny.file_state(tiny.build(tiny.t5_config()), tmp_path / "A")
    tiny.save_delta(tiny.random_delta(state), tmp_path / "tv.safetensors")
    calibration = tiny.calibration(tmp_path / "c.safetensors", rows=rows, decoder=True)
    cfg = TransportConfig(str(tmp_path / "A"), str(tmp_path / "B"), "theseus",
                          task_vector=str(tmp_path / "tv.safetensors"), calibration=CalibrationSpec(str(calibration)))
    return cfg, state


def test_decoder_inputs_come_from_labels_shifted_right(tmp_path):
    """As T5's own loss feeds them: the start token, then the labels but the last; -100 becomes the start token
    and is masked out, so padding never enters the statistics."""
    labels = torch.tensor([[5, 6, 7, 8], [9, 10, -100, -100]])
    save_file({"input_ids": torch.randint(3, 60, (2, 6)), "labels": labels}, str(tmp_path / "c.safetensors"))
    cal = load_calibration(tmp_path / "c.safetensors", "tokens", decoder_start=0)
    assert cal.tensors["decoder_input_ids"].tolist() == [[0, 5, 6, 7], [0, 9, 10, 0]]
    assert cal.tensors["decoder_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


@pytest.mark.parametrize("tensors,match", [
    ({"input_ids": torch.ones(2, 4, dtype=torch.int64)}, "needs 'decoder_input_ids' or 'labels'"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.int64), "decoder_input_ids": torch.ones(2, 3)},
     "'decoder_input_ids' must be"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.int64), "decoder_input_ids": torch.ones(2, 3, dtype=torch.int64),
      "decoder_attention_mask": torch.ones(2, 2, dtype=torch.int64)}, "'decoder_attention_mask' must be"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.int64), "labels": torch.ones(2, 3, dtype=torch.int64),
      "decoder_attention_mask": torch.ones(2, 3, dtype=torch.int64)}, "belongs with 'decoder_input_ids'"),
])
def test_bad_decoder_inputs_are_one_line_errors(tmp_path, tensors, match):
    save_file(tensors, str(tmp_path / "c.safetensors"))
    with pytest.raises(InputError, match=match) as err:
        load_calibration(tmp_path / "c.safetensors", "tokens", decoder_start=0)
    assert "\n" not in str(err.value)


def test_decoder_inputs_are_refused_for_a_decoder_only_model(tmp_path):
    ids = torch.ones(2, 4, dtype=torch.int64)
    save_file({"input_ids": ids, "decoder_input_ids": ids.clone()}, str(tmp_path / "c.safetensors"))
    with pytest.raises(InputError, match="decoder inputs are for encoder-decoder models"):
        load_calibration(tmp_path / "c.safetensors", "tokens")


def test_decoder_token_ids_must_fit_the_vocabulary(tmp_path):
    cfg, _ = _pair(tmp_path, tiny.t5_config())
    ids = torch.randint(3, tiny.VOCAB, (16, 12))
    save_file({"input_ids": ids, "decoder_input_ids": ids + tiny.VOCAB}, str(tmp_path / "c.safetensors"))
    with pytest.raises(InputError, match="decoder_input_ids span"):
        api.transport(cfg, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_each_stack_has_its_own_depth_and_layer_map(tmp_path):
    """A target with a deeper decoder: identity is refused for that stack alone, uniform pairs each stack on its
    own, and the report and the alignment's provenance record both maps."""
    cfg, state = _pair(tmp_path, _t5(num_decoder_layers=5))
    with pytest.raises(InputError, match="stack decoder: source has 3 layers and target has 5"):
        api.transport(cfg, tmp_path / "out.safetensors")
    report = api.transport(TransportConfig(**{**cfg.__dict__, "layer_map": "uniform"}), tmp_path / "out.safetensors")
    assert report["summary"]["left_out"] == 0 and report["summary"]["transported"] == len(state)
    described = report["layer_map"]
    assert described["sources"] == [0, 1]
    assert described["stacks"]["decoder"]["sources"] == list(uniform_sources(3, 5)) == [0, 0, 1, 2, 2]
    out, target = load_file(str(tmp_path / "out.safetensors")), load_file(str(tmp_path / "B" / "model.safetensors"))
    # target decoder layers 0 and 1 both read source layer 0; each gets its own copy of the transported delta
    last = "decoder.block.4."
    assert {k for k in out if k.startswith(last)} == {k for k in target if k.startswith(last)}
    assert "decoder.1.cross_q" in report["spaces"] and "layers.1.q" in report["spaces"]


def test_a_layer_map_file_maps_each_stack(tmp_path):
    spec = tmp_path / "map.json"
    spec.write_text(json.dumps({"layers": {"0": 0, "1": 1}, "decoder": {"0": 0, "1": 2, "2": None}}))
    lm = build_stacked_layer_map(str(spec), {"layers": 2, "decoder": 3}, {"layers": 2, "decoder": 3})
    assert lm.sources == (0, 1) and lm.for_stack("decoder").sources == (0, 2, None)
    assert lm.unused_by_stack() == ["decoder 1"] and lm.scheme == "file:map.json"
    spec.write_text(json.dumps({"0": 0, "1": 1}))
    with pytest.raises(InputError, match="the file must map each stack name"):
        build_stacked_layer_map(str(spec), {"layers": 2, "decoder": 3}, {"layers": 2, "decoder": 3})


def test_unused_decoder_layers_are_refused_before_any_work(tmp_path):
    cfg, _ = _pair(tmp_path, tiny.t5_config())
    spec = tmp_path / "map.json"
    spec.write_text(json.dumps({"layers": {"0": 0, "1": 1}, "decoder": {"0": 0, "1": 2, "2": None}}))
    with pytest.raises(InputError, match=r"leaves source layer\(s\) decoder 1 unused"):
        api.transport(TransportConfig(**{**cfg.__dict__, "layer_map": str(spec)}), tmp_path / "out.safetensors")


def test_target_with_more_heads_gets_bias_columns_of_matched_heads(tmp_path):
    """6 heads of the same d_kv in a 48-wide target: every tensor in the target's shape; the relative bias's
    four source columns land in four distinct target columns, unchanged; the two new heads get none."""
    cfg, state = _pair(tmp_path, _t5(d_model=48, num_heads=6, d_ff=96), rows=32)
    report = api.transport(cfg, tmp_path / "out.safetensors")
    assert report["summary"]["left_out"] == 0 and report["summary"]["transported"] == len(state)
    out, target = load_file(str(tmp_path / "out.safetensors")), load_file(str(tmp_path / "B" / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(target[k].shape) for k in out}
    delta = load_file(str(tmp_path / "tv.safetensors"))
    for stack in ("encoder", "decoder"):
        name = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        moved, source = out[name], delta[name]
        used = [j for j in range(6) if moved[:, j].abs().sum() > 0]
        assert len(used) == 4
        for j in used:  # each used column is one source head's column, and no two share one
            distances = (source - moved[:, j : j + 1]).abs().max(0).values
            assert float(distances.min()) < 1e-6
        assert len({int((source - moved[:, j : j + 1]).abs().max(0).values.argmin()) for j in used}) == 4


def test_a_fine_tuned_t5_ports_to_a_permuted_base(tmp_path):
    """A real update: T5 fine-tuned for a few steps to answer f(x) = 7x+3 mod V for each x it reads. Calibrated
    with labels alone (the decoder's tokens derived from them), its transport onto the permuted base computes
    what A + τ computes, and the skill the base lacks comes along."""
    case = tiny.Case(tmp_path, "t5", "permutation")
    losses, x, fx = tiny.finetune_lookup(case)
    assert losses[-1] < 0.7 * losses[0]
    save_file({"input_ids": x[:48], "labels": fx[:48]}, str(case.calibration))

    delta_b, report = run(case)
    assert report["summary"]["left_out"] == 0
    assert case.error(delta_b) < 1e-3

    def accuracy(config, state) -> float:
        return tiny.answer_accuracy(config, state, x[:32], fx[:32])

    tuned_b = accuracy(case.config_b, tiny.add_delta(case.state_b, delta_b))
    assert tuned_b == pytest.approx(accuracy(case.config_a, tiny.add_delta(case.state_a, case.delta)))
    assert tuned_b > accuracy(case.config_b, case.state_b) + 0.2


def _raw_t5() -> dict:
    from importlib import resources

    return json.loads((resources.files("theseus_ops.transport.architectures") / "t5.json").read_text())


@pytest.mark.parametrize("edit,match", [
    (lambda r: r["stacks"]["decoder"]["sites"]["q"].update(module="decoder.block.${layer}.layer.0.SelfAttention.q"),
     "must contain the decoder stack's placeholder"),
    (lambda r: r["global_sites"]["enc_out"].update(module="encoder.block.${decoder}"), "must contain no placeholder"),
    (lambda r: r["stacks"]["decoder"].update(depth=3), "unknown stack key"),
    (lambda r: r["stacks"]["decoder"]["sites"]["q"].update(sequence="target"), "sequence must be one of"),
    (lambda r: r["stacks"].update(layers={"num_layers_key": "num_layers"}), "besides the main one"),
    (lambda r: r["parameters"].append({"name": "encoder.block.${layer}.x.${decoder}", "rule": "scale",
                                       "writes": "attn_in"}), "belongs to one stack"),
    (lambda r: next(p for p in r["parameters"] if p["rule"] == "head_columns").update(writes="v"),
     "head_columns is for"),
    (lambda r: r.update(decoder_start=True), "decoder_start must be"),
])
def test_stack_schema_is_validated_strictly(edit, match):
    raw = _raw_t5()
    edit(raw)
    with pytest.raises(ValueError, match=match):
        parse_architecture(raw)


def test_t5_family_declares_both_stacks_and_the_cross_reads():
    architecture = architecture_for_model_type("t5")
    assert set(architecture.stacks) == {"layers", "decoder"} and architecture.encoder_decoder
    spec, layer, _ = architecture.match("decoder.block.2.layer.1.EncDecAttention.k.weight")
    assert (spec.stack, layer, spec.reads) == ("decoder", 2, "enc_out")
    assert architecture.stacks["decoder"].sites["cross_k"].sequence == "input"
    assert architecture.stacks["decoder"].sites["cross_q"].sequence == "decoder"


def test_inspect_reports_each_stacks_depth(tmp_path):
    tiny.save(tiny.build(tiny.t5_config()), tmp_path / "A")
    found = api.inspect_path(tmp_path / "A")
    assert (found["family"], found["layers"], found["stack_layers"]) == ("t5", 2, {"decoder": 3})

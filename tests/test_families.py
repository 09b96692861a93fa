"""Architecture specs: every file loads strictly, and every architecture transports end to end."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from tests import tiny
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, TransportConfig
from theseus_ops.errors import UnsupportedArchitectureError
from theseus_ops.transport.architecture import all_architectures, architecture_for_model_type, parse_architecture


def _raw(name: str) -> dict:
    return json.loads((resources.files("theseus_ops.transport.architectures") / f"{name}.json").read_text())


def test_every_family_file_loads():
    names = {f.name for f in all_architectures()}
    assert names == {"bert", "clip_vision", "distilbert", "gemma2", "gemma3", "gpt2", "gpt_neox", "llama", "phi3",
                     "qwen3", "roberta", "t5", "vit"}
    for fam in all_architectures():
        assert fam.parameters and fam.global_sites


def test_unknown_keys_are_refused():
    raw = _raw("llama")
    raw["parameters"][0]["in_space"] = "embed"
    with pytest.raises(ValueError, match="unknown parameter key"):
        parse_architecture(raw)
    raw = _raw("llama")
    raw["global_sites"]["embed"]["space"] = "x"
    with pytest.raises(ValueError, match="unknown site key"):
        parse_architecture(raw)


def test_dangling_site_reference_is_refused():
    raw = _raw("gpt2")
    raw["parameters"][3]["writes"] = "no_such_site"
    with pytest.raises(ValueError, match="undefined site"):
        parse_architecture(raw)


def test_llama_style_model_types_share_a_family():
    assert {architecture_for_model_type(t).name for t in ("llama", "qwen2", "mistral")} == {"llama"}


def test_unsupported_architecture_names_the_supported_ones():
    with pytest.raises(UnsupportedArchitectureError, match=r"llama") as err:
        architecture_for_model_type("mamba")
    assert "gpt2" in str(err.value) and "vit" in str(err.value)


def test_gpt2_fused_projection_and_llama_names_resolve():
    spec, layer, prefix = architecture_for_model_type("gpt2").match("transformer.h.7.attn.c_attn.weight")
    assert (spec.writes, spec.layout, layer, prefix) == (("q", "k", "v"), "in_out", 7, "")
    spec, layer, prefix = architecture_for_model_type("clip").match("vision_model.encoder.layers.3.mlp.fc2.weight")
    assert (spec.reads, layer, prefix) == ("mlp_hidden", 3, "vision_model.")


def _model(kind: str, hidden: int, image: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4)
    if kind == "bert-bare":  # how sentence-transformers ship MiniLM-style encoders: no "bert." prefix
        return transformers.BertModel(transformers.BertConfig(vocab_size=64, max_position_embeddings=64, **common))
    if kind == "roberta-bare":
        return transformers.RobertaModel(transformers.RobertaConfig(vocab_size=64, max_position_embeddings=66,
                                                                    pad_token_id=1, **common))
    if kind == "vit-bare":
        return transformers.ViTModel(transformers.ViTConfig(image_size=image, patch_size=8, **common))
    if kind == "bert":
        return transformers.BertForSequenceClassification(
            transformers.BertConfig(vocab_size=64, num_labels=3, max_position_embeddings=64, **common))
    if kind == "roberta":
        return transformers.RobertaForSequenceClassification(
            transformers.RobertaConfig(vocab_size=64, num_labels=3, max_position_embeddings=66, pad_token_id=1,
                                       **common))
    if kind == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
            vocab_size=64, num_key_value_heads=2, max_position_embeddings=64, **common))
    if kind == "vit":
        return transformers.ViTForImageClassification(
            transformers.ViTConfig(image_size=image, patch_size=8, num_labels=3, **common))
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(image_size=image, patch_size=8, **common))


def identity_case(root, kind: str) -> tuple[dict[str, torch.Tensor], CalibrationSpec, CalibrationSpec]:
    """A random-init width-32 model of ``kind`` (root/A), a wider seed-1 one (root/B), a random delta of A
    (root/tv.safetensors), and 16 calibration examples: (delta, A's calibration, A/B paired calibration).
    Also the setting of ``benchmarks/fills.py``'s identity rows."""
    _model(kind, 32).eval().save_pretrained(root / "A")
    _model(kind, 48, image=40, seed=1).eval().save_pretrained(root / "B")
    delta = tiny.random_delta(load_file(str(root / "A" / "model.safetensors")), 0.02)
    tiny.save_delta(delta, root / "tv.safetensors")
    gen = torch.Generator().manual_seed(0)
    if kind in ("vit", "clip", "vit-bare"):
        images = torch.randn(16, 3, 40, 40, generator=gen)
        save_file({"pixel_values": torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear")},
                  str(root / "ca.safetensors"))
        save_file({"pixel_values": images}, str(root / "cb.safetensors"))
        return (delta, CalibrationSpec(str(root / "ca.safetensors")),
                CalibrationSpec(None, str(root / "ca.safetensors"), str(root / "cb.safetensors")))
    ids = torch.randint(3, 64, (16, 24), generator=gen)
    save_file({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, str(root / "c.safetensors"))
    return delta, CalibrationSpec(str(root / "c.safetensors")), CalibrationSpec(str(root / "c.safetensors"))


@pytest.mark.parametrize("kind", ["bert", "roberta", "qwen2", "vit", "clip", "bert-bare", "roberta-bare", "vit-bare"])
def test_family_identity_and_wider_target(tmp_path, kind):
    delta, same, paired = identity_case(tmp_path, kind)

    def transport(target, calibration):
        cfg = TransportConfig(str(tmp_path / "A"), str(tmp_path / target), "theseus",
                              task_vector=str(tmp_path / "tv.safetensors"), calibration=calibration)
        report = api.transport(cfg, tmp_path / "out.safetensors")
        return load_file(str(tmp_path / "out.safetensors")), report

    out, report = transport("A", same)
    assert report["summary"]["left_out"] == 0
    for name, value in delta.items():
        torch.testing.assert_close(out[name], value, rtol=1e-4, atol=1e-5)
    out, report = transport("B", paired)
    assert report["summary"]["transported"] == len(delta)
    target = load_file(str(tmp_path / "B" / "model.safetensors"))
    assert {k: v.shape for k, v in out.items()} == {k: target[k].shape for k in out}


def test_bare_encoder_task_vector_ports_onto_a_classifier_of_the_family(tmp_path):
    """A delta of a bare BertModel (keys without "bert.") lands on a wider BertForSequenceClassification's
    backbone: names resolve through the architecture's prefixes, and the head, absent from the vector, stays."""
    bare, classifier = _model("bert-bare", 32).eval(), _model("bert", 48, seed=1).eval()
    bare.save_pretrained(tmp_path / "A")
    classifier.save_pretrained(tmp_path / "B")
    state = load_file(str(tmp_path / "A" / "model.safetensors"))
    assert not any(k.startswith("bert.") for k in state)
    tiny.save_delta(tiny.random_delta(state, 0.02), tmp_path / "tv.safetensors")
    ids = torch.randint(3, 64, (16, 24), generator=torch.Generator().manual_seed(0))
    save_file({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, str(tmp_path / "c.safetensors"))
    cfg = TransportConfig(str(tmp_path / "A"), str(tmp_path / "B"), "theseus",
                          task_vector=str(tmp_path / "tv.safetensors"),
                          calibration=CalibrationSpec(str(tmp_path / "c.safetensors")))
    report = api.transport(cfg, tmp_path / "out.safetensors")
    assert report["summary"]["left_out"] == 0 and report["summary"]["transported"] == len(state)
    out = load_file(str(tmp_path / "out.safetensors"))
    target = load_file(str(tmp_path / "B" / "model.safetensors"))
    assert set(out) == {f"bert.{k}" for k in state} and all(out[k].shape == target[k].shape for k in out)


def test_every_rule_is_one_row_of_the_rule_table():
    from theseus_ops.transport import architecture
    from theseus_ops.transport.rule_table import RULE_TABLE

    assert tuple(RULE_TABLE) == architecture.RULES
    assert {p.rule for fam in all_architectures() for p in fam.parameters} <= set(RULE_TABLE)
    raw = _raw("gpt2")
    raw["parameters"][0]["rule"] = "affine"
    with pytest.raises(ValueError, match="unknown rule 'affine'"):
        parse_architecture(raw)


def test_config_sections_and_the_tie_default_are_family_data():
    """A full CLIPModel nests the tower's settings under vision_config; GPT-2 ties unless its config says not."""
    from pathlib import Path

    from theseus_ops.io.models import ModelInfo

    def info(config: dict) -> ModelInfo:
        return ModelInfo(Path("m"), config, architecture_for_model_type(config["model_type"]), {}, {}, ())

    clip = architecture_for_model_type("clip")
    assert clip.config_sections == ("vision_config",)
    assert info({"model_type": "clip", "vision_config": {"num_hidden_layers": 3}}).num_layers == 3
    assert info({"model_type": "clip_vision_model", "num_hidden_layers": 2}).num_layers == 2
    assert clip.settings({"image_size": 8, "vision_config": {"image_size": 4, "patch_size": 2}})["patch_size"] == 2
    assert clip.settings({"image_size": 8, "vision_config": {"image_size": 4}})["image_size"] == 8
    assert architecture_for_model_type("llama").settings({"vision_config": {"a": 1}}) == {"vision_config": {"a": 1}}
    assert info({"model_type": "gpt2"}).tied_embeddings
    assert not info({"model_type": "gpt2", "tie_word_embeddings": False}).tied_embeddings
    assert not info({"model_type": "llama"}).tied_embeddings


@pytest.mark.parametrize("edit,match", [
    (lambda r: r.update(tie_default="yes"), "tie_default must be true or false"),
    (lambda r: r.update(config_sections="vision_config"), "config_sections must list"),
    (lambda r: r.update(config_root="vision_config"), "unknown family key"),
])
def test_family_config_keys_are_validated_strictly(edit, match):
    raw = _raw("gpt2")
    edit(raw)
    with pytest.raises(ValueError, match=match):
        parse_architecture(raw)


@pytest.mark.parametrize("edit,match", [
    (lambda r: r["global_sites"]["post_ln"].update(follows="no_such_site"), "follows must name a global or main-stack"),
    (lambda r: r["global_sites"]["post_ln"].update(follows="post_ln"), "follows must name"),
    (lambda r: r["layer_sites"]["q"].update(follows="embed"), "follows must name another site of the layers stack"),
])
def test_follows_names_a_site_the_space_can_keep_coordinates_of(edit, match):
    raw = _raw("clip_vision")
    edit(raw)
    with pytest.raises(ValueError, match=match):
        parse_architecture(raw)


def test_pooled_norm_space_follows_the_last_layer():
    """CLIP's post_layernorm sees one token per image and no weight reads it: its space keeps the last
    layer's residual coordinates, which the weights fill uses where the images leave it open."""
    from theseus_ops.transport.engine import space_requests
    from theseus_ops.transport.layer_map import build_layer_map

    clip = architecture_for_model_type("clip_vision_model")
    requests = space_requests(clip, {"post_ln", "layers.2.q"}, build_layer_map("uniform", 3, 3), "", "")
    follows = {r.key: r.follows for r in requests}
    assert follows == {"post_ln": "layers.2.resid_out", "layers.2.q": None}


def test_vit_value_space_is_completed_through_the_attention_output(tmp_path):
    """Deeper than the 2-layer identity cases: a value space whose only weight is W_v, behind a LayerNorm
    that never moves along its mean direction, takes the missing direction from the attention output's
    map (attention mixes tokens, not channels: ``"follows": "attn_out"``). Without it one value
    direction stayed dropped, and the identity oracle was 7% off on a v_proj (benchmarks/transport_speed.py)."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=128, patch_size=16, hidden_size=192, intermediate_size=768,
                                    num_hidden_layers=4, num_attention_heads=3, num_labels=10)
    transformers.ViTForImageClassification(config).eval().save_pretrained(tmp_path / "A")
    delta = tiny.random_delta(load_file(str(tmp_path / "A" / "model.safetensors")), 0.02)
    tiny.save_delta(delta, tmp_path / "tv.safetensors")
    images = torch.randn(16, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    save_file({"pixel_values": images}, str(tmp_path / "c.safetensors"))
    cfg = TransportConfig(str(tmp_path / "A"), str(tmp_path / "A"), "theseus",
                          task_vector=str(tmp_path / "tv.safetensors"),
                          calibration=CalibrationSpec(str(tmp_path / "c.safetensors")))
    api.transport(cfg, tmp_path / "out.safetensors")
    out = load_file(str(tmp_path / "out.safetensors"))
    worst = max(float((out[k] - v).norm() / v.norm()) for k, v in delta.items())
    assert worst < 1e-4, worst

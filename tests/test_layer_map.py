"""Depth handling is explicit, tested and reported."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from tests import tiny
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, TransportConfig
from theseus_ops.errors import InputError, PartialTransportError
from theseus_ops.pipeline import estimate as pipeline_estimate
from theseus_ops.transport.layer_map import build_layer_map, uniform_sources


def test_uniform_pairs_first_and_last_layers():
    assert uniform_sources(2, 4) == (0, 0, 1, 1)
    assert uniform_sources(4, 2) == (0, 3)
    assert uniform_sources(3, 5) == (0, 0, 1, 2, 2)
    assert uniform_sources(5, 1) == (0,)


def test_identity_refuses_different_depth_and_suggests_the_option():
    with pytest.raises(InputError, match="--layer-map"):
        build_layer_map("identity", 2, 3)


def test_file_map_validates_and_reports(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"0": 0, "1": None, "2": 1}))
    lm = build_layer_map(str(path), 2, 3)
    assert lm.sources == (0, None, 1) and lm.unmapped_targets == [1] and lm.unused_sources == []
    path.write_text(json.dumps({"0": 5}))
    with pytest.raises(InputError, match="outside"):
        build_layer_map(str(path), 2, 3)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        build_layer_map(str(path), 2, 3)


@pytest.fixture()
def deeper(tmp_path):
    config_a = tiny.llama_config(layers=2)
    state_a = tiny.file_state(tiny.build(config_a, 0), tmp_path / "A")
    tiny.save(tiny.build(tiny.llama_config(layers=3, hidden=48), 1), tmp_path / "B")
    tiny.save_delta(tiny.random_delta(state_a), tmp_path / "tv.safetensors")
    tiny.calibration(tmp_path / "cal.safetensors")
    return tmp_path


def _transport(root, layer_map, method="theseus"):
    cfg = TransportConfig(str(root / "A"), str(root / "B"), method, task_vector=str(root / "tv.safetensors"),
                          calibration=CalibrationSpec(str(root / "cal.safetensors")) if method == "theseus"
                          else CalibrationSpec(), layer_map=layer_map)
    report = api.transport(cfg, root / "out.safetensors")
    return load_file(str(root / "out.safetensors")), report


def test_uniform_layer_map_feeds_every_target_layer(deeper):
    out, report = _transport(deeper, "uniform")
    assert report["layer_map"]["sources"] == [0, 0, 1]
    assert report["summary"]["left_out"] == 0 and report["summary"]["target_layers_without_source"] == []
    for j in range(3):
        assert f"model.layers.{j}.mlp.down_proj.weight" in out
    line = next(p for p in report["parameters"] if p["name"] == "model.layers.0.self_attn.q_proj.weight")
    assert line["targets"] == ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"]


def test_file_layer_map_reports_target_layers_left_without_source(deeper):
    (deeper / "map.json").write_text(json.dumps({"0": 0, "2": 1}))
    out, report = _transport(deeper, str(deeper / "map.json"), method="pad")
    assert report["summary"]["target_layers_without_source"] == [1]
    assert not any(k.startswith("model.layers.1.") for k in out)
    assert "model.layers.2.self_attn.o_proj.weight" in out


def test_unused_source_layers_are_refused_before_any_statistics(tmp_path, monkeypatch):
    """A 4-layer source onto a 2-layer target (uniform: target 0 <- 0, 1 <- 3) drops layers 1 and 2.

    That is known from the layer map alone, so the refusal comes before statistics and maps (which
    take minutes on a real model): here the statistics are made to fail loudly if they are reached.
    """
    state_a = tiny.file_state(tiny.build(tiny.llama_config(layers=4), 0), tmp_path / "A")
    tiny.save(tiny.build(tiny.llama_config(layers=2, hidden=48), 1), tmp_path / "B")
    tiny.save_delta(tiny.random_delta(state_a), tmp_path / "tv.safetensors")
    tiny.calibration(tmp_path / "cal.safetensors")

    def never(*_args, **_kwargs):
        raise AssertionError("statistics were computed before the layer map was refused")

    monkeypatch.setattr(pipeline_estimate, "compute_alignment", never)
    cfg = TransportConfig(str(tmp_path / "A"), str(tmp_path / "B"), "theseus",
                          task_vector=str(tmp_path / "tv.safetensors"),
                          calibration=CalibrationSpec(str(tmp_path / "cal.safetensors")), layer_map="uniform")
    with pytest.raises(PartialTransportError, match=r"source layer\(s\) 1, 2 unused.*--allow-partial") as err:
        api.transport(cfg, tmp_path / "out.safetensors", tmp_path / "report.json")
    assert "\n" not in str(err.value) and not (tmp_path / "out.safetensors").exists()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stopped"] == "before statistics" and report["summary"]["transported"] == 0
    assert {p["name"].split(".")[2] for p in report["parameters"] if p["status"] == "left_out"} == {"1", "2"}
    monkeypatch.undo()
    allowed = TransportConfig(**{**cfg.__dict__, "allow_partial": True})
    report = api.transport(allowed, tmp_path / "out.safetensors")
    assert report["summary"]["left_out"] == 2 * 9  # nine layered parameters in each dropped layer
    assert report["summary"]["transported"] == report["summary"]["total"] - 18

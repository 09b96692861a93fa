"""Prepare once, apply many: a saved alignment reproduces a fresh run and guards its provenance."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests import tiny
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, PrepareConfig, TransportConfig
from theseus_ops.errors import InputError
from theseus_ops.io.alignment import Alignment


@pytest.fixture()
def case(tmp_path):
    return tiny.Case(tmp_path, "llama", "widening")


def test_reused_alignment_equals_fresh_run_for_a_second_task_vector(case, tmp_path):
    calibration = CalibrationSpec(str(case.calibration))
    alignment = api.prepare(PrepareConfig(str(case.source), str(case.target), calibration), tmp_path / "pair.align")
    prov = alignment.provenance
    assert prov["source"]["sha256"] and prov["target"]["sha256"] and prov["calibration"]["rows"] == 16
    assert prov["options"]["method"] == "theseus" and prov["layer_map"]["kind"] == "identity"
    # every space of the architecture is prepared, with its rank reported against its width
    assert len(alignment.maps) == 2 + 2 * 9
    hidden = alignment.quality["layers.1.mlp_hidden"]
    assert (hidden["width_a"], hidden["width_b"], hidden["data_rank"]) == (64, 96, 64)

    second = tiny.random_delta(case.state_a, seed=42)
    tiny.save_delta(second, tmp_path / "tv2.safetensors")
    for name, tv in (("first", case.task_vector), ("second", tmp_path / "tv2.safetensors")):
        reused = TransportConfig(str(case.source), str(case.target), "theseus", task_vector=str(tv),
                                 alignment=str(tmp_path / "pair.align"))
        fresh = TransportConfig(str(case.source), str(case.target), "theseus", task_vector=str(tv),
                                calibration=calibration)
        report = api.transport(reused, tmp_path / f"{name}-reused.safetensors")
        api.transport(fresh, tmp_path / f"{name}-fresh.safetensors")
        a = load_file(str(tmp_path / f"{name}-reused.safetensors"))
        b = load_file(str(tmp_path / f"{name}-fresh.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
        assert report["alignment_provenance"]["target"]["sha256"] == prov["target"]["sha256"]
    delta_b = load_file(str(tmp_path / "second-reused.safetensors"))
    case.delta = second
    assert case.error(delta_b) < 1e-3


def test_alignment_for_another_pair_or_method_is_refused(case, tmp_path):
    api.prepare(PrepareConfig(str(case.source), str(case.target), CalibrationSpec(str(case.calibration))),
                tmp_path / "pair.align")
    wrong_pair = TransportConfig(str(case.source), str(case.source), "theseus", task_vector=str(case.task_vector),
                                 alignment=str(tmp_path / "pair.align"))
    with pytest.raises(InputError, match="another model pair"):
        api.transport(wrong_pair, tmp_path / "out.safetensors")
    wrong_method = TransportConfig(str(case.source), str(case.target), "theseus-data-free",
                                   task_vector=str(case.task_vector), alignment=str(tmp_path / "pair.align"))
    with pytest.raises(InputError, match="holds theseus maps"):
        api.transport(wrong_method, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_alignment_round_trips_through_disk(case, tmp_path):
    saved = api.prepare(PrepareConfig(str(case.source), str(case.target), method="theseus-data-free"),
                        tmp_path / "df.align")
    loaded = Alignment.load(tmp_path / "df.align")
    assert loaded.provenance == saved.provenance and loaded.quality == saved.quality
    for key, value in saved.maps.items():
        assert torch.equal(loaded.maps[key], value)
    summary = api.inspect_path(tmp_path / "df.align")
    assert summary["kind"] == "alignment" and summary["spaces"] == len(saved.maps)

"""The in-memory pipeline (theseus_ops.pipeline) is api.transport without the files.

``transport_in_memory`` must give the same vector and the same report as ``api.transport`` and write
nothing: the working directory and the case's folder stay as they were. Objects a caller already
holds (an alignment, the models, calibration examples) replace the files they were read from, and a
refusal carries its report instead of writing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests import tiny
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, PrepareConfig, TransportConfig
from theseus_ops.io.calibration import load_calibration
from theseus_ops.io.models import load_model
from theseus_ops.io.task_vectors import read_task_vector, validate_against_base
from theseus_ops.pipeline import (
    Loaded,
    TransportRefused,
    compute_alignment,
    info_from_model,
    open_pair,
    pair_of,
    transport_in_memory,
)
from theseus_ops.transport.task_vector import TaskVector

# what differs between two runs of the same estimate: when it ran and how long it took
_VOLATILE = ("created", "seconds")


def _steady(report: dict) -> dict:
    prov = report.get("alignment_provenance")
    if prov is None:
        return report
    return {**report, "alignment_provenance": {k: v for k, v in prov.items() if k not in _VOLATILE}}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _in_memory(case: tiny.Case, cfg: TransportConfig, loaded: Loaded, cwd: Path,
               monkeypatch) -> tuple[TaskVector, dict]:
    """Run the entry point from an empty working directory and check that nothing was written anywhere."""
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = _files(case.root)
    pair = open_pair(cfg.source_base, cfg.target_base, cfg.layer_map)
    tv = read_task_vector(cfg.task_vector)
    validate_against_base(tv, pair.source, "task vector")
    result, report = transport_in_memory(cfg, pair, tv, loaded)
    assert os.listdir(cwd) == [] and _files(case.root) == before
    return result, report.as_dict()


@pytest.mark.parametrize("method", ["theseus", "naive", "theseus-data-free"])
def test_in_memory_matches_api_transport(tmp_path, monkeypatch, method):
    case = tiny.Case(tmp_path / "case", "llama", "permutation")
    calibration = CalibrationSpec(str(case.calibration)) if method == "theseus" else CalibrationSpec()
    cfg = TransportConfig(str(case.source), str(case.target), method, task_vector=str(case.task_vector),
                          calibration=calibration)
    on_disk = api.transport(cfg, case.root / "out.safetensors")
    expected = load_file(str(case.root / "out.safetensors"))
    result, report = _in_memory(case, cfg, Loaded(), tmp_path / "cwd", monkeypatch)
    assert _steady(report) == _steady(on_disk)
    assert set(result.deltas) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(result.deltas[name], value, rtol=0, atol=0)


def test_given_alignment_models_and_calibration_replace_the_files(tmp_path, monkeypatch):
    """A prepared alignment held in memory is used as the file would be, even once the file is gone."""
    case = tiny.Case(tmp_path / "case", "llama", "widening")
    prep = PrepareConfig(str(case.source), str(case.target), CalibrationSpec(str(case.calibration)))
    alignment_path = case.root / "pair.alignment"
    api.prepare(prep, alignment_path)
    cfg = TransportConfig(str(case.source), str(case.target), "theseus", task_vector=str(case.task_vector),
                          alignment=str(alignment_path))
    on_disk = api.transport(cfg, case.root / "out.safetensors")
    expected = load_file(str(case.root / "out.safetensors"))

    pair = open_pair(cfg.source_base, cfg.target_base, cfg.layer_map)
    cal = load_calibration(case.calibration, pair.architecture.input_kind)
    device = torch.device("cpu")
    alignment = compute_alignment(prep, pair, loaded=Loaded(calibration=(cal, cal)))
    held = Loaded(source_model=load_model(pair.source, device), target_model=load_model(pair.target, device),
                  calibration=(cal, cal), alignment=alignment)
    alignment_path.unlink()
    result, report = _in_memory(case, cfg, held, tmp_path / "cwd", monkeypatch)
    assert report["parameters"] == on_disk["parameters"] and report["summary"] == on_disk["summary"]
    assert report["spaces"] == on_disk["spaces"]
    for name, value in expected.items():
        torch.testing.assert_close(result.deltas[name], value, rtol=1e-5, atol=1e-6)


def test_refusal_carries_the_report_and_writes_nothing(tmp_path, monkeypatch):
    state_a = tiny.file_state(tiny.build(tiny.llama_config(layers=4), 0), tmp_path / "case" / "A")
    tiny.save(tiny.build(tiny.llama_config(layers=2, hidden=48), 1), tmp_path / "case" / "B")
    tiny.save_delta(tiny.random_delta(state_a), tmp_path / "case" / "tv.safetensors")
    cfg = TransportConfig(str(tmp_path / "case" / "A"), str(tmp_path / "case" / "B"), "pad",
                          task_vector=str(tmp_path / "case" / "tv.safetensors"), layer_map="uniform")
    pair = open_pair(cfg.source_base, cfg.target_base, cfg.layer_map)
    tv = read_task_vector(cfg.task_vector)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(TransportRefused, match=r"source layer\(s\) 1, 2 unused") as err:
        transport_in_memory(cfg, pair, tv)
    report = err.value.report.as_dict()
    assert report["stopped"] == "before statistics" and report["summary"]["transported"] == 0
    assert os.listdir(tmp_path / "cwd") == []


def test_pair_of_loaded_models_needs_no_directory():
    """Models built in memory (the benchmark's) pair and transport without a file: the identity oracle."""
    model = tiny.build(tiny.llama_config(), 0)
    info = info_from_model(model, "<memory>/A")
    pair = pair_of(info, info, "identity")
    gen = torch.Generator().manual_seed(1)
    tv = TaskVector("full", deltas={n: 1e-2 * torch.randn(p.shape, generator=gen)
                                    for n, p in model.named_parameters()})
    ids = torch.randint(3, tiny.VOCAB, (16, 24), generator=torch.Generator().manual_seed(2))
    cal = tiny_calibration({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    cfg = TransportConfig("<memory>/A", "<memory>/A", "theseus", task_vector="<memory>",
                          calibration=CalibrationSpec("<memory>"), device="cpu")
    result, report = transport_in_memory(cfg, pair, tv, Loaded(source_model=model, target_model=model,
                                                                calibration=(cal, cal)))
    assert report.summary["left_out"] == 0
    for name, value in tv.deltas.items():
        torch.testing.assert_close(result.deltas[name], value, rtol=1e-4, atol=1e-5)


def tiny_calibration(tensors: dict[str, torch.Tensor]):
    from theseus_ops.io.calibration import Calibration, fingerprint

    return Calibration(tensors, fingerprint(tensors), "<memory>")

"""A method is "not applicable" only when its declared requirements rule it out; other errors fail the task.

The workflow sweeps every configured method and records the ones that cannot run on a pair (naive
and gradfix need identical shapes, theseus needs calibration). It used to treat *any* library error
as "not applicable": a corrupt task vector then dropped every method, and the release quietly kept
the base. Now only :class:`NotApplicableError`, raised by the capability checks (before statistics or maps),
means "not applicable"; a defect of the input propagates.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests import tiny
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, TransportConfig
from theseus_ops.errors import InputError, NotApplicableError
from theseus_ops.evaluation import NotApplicable
from theseus_ops.io.models import inspect_model_dir
from theseus_ops.workflow import Pair, WorkflowConfig
from theseus_ops.workflow.porting import PortInputs
from theseus_ops.workflow.release import transported_delta


@pytest.fixture(scope="module")
def wide_pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pair")
    model = tiny.build(tiny.llama_config(), seed=1)
    source = tiny.save(model, tmp / "a")
    target = tiny.save(tiny.build(tiny.llama_config(hidden=48, inter=96), seed=2), tmp / "b")
    state = tiny.file_state(model, tmp / "state")
    good = tiny.save_delta(tiny.random_delta(state), tmp / "tv.safetensors")
    broken = dict(tiny.random_delta(state))
    first = sorted(broken)[0]
    broken[first] = broken[first].clone()
    broken[first].view(-1)[0] = float("nan")
    bad = tiny.save_delta(broken, tmp / "nan.safetensors")
    side = {name: {"dir": str(d), "version": v, "sha256": inspect_model_dir(d).sha256()}
            for name, d, v in (("source", source, "1"), ("target", target, "2"))}
    return {"pair": Pair.from_json({"family": "tiny", **side}), "good": good, "bad": bad, "tmp": tmp}


def test_capability_checks_raise_not_applicable_before_any_work(wide_pair):
    pair = wide_pair["pair"]
    out = wide_pair["tmp"] / "naive.safetensors"
    with pytest.raises(NotApplicableError, match="identical shape"):
        api.transport(TransportConfig(pair.source.dir, pair.target.dir, "naive",
                                      task_vector=str(wide_pair["good"])), out)
    assert not out.exists()
    with pytest.raises(NotApplicableError, match="needs --calibration"):
        TransportConfig(pair.source.dir, pair.target.dir, "theseus", task_vector=str(wide_pair["good"]))
    assert issubclass(NotApplicableError, InputError)  # on the CLI still one line and exit 2


def test_the_workflow_records_not_applicable_and_fails_on_a_broken_vector(wide_pair, tmp_path):
    pair, cfg, paths = wide_pair["pair"], WorkflowConfig(work_dir=tmp_path / "work"), {}
    good = PortInputs(cfg, pair, wide_pair["good"], CalibrationSpec(), "")
    for method in ("naive", "gradfix", "theseus"):  # wider target; no calibration for this task
        result = transported_delta(good, method, paths)
        assert isinstance(result, NotApplicable) and result.method == method, result
    deltas = transported_delta(good, "pad", paths)
    assert set(paths) == {"pad"} and deltas and all(torch.isfinite(d).all() for d in deltas.values())
    for method in ("pad", "naive"):  # a defect of the input is an error, for every method, not "not applicable"
        with pytest.raises(InputError, match=r"non-finite|NaN|nan") as caught:
            transported_delta(PortInputs(cfg, pair, wide_pair["bad"], CalibrationSpec(), ""), method, paths)
        assert not isinstance(caught.value, NotApplicableError)


def test_a_task_reads_its_inputs_once_and_keeps_results_in_memory(wide_pair, tmp_path, monkeypatch):
    """Every method of one task shares one read of the headers and the vector and one load of the base models
    (for the maps it must estimate); results stay in memory, and only the per-pair alignment cache is written.
    The reads are counted by wrapping the real functions; the result equals the file API's."""
    import theseus_ops.workflow.porting as porting

    calls = {"open_pair": 0, "read_task_vector": 0, "load_model": 0}

    def counted(name):
        real = getattr(porting, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(porting, name, wrapper)

    for name in calls:
        counted(name)
    pair, cfg, done = wide_pair["pair"], WorkflowConfig(work_dir=tmp_path / "work"), {}
    inputs = PortInputs(cfg, pair, wide_pair["good"], CalibrationSpec(), "")
    for method in ("pad", "theseus-data-free", "naive"):
        transported_delta(inputs, method, done)
    assert set(done) == {"pad", "theseus-data-free"}
    assert calls == {"open_pair": 1, "read_task_vector": 1, "load_model": 2}  # the source and the target, once
    written = sorted(p.relative_to(cfg.work_dir).parts[0] for p in cfg.work_dir.rglob("*") if p.is_file())
    assert written == ["alignments"]
    api.transport(TransportConfig(pair.source.dir, pair.target.dir, "pad", task_vector=str(wide_pair["good"])),
                  tmp_path / "pad.safetensors")
    on_disk = load_file(str(tmp_path / "pad.safetensors"))
    assert set(on_disk) == set(done["pad"].vector.deltas)
    assert all(torch.equal(on_disk[k], done["pad"].vector.deltas[k]) for k in on_disk)

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

from tests import tiny
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, TransportConfig
from theseus_ops.errors import InputError, NotApplicableError
from theseus_ops.evaluation import NotApplicable
from theseus_ops.io.models import inspect_model_dir
from theseus_ops.workflow import Pair, WorkflowConfig
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
    for method in ("naive", "gradfix", "theseus"):  # wider target; no calibration for this task
        result = transported_delta(cfg, pair, method, wide_pair["good"], CalibrationSpec(), "", tmp_path, paths)
        assert isinstance(result, NotApplicable) and result.method == method, result
    deltas = transported_delta(cfg, pair, "pad", wide_pair["good"], CalibrationSpec(), "", tmp_path, paths)
    assert set(paths) == {"pad"} and deltas and all(torch.isfinite(d).all() for d in deltas.values())
    for method in ("pad", "naive"):  # a defect of the input is an error, for every method, not "not applicable"
        with pytest.raises(InputError, match=r"non-finite|NaN|nan") as caught:
            transported_delta(cfg, pair, method, wide_pair["bad"], CalibrationSpec(), "", tmp_path / "b", paths)
        assert not isinstance(caught.value, NotApplicableError)

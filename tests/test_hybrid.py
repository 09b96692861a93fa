"""``theseus-hybrid``: per space, the Procrustes map or the pad map, chosen on held-out calibration rows."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests import tiny
from tests.test_equivariance import _grown, _save
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, PrepareConfig, TransportConfig
from theseus_ops.errors import InputError
from theseus_ops.transport.methods import get_method
from theseus_ops.transport.methods.theseus_hybrid.choose import held_out_residual, split_examples
from theseus_ops.workflow.config import default_methods


def test_a_permuted_target_makes_every_space_choose_procrustes(tmp_path):
    """Pad's residual is large on every moved space, so the hybrid is Theseus there, exact on the oracle."""
    case = tiny.Case(tmp_path, "llama", "permutation")
    cfg = TransportConfig(str(case.source), str(case.target), "theseus-hybrid", task_vector=str(case.task_vector),
                          calibration=CalibrationSpec(str(case.calibration)))
    report = api.transport(cfg, tmp_path / "out.safetensors")
    hybrid = report["alignment_provenance"]["calibration"]["hybrid"]
    assert hybrid["pad_spaces"] == [] and hybrid["held_out_examples"] >= 1
    assert set(hybrid["spaces"]) == set(report["spaces"])
    assert all(c["residual_pad"] > 10 * c["residual_procrustes"] for c in hybrid["spaces"].values())
    assert case.error(load_file(str(tmp_path / "out.safetensors"))) < 1e-4


def test_a_grown_target_that_kept_its_coordinates_gets_pad_where_it_fits_better(tmp_path):
    """A wider release grown from A and moved a little keeps A's coordinates; with few calibration examples
    Procrustes fits their noise, and on the held-out examples pad fits some spaces better. The hybrid takes
    the better map in every space, so it never fits held-out rows worse than either."""
    config_a, config_b = tiny.llama_config(), tiny.llama_config(inter=96)
    state_a = tiny.file_state(tiny.build(config_a, seed=0), tmp_path / "A")
    _save(config_a, state_a, tmp_path / "A")
    _save(config_b, _grown(state_a, 32, seed=11), tmp_path / "B")
    tv = tiny.save_delta(tiny.random_delta(state_a, seed=4), tmp_path / "tv.safetensors")
    calibration = CalibrationSpec(str(tiny.calibration(tmp_path / "cal.safetensors", rows=4)))
    alignment = api.prepare(PrepareConfig(str(tmp_path / "A"), str(tmp_path / "B"), calibration,
                                          method="theseus-hybrid"), tmp_path / "hybrid.align")
    spaces = alignment.provenance["calibration"]["hybrid"]["spaces"]
    assert alignment.provenance["calibration"]["hybrid"]["pad_spaces"], spaces
    for key, choice in spaces.items():
        best = min(choice["residual_pad"], choice["residual_procrustes"])
        assert choice["residual_" + ("pad" if choice["choice"] == "pad" else "procrustes")] == best
        if choice["choice"] == "pad":  # the stored map is E: coordinate i to coordinate i
            t = alignment.maps[key]
            assert torch.equal(t, torch.eye(*t.shape))
    out = tmp_path / "out.safetensors"
    api.transport(TransportConfig(str(tmp_path / "A"), str(tmp_path / "B"), "theseus-hybrid", task_vector=str(tv),
                                  alignment=str(tmp_path / "hybrid.align")), out)
    assert set(load_file(str(out))) == set(load_file(str(tv)))


def test_held_out_residual_matches_the_rows():
    """The moment formula is the residual of the rows themselves."""
    from theseus_ops.transport.statistics import SpaceStatistics

    gen = torch.Generator().manual_seed(0)
    xa, xb = torch.randn(40, 6, generator=gen), torch.randn(40, 9, generator=gen)
    stats = SpaceStatistics.empty(6, 9, torch.device("cpu"), with_gram=True)
    stats.update(xa, xb)
    t = torch.linalg.qr(torch.randn(9, 6, generator=gen, dtype=torch.float64))[0].T
    want = float((xa.double() @ t - xb.double()).norm() / xb.double().norm())
    assert held_out_residual(stats, t) == pytest.approx(want, rel=1e-6)


def test_split_needs_examples_to_estimate_and_to_hold_out():
    two = {"input_ids": torch.zeros(2, 5, dtype=torch.long)}
    with pytest.raises(InputError, match="at least 3 calibration examples"):
        split_examples(two, two, 0.25)
    eight = {"input_ids": torch.arange(40).reshape(8, 5)}
    (fit, _), (held, _) = split_examples(eight, eight, 0.25)
    assert fit["input_ids"].shape[0] == 6 and torch.equal(held["input_ids"], eight["input_ids"][6:])


def test_the_hybrid_is_registered_but_runs_in_the_workflow_only_when_named():
    info = get_method("theseus-hybrid")
    assert info.capabilities.needs_calibration and info.capabilities.estimates_maps
    assert "theseus-hybrid" not in default_methods() and "theseus" in default_methods()
    with pytest.raises(InputError, match="holdout"):
        info.config_cls(holdout=1.5)

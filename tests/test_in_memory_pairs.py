"""Models handed over in memory (the Python API, the benchmarks) get the same maps as from their directories.

An in-memory model has no weight shards, and the ``weights`` fill reads the base weights by their stored
names; it must take them from the model itself, or it finds nothing and silently drops every direction
the calibration data leaves open (the ViT identity oracle of benchmarks/transport_speed.py was 0.19 off).
"""

from __future__ import annotations

from safetensors.torch import load_file

from tests import tiny
from tests.test_equivariance import RANK_TOL, _grown, _low_rank_qk
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, PrepareConfig
from theseus_ops.io.calibration import Calibration, fingerprint
from theseus_ops.pipeline import Loaded, compute_alignment, info_from_model, pair_of

MEMORY = "<memory>"


def test_in_memory_pair_gets_the_weight_completion_of_its_directories(tmp_path):
    """The rank-deficient pair of test_equivariance (q/k of rank 5): its completion is stable under rounding."""
    config_a, config_b = tiny.llama_config(), tiny.llama_config(inter=96)
    state_a = _low_rank_qk(tiny.file_state(tiny.build(config_a, seed=0), tmp_path / "a"), seed=10)
    state_b = _grown(state_a, 32, seed=11)
    source, target = tiny.with_state(config_a, state_a), tiny.with_state(config_b, state_b)
    tiny.save(source, tmp_path / "a")
    tiny.save(target, tmp_path / "b")
    cal_path = tiny.calibration(tmp_path / "cal.safetensors", rows=24)
    options = {"rank_tol": RANK_TOL, "device": "cpu"}
    on_disk = api.prepare(PrepareConfig(str(tmp_path / "a"), str(tmp_path / "b"), CalibrationSpec(str(cal_path)),
                                        **options), tmp_path / "a.safetensors")
    dropped = api.prepare(PrepareConfig(str(tmp_path / "a"), str(tmp_path / "b"), CalibrationSpec(str(cal_path)),
                                        fill="project", **options), tmp_path / "project.safetensors")
    moved = max(float((on_disk.maps[k] - m).norm() / m.norm()) for k, m in dropped.maps.items())
    assert moved > 1e-3, "the fixture must leave directions for the weights to fill"

    tensors = load_file(str(cal_path))
    calibration = Calibration(tensors, fingerprint(tensors), MEMORY)
    pair = pair_of(info_from_model(source, f"{MEMORY}/a"), info_from_model(target, f"{MEMORY}/b"), "identity")
    in_memory = compute_alignment(PrepareConfig(MEMORY, MEMORY, CalibrationSpec(MEMORY), **options), pair,
                                  loaded=Loaded(source_model=source, target_model=target,
                                                calibration=(calibration, calibration)))
    worst = max(float((in_memory.maps[k] - m).norm() / m.norm()) for k, m in on_disk.maps.items())
    assert worst < 1e-5 < moved, (worst, moved)

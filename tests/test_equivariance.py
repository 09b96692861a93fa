"""Equivariance on rank-deficient models, the case random-init oracles never reach.

Trained models have numerically low-rank q/k spaces: the calibration data determines only part of
each map. A target whose residual channels, heads and MLP units are permuted computes the same
function, so transporting onto it must give the permuted task vector, exactly. That holds only if
what the map does on the undetermined directions does not depend on coordinate order: the default
``weights`` and ``project`` fills keep it, the ``pad`` fill (kept as an option) does not, and these
tests show each.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests import tiny
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, TransportConfig
from theseus_ops.examples import permute_llama, widen_mlp_llama

QK_RANK = 5
# Above the float32 rounding floor of the statistics (about 1e-7..1e-6 of s_max): the permuted copy's
# forward pass rounds differently, and directions at that floor are noise, not data.
RANK_TOL = 1e-5


def _low_rank_qk(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """q/k projections of rank QK_RANK, as in trained models whose attention uses few directions."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for name, w in state.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            left = torch.randn(w.shape[0], QK_RANK, generator=gen)
            right = torch.randn(QK_RANK, w.shape[1], generator=gen)
            out[name] = (0.15 * left @ right / QK_RANK**0.5).contiguous()
    return out


def _save(config, state: dict[str, torch.Tensor], path: Path) -> Path:
    return tiny.save(tiny.with_state(config, state), path)


def _grown(state: dict[str, torch.Tensor], extra_units: int, seed: int) -> dict[str, torch.Tensor]:
    """A wider release of A, "trained further": extra MLP units, every weight moved a little.

    q/k move by a rank-1 term, so they stay low rank, as a further-trained model's would.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in widen_mlp_llama(state, extra_units).items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            step = torch.randn(w.shape[0], 1, generator=gen) @ torch.randn(1, w.shape[1], generator=gen)
            out[name] = w + 0.02 * step
        else:
            out[name] = w + 0.02 * w.std() * torch.randn(w.shape, generator=gen)
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("equivariance")
    config_a = tiny.llama_config()
    config_b = tiny.llama_config(inter=96)  # a wider release grown from A, then moved
    state_a = _low_rank_qk(tiny.file_state(tiny.build(config_a, seed=0), root / "A"), seed=10)
    state_b = _grown(state_a, 32, seed=11)
    _save(config_a, state_a, root / "A")
    _save(config_b, state_b, root / "B")
    _save(config_b, permute_llama(state_b, config_b), root / "B-permuted")
    delta = tiny.random_delta(state_a, seed=4)
    return {
        "root": root, "config_b": config_b,
        "task_vector": tiny.save_delta(delta, root / "tv.safetensors"),
        "calibration": tiny.calibration(root / "calibration.safetensors", rows=24),
    }


def _transport(pair: dict, target: str, fill: str) -> tuple[dict[str, torch.Tensor], dict]:
    root = pair["root"]
    cfg = TransportConfig(str(root / "A"), str(root / target), "theseus", task_vector=str(pair["task_vector"]),
                          calibration=CalibrationSpec(str(pair["calibration"])), fill=fill, rank_tol=RANK_TOL)
    out = root / f"{target}-{fill}.safetensors"
    report = api.transport(cfg, out)
    return load_file(str(out)), report


def _worst_relative_gap(pair: dict, fill: str) -> tuple[float, dict]:
    onto_b, report = _transport(pair, "B", fill)
    onto_permuted, _ = _transport(pair, "B-permuted", fill)
    expected = permute_llama(onto_b, pair["config_b"])
    gaps = {name: float((onto_permuted[name] - expected[name]).norm() / expected[name].norm().clamp_min(1e-30))
            for name in expected}
    return max(gaps.values()), report


def test_the_data_leaves_qk_spaces_undetermined(pair):
    """Guard: the fixture really is rank-deficient, or the other tests would prove nothing."""
    _delta, report = _transport(pair, "B", "project")
    q_spaces = {k: v for k, v in report["spaces"].items() if k.endswith((".q", ".k"))}
    assert q_spaces and all(v["data_rank"] <= QK_RANK + 1 for v in q_spaces.values())


@pytest.mark.parametrize("fill", ["project", "weights"])
def test_equivariant_fills_are_exactly_equivariant_on_every_parameter(pair, fill):
    worst, report = _worst_relative_gap(pair, fill)
    assert worst < 1e-5
    # The dropped share is measured per parameter and summarised: q/k updates lose most of their norm.
    lost = {r["name"]: r["norm_lost_share"] for r in report["parameters"]}
    assert all(0.0 <= v <= 1.0 for v in lost.values())
    assert lost["model.layers.0.self_attn.q_proj.weight"] > 0.5
    assert report["summary"]["max_norm_lost_share"] == pytest.approx(max(lost.values()))


def test_pad_fill_is_not_equivariant(pair):
    """The historical fill depends on the target's coordinate order: the reason it is no longer the default."""
    worst, _report = _worst_relative_gap(pair, "pad")
    assert worst > 1e-2


def _short_calibration_transport(tmp_path: Path, oracle: str, fill: str) -> tuple[tiny.Case, dict, dict]:
    """Theseus on a tiny Llama oracle calibrated on 2 examples (48 rows for 64 MLP units): case, report, τ_B."""
    case = tiny.Case(tmp_path, "llama", oracle)
    short = tiny.calibration(tmp_path / "short.safetensors", rows=2)
    cfg = TransportConfig(str(case.source), str(case.target), "theseus", task_vector=str(case.task_vector),
                          calibration=CalibrationSpec(str(short)), fill=fill)
    report = api.transport(cfg, tmp_path / "out.safetensors")
    return case, report, load_file(str(tmp_path / "out.safetensors"))


@pytest.mark.parametrize("oracle", ["identity", "permutation"])
def test_project_fill_completes_from_probes_when_calibration_is_short(tmp_path, oracle):
    """Two calibration examples (48 rows) leave the 64-unit MLP spaces partly undetermined; seeded probe
    inputs, which depend on neither model's coordinates, complete them, so the oracles stay exact."""
    case, report, out = _short_calibration_transport(tmp_path, oracle, "project")
    hidden = report["spaces"]["layers.0.mlp_hidden"]
    assert hidden["data_rank"] < 64 and hidden["data_rank"] + hidden["probe_filled"] == 64
    assert "layers.0.mlp_hidden" in report["alignment_provenance"]["calibration"]["completion"]["spaces"]
    assert case.error(out) < 1e-3


@pytest.mark.parametrize("oracle", ["identity", "permutation"])
def test_weights_fill_completes_from_the_base_weights_when_calibration_is_short(tmp_path, oracle):
    """The same short calibration, completed by weight matching instead of probes: no second forward pass,
    and the oracles stay exact because the weight-matching moment is the permutation times a positive
    semi-definite matrix on an identical or permuted target."""
    case, report, out = _short_calibration_transport(tmp_path, oracle, "weights")
    hidden = report["spaces"]["layers.0.mlp_hidden"]
    assert hidden["data_rank"] < 64 and hidden["data_rank"] + hidden["weight_filled"] == 64
    assert hidden["probe_filled"] == 0
    completion = report["alignment_provenance"]["calibration"]["completion"]
    assert completion["prior"] == "base weights" and "layers.0.mlp_hidden" in completion["spaces"]
    assert case.error(out) < 1e-4


def bert_at_init(root: Path) -> tuple[Path, Path, Path, dict[str, torch.Tensor]]:
    """A BERT classifier at init (β = 0), a random task vector on it and 16 calibration sequences:
    the model directory, the vector's file, the calibration file and the vector itself."""
    import transformers
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=64, num_labels=3, max_position_embeddings=64, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4)).eval()
    model.save_pretrained(root / "bert")
    delta = tiny.random_delta(load_file(str(root / "bert" / "model.safetensors")), 0.02)
    tv = tiny.save_delta(delta, root / "bert-tv.safetensors")
    ids = torch.randint(3, 64, (16, 24), generator=torch.Generator().manual_seed(0))
    save_file({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, str(root / "bert-cal.safetensors"))
    return root / "bert", tv, root / "bert-cal.safetensors", delta


def test_weights_fill_keeps_structurally_unexcited_directions(tmp_path):
    """A BERT at init: LayerNorm outputs never move along γ⁻¹ (β = 0), so every space behind a norm,
    and the query/key/value spaces it feeds, miss one direction in any calibration data. The
    ``project`` fill drops that direction of every update; the ``weights`` fill completes it from the
    weights (the norm's space first, then, a round later, the projections it feeds), so the identity
    oracle is exact again."""
    model_dir, tv, calibration, delta = bert_at_init(tmp_path)
    worst = {}
    for fill in ("project", "weights"):
        cfg = TransportConfig(str(model_dir), str(model_dir), "theseus", task_vector=str(tv),
                              calibration=CalibrationSpec(str(calibration)), fill=fill)
        report = api.transport(cfg, tmp_path / f"{fill}.safetensors")
        out = load_file(str(tmp_path / f"{fill}.safetensors"))
        worst[fill] = max(float((out[k] - v).norm() / v.norm()) for k, v in delta.items() if v.norm() > 0)
        if fill == "weights":
            query = report["spaces"]["layers.0.q"]
            assert query["data_rank"] == 31 and query["weight_filled"] == 1
    assert worst["project"] > 0.1  # guard: the direction really is missing from the data
    assert worst["weights"] < 1e-4

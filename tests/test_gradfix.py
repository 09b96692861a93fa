"""GradFix: the kept coordinates descend the target's task loss."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import tiny
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, TransportConfig
from theseus_ops.errors import InputError
from theseus_ops.transport.methods.gradfix.config import GradFixConfig


@pytest.fixture()
def same_shape_pair(tmp_path):
    config = tiny.llama_config()
    state_a = tiny.file_state(tiny.build(config, 0), tmp_path / "A")
    gen = torch.Generator().manual_seed(4)
    state_b = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in state_a.items()}  # "v2-same"
    tiny.save(tiny.with_state(config, state_b), tmp_path / "B")
    delta = tiny.random_delta(state_a, seed=5)
    tiny.save_delta(delta, tmp_path / "tv.safetensors")
    tiny.calibration(tmp_path / "labeled.safetensors", labels=True)
    return tmp_path, config, state_b, delta


def _loss_and_grad(config, state, data):
    model = tiny.with_state(config, state)
    loss = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"], labels=data["labels"]).loss
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters()}


def _run(root, **kwargs):
    cfg = TransportConfig(str(root / "A"), str(root / "B"), "gradfix", task_vector=str(root / "tv.safetensors"),
                          calibration=CalibrationSpec(str(root / "labeled.safetensors")), batch_size=16, **kwargs)
    report = api.transport(cfg, root / "out.safetensors")
    return load_file(str(root / "out.safetensors")), report


def test_kept_coordinates_agree_with_descent_and_a_step_lowers_loss(same_shape_pair):
    root, config, state_b, delta = same_shape_pair
    out, report = _run(root)
    data = load_file(str(root / "labeled.safetensors"))
    loss, grad = _loss_and_grad(config, state_b, data)
    kept_total = 0
    for name, value in out.items():
        kept = value != 0
        kept_total += int(kept.sum())
        assert torch.all(value[kept].sign() == -grad[name][kept].sign()), name
        assert torch.equal(value[kept], delta[name][kept])  # normal mode keeps magnitudes
    assert 0 < kept_total < sum(v.numel() for v in delta.values())
    fractions = report["gradfix"]["kept_fraction"]
    assert set(fractions) == set(delta) and all(0.3 < f < 0.7 for f in fractions.values())
    stepped, _ = _loss_and_grad(config, tiny.add_delta(state_b, out, 1e-2), data)
    assert stepped < loss


def test_force_mode_resigns_every_coordinate(same_shape_pair):
    root, config, state_b, delta = same_shape_pair
    out, _ = _run(root, method_config=GradFixConfig(mode="force"))
    _loss, grad = _loss_and_grad(config, state_b, load_file(str(root / "labeled.safetensors")))
    for name, value in out.items():
        nonzero = grad[name] != 0
        assert torch.equal(value[nonzero].abs(), delta[name][nonzero].abs())
        assert torch.all(value[nonzero].sign() == -grad[name][nonzero].sign())


def test_vote_mode_follows_per_example_majority(same_shape_pair):
    root, config, state_b, _delta = same_shape_pair
    out, _ = _run(root, method_config={"signs": "vote"})
    data = load_file(str(root / "labeled.safetensors"))
    votes = None
    for i in range(data["input_ids"].shape[0]):
        _l, g = _loss_and_grad(config, state_b, {k: v[i : i + 1] for k, v in data.items()})
        signs = {n: t.sign() for n, t in g.items()}
        votes = signs if votes is None else {n: votes[n] + signs[n] for n in votes}
    for name, value in out.items():
        kept = value != 0
        assert torch.all(value[kept].sign() == -votes[name][kept].sign()), name


def test_gradfix_refuses_lora_and_missing_labels(same_shape_pair, tmp_path):
    root, *_ = same_shape_pair
    tiny.calibration(root / "unlabeled.safetensors")
    cfg = TransportConfig(str(root / "A"), str(root / "B"), "gradfix", task_vector=str(root / "tv.safetensors"),
                          calibration=CalibrationSpec(str(root / "unlabeled.safetensors")))
    with pytest.raises(InputError, match="labels"):
        api.transport(cfg, root / "out.safetensors")
    assert not (root / "out.safetensors").exists()


def test_unlabeled_rows_are_skipped(same_shape_pair):
    """Calibration may mix in plain text (labels all -100): those rows carry no task loss."""
    root, *_ = same_shape_pair
    data = load_file(str(root / "labeled.safetensors"))
    reference, _ = _run(root)
    extra = {k: v[:5].clone() for k, v in data.items()}
    extra["labels"][:] = -100
    save_file({k: torch.cat([data[k], extra[k]]) for k in data}, str(root / "labeled.safetensors"))
    mixed, _ = _run(root)
    for name in reference:
        assert torch.equal(mixed[name], reference[name])
    data["labels"][:] = -100
    save_file(data, str(root / "labeled.safetensors"))
    with pytest.raises(InputError, match="every calibration label is ignored"):
        _run(root)

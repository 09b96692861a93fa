"""The weight completion runs group by group: the same maps as one joint completion, less memory held.

Spaces no parameter links are completed separately (``estimate._independent_groups``), so only one
group's priors are held at a time and each group's statistics are freed once its maps are final
(docs/memory.md). That is only worth having if the maps are exactly those of rounds over every space at
once, which these tests check bit for bit on a pre-norm decoder and a post-norm encoder (each a few
groups per layer: a layer's input is a space of its own, which no weight of the layer before reads).
"""

from __future__ import annotations

import re

import pytest
import torch

from tests import tiny
from theseus_ops.config import CalibrationSpec, PrepareConfig
from theseus_ops.pipeline import Loaded, compute_alignment, open_pair
from theseus_ops.transport.methods.theseus import estimate


def _prepare(tmp_path, config) -> tuple[dict[str, torch.Tensor], list[str]]:
    tiny.save(tiny.build(config, seed=0), tmp_path / "a")
    tiny.save(tiny.build(config, seed=1), tmp_path / "b")
    calibration = tiny.calibration(tmp_path / "cal.safetensors", rows=3)  # too few rows: the completion runs
    cfg = PrepareConfig(str(tmp_path / "a"), str(tmp_path / "b"), CalibrationSpec(str(calibration)), device="cpu")
    messages: list[str] = []
    alignment = compute_alignment(cfg, open_pair(cfg.source_base, cfg.target_base, "identity"), loaded=Loaded(),
                                  progress=messages.append)
    return alignment.maps, messages


def _groups(messages: list[str]) -> tuple[int, int]:
    """(spaces completed, independent groups) from the completion's opening line."""
    line = next(m for m in messages if m.startswith("maps: completing "))
    found = re.match(r"maps: completing (\d+) .* in (\d+) independent group\(s\)$", line)
    assert found, line
    return int(found.group(1)), int(found.group(2))


@pytest.mark.parametrize("family", ["llama", "xlm-roberta"])
def test_group_by_group_completion_gives_the_maps_of_one_joint_completion(tmp_path, monkeypatch, family):
    config = tiny.llama_config(layers=3) if family == "llama" else tiny.xlm_roberta_config()
    grouped, messages = _prepare(tmp_path / "grouped", config)
    spaces, groups = _groups(messages)
    assert groups > config.num_hidden_layers  # layers never join; each is a few groups

    monkeypatch.setattr(estimate, "_independent_groups", lambda keys, neighbours, follows: [sorted(keys)])
    joint, messages = _prepare(tmp_path / "joint", config)
    assert _groups(messages) == (spaces, 1)
    assert grouped.keys() == joint.keys()
    differ = [k for k in grouped if not torch.equal(grouped[k], joint[k])]
    assert not differ, differ


def test_independent_groups_join_through_spaces_being_completed_only():
    neighbours = {"a": {"b", "fixed"}, "b": {"a"}, "c": {"fixed"}, "fixed": {"a", "c"}, "d": set()}
    groups = estimate._independent_groups(["a", "b", "c", "d", "e"], neighbours, {"e": "d"})
    assert groups == [["a", "b"], ["c"], ["d", "e"]]

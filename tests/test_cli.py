"""The CLI end to end, as a user runs it: prepare, transport with the alignment, apply, inspect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import transformers

from tests import tiny

CLI = str(Path(sys.executable).parent / "theseus-ops")


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_prepare_transport_apply_inspect(tmp_path):
    case = tiny.Case(tmp_path, "llama", "permutation")
    (case.source / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    (case.target / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))

    done = run("prepare", "--source-base", case.source, "--target-base", case.target,
               "--calibration", case.calibration, "--device", "cpu", "--out", tmp_path / "pair.align")
    assert done.returncode == 0, done.stderr
    assert "statistics: 16/16 examples" in done.stderr  # progress on stderr

    done = run("transport", "--source-base", case.source, "--target-base", case.target,
               "--task-vector", case.task_vector, "--alignment", tmp_path / "pair.align", "--method", "theseus",
               "--out", tmp_path / "tv-b.safetensors", "--report", tmp_path / "report.json")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["transported"] == report["summary"]["total"] == len(case.delta)

    done = run("apply", "--base", case.target, "--task-vector", tmp_path / "tv-b.safetensors", "--alpha", "0.5",
               "--out", tmp_path / "tuned-b")
    assert done.returncode == 0, done.stderr
    tuned = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "tuned-b")).eval()
    assert (tmp_path / "tuned-b" / "tokenizer_config.json").is_file()
    ids = torch.randint(3, tiny.VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    expected = tiny.with_state(case.config_a, tiny.add_delta(case.state_a, case.delta, 0.5))
    assert tiny.relative_error(tiny.logits(tuned, ids), tiny.logits(expected, ids)) < 1e-3

    for path, kind in ((case.target, "model"), (tmp_path / "tv-b.safetensors", "task_vector/full"),
                       (tmp_path / "pair.align", "alignment")):
        done = run("inspect", path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["kind"] == kind
    summary = json.loads(run("inspect", tmp_path / "tv-b.safetensors").stdout)
    assert summary["metadata"]["theseus.method"] == "theseus"
    assert summary["metadata"]["theseus.base_sha256"] == json.loads(run("inspect", case.target).stdout)["sha256"]


def test_transported_vector_refuses_the_wrong_base(tmp_path):
    case = tiny.Case(tmp_path, "gpt2", "widening")
    assert run("transport", "--source-base", case.source, "--target-base", case.target, "--task-vector",
               case.task_vector, "--method", "pad", "--out", tmp_path / "tv-b.safetensors").returncode == 0
    done = run("apply", "--base", case.source, "--task-vector", tmp_path / "tv-b.safetensors", "--out",
               tmp_path / "x")
    assert done.returncode == 2 and "made on base" in done.stderr
    assert not (tmp_path / "x").exists()


def test_source_tuned_directory_is_its_delta(tmp_path):
    case = tiny.Case(tmp_path, "llama", "identity")
    tiny.save(tiny.with_state(case.config_a, tiny.add_delta(case.state_a, case.delta)), tmp_path / "tuned")
    done = run("transport", "--source-base", case.source, "--target-base", case.target, "--source-tuned",
               tmp_path / "tuned", "--method", "naive", "--out", tmp_path / "tv.safetensors")
    assert done.returncode == 0, done.stderr
    from safetensors.torch import load_file

    out = load_file(str(tmp_path / "tv.safetensors"))
    assert out.keys() == case.delta.keys()
    for key, value in case.delta.items():
        torch.testing.assert_close(out[key], value, atol=1e-6, rtol=1e-5)


def test_help_lists_every_command():
    done = run("--help")
    assert done.returncode == 0
    for command in ("prepare", "transport", "apply", "inspect"):
        assert command in done.stdout

"""Bad input never crashes and never leaves a file behind.

Every case runs the CLI (in-process through ``main``, one case through the installed console
script) and checks: exit code 2, one ``theseus-ops: error:`` line on stderr, as the last line,
naming the problem; no traceback; no ``--out`` artifact and no ``.out.*.tmp`` leftovers.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from tests import tiny
from theseus_ops.cli import main

PREFIX = "theseus-ops: error:"
GARBAGE = bytes(range(7, 256)) * 3  # deterministic, not a safetensors header


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> SimpleNamespace:
    """Model pairs and inputs shared by every case; nothing here is modified by a test."""
    root = tmp_path_factory.mktemp("bad_input")
    src = root / "src"
    state = tiny.file_state(tiny.build(tiny.llama_config(), seed=0), src)  # untied: has lm_head.weight
    models = {
        "tgt": tiny.llama_config(),
        "wide": tiny.llama_config(hidden=48, heads=4, kv=2),
        "deep": tiny.llama_config(layers=3),
        "tied": tiny.llama_config(tie=True),
        "gpt2": tiny.gpt2_config(),
    }
    for name, config in models.items():
        tiny.save(tiny.build(config, seed=1), root / name)
    assert "lm_head.weight" in state
    return SimpleNamespace(
        root=root,
        src=src,
        state=state,
        tv=tiny.save_delta(tiny.random_delta(state), root / "tv.safetensors"),
        cal16=tiny.calibration(root / "cal16.safetensors", rows=16),
        cal12=tiny.calibration(root / "cal12.safetensors", rows=12),
        cal1=tiny.calibration(root / "cal1.safetensors", rows=1, length=1),
        cal_few=tiny.calibration(root / "cal_few.safetensors", rows=2, length=4),
        **{name: root / name for name in models},
    )


# ---------------------------------------------------------------------------------------- helpers


def out_path(tmp_path: Path, name: str = "out.safetensors") -> Path:
    """An --out path alone in its own directory, so any leftover there is ours."""
    return tmp_path / "outdir" / name


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir()) if out.parent.is_dir() else []


def run(capsys, argv: list[str]) -> tuple[int, str]:
    """``main`` as the console script runs it, with its stderr.

    pytest's handlers on the root logger would make ``main``'s ``logging.basicConfig`` a no-op, so
    progress and warnings would never reach stderr; they are set aside during the call.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    try:
        rc = main([str(a) for a in argv])
    finally:
        root.handlers = handlers
        root.setLevel(level)
    return rc, capsys.readouterr().err


def assert_clean_error(rc: int, err: str, keywords: tuple[str, ...], out: Path | None) -> str:
    """Exit 2, the error as the one last stderr line naming the problem, nothing written."""
    assert "Traceback" not in err, err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert lines[-1].startswith(PREFIX), err
    assert sum(PREFIX in line for line in lines) == 1, err
    for keyword in keywords:
        assert keyword in lines[-1], f"{keyword!r} not in {lines[-1]!r}"
    if out is not None:
        assert not out.exists(), f"{out} was written"
        assert leftovers(out) == [], f"left behind next to --out: {leftovers(out)}"
    return lines[-1]


def transport(w, out: Path, *extra, source=None, target=None, tv=None, method: str = "pad") -> list:
    return ["transport", "--source-base", source or w.src, "--target-base", target or w.tgt,
            "--task-vector", tv or w.tv, "--method", method, *extra, "--out", out]


def copy_model(w, tmp_path: Path, name: str = "model") -> Path:
    return Path(shutil.copytree(w.src, tmp_path / name))


def delta_with(w, tmp_path: Path, **changes: torch.Tensor) -> Path:
    """The module's task vector with some entries replaced or added."""
    delta = tiny.random_delta(w.state)
    for key, value in changes.items():
        delta[key.replace("__", ".")] = value
    return tiny.save_delta(delta, tmp_path / "tv_edited.safetensors")


def garbage(path: Path) -> Path:
    path.write_bytes(GARBAGE)
    return path


def cfg_edit(model: Path, edit: Callable[[dict], None]) -> Path:
    config = json.loads((model / "config.json").read_text())
    edit(config)
    (model / "config.json").write_text(json.dumps(config))
    return model


# ------------------------------------------------------------------------------- error cases

# Each case: (w, tmp_path, out) -> (argv, keywords). All must fail with exit 2 and write nothing.
Case = Callable[[SimpleNamespace, Path, Path], tuple[list, tuple[str, ...]]]


def _missing_source_base(w, tmp, out):
    return transport(w, out, source=tmp / "no_such_model"), ("no_such_model", "does not exist")


def _missing_task_vector(w, tmp, out):
    return transport(w, out, tv=tmp / "no_such_tv.safetensors"), ("task vector", "does not exist")


def _missing_calibration(w, tmp, out):
    argv = transport(w, out, "--calibration", tmp / "no_such_cal.safetensors", method="theseus")
    return argv, ("calibration file", "does not exist")


def _garbage_task_vector(w, tmp, out):
    return transport(w, out, tv=garbage(tmp / "tv.safetensors")), ("not a readable safetensors file",)


def _invalid_config_json(w, tmp, out):
    model = copy_model(w, tmp)
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    return transport(w, out, target=model), ("corrupt config.json",)


def _garbage_calibration(w, tmp, out):
    argv = transport(w, out, "--calibration", garbage(tmp / "cal.safetensors"), method="theseus")
    return argv, ("cal.safetensors", "not a readable safetensors file")


def _garbage_model_weights(w, tmp, out):
    model = copy_model(w, tmp)
    garbage(model / "model.safetensors")
    return transport(w, out, source=model), ("model.safetensors", "not a readable safetensors file")


def _nan_in_task_vector(w, tmp, out):
    bad = w.state["model.layers.0.mlp.up_proj.weight"].clone().zero_()
    bad[3, 5] = float("nan")
    return transport(w, out, tv=delta_with(w, tmp, model__layers__0__mlp__up_proj__weight=bad)), ("NaN",)


def _inf_in_task_vector(w, tmp, out):
    bad = torch.zeros_like(w.state["model.norm.weight"])
    bad[0] = float("-inf")
    return transport(w, out, tv=delta_with(w, tmp, model__norm__weight=bad)), ("model.norm.weight", "Inf")


def _unknown_key(w, tmp, out):
    tv = delta_with(w, tmp, model__layers__9__mlp__up_proj__weight=torch.zeros(64, 32))
    return transport(w, out, tv=tv), ("model.layers.9.mlp.up_proj.weight", "does not exist in the source base")


def _shape_mismatch(w, tmp, out):
    tv = delta_with(w, tmp, model__layers__1__self_attn__q_proj__weight=torch.zeros(32, 31))
    return transport(w, out, tv=tv), ("model.layers.1.self_attn.q_proj.weight", "has shape", "[32, 31]")


def _different_families(w, tmp, out):
    return transport(w, out, target=w.gpt2), ("different families",)


def _calibration_rows_differ(w, tmp, out):
    argv = transport(w, out, "--source-calibration", w.cal16, "--target-calibration", w.cal12, method="theseus")
    return argv, ("row counts differ", "16", "12")


def _gradfix_shapes_differ(w, tmp, out):
    labeled = tiny.calibration(tmp / "labeled.safetensors", labels=True)
    argv = transport(w, out, "--calibration", labeled, target=w.wide, method="gradfix")
    return argv, ("gradfix needs identical shape",)


def _naive_shapes_differ(w, tmp, out):
    return transport(w, out, target=w.wide, method="naive"), ("naive needs identical shape",)


def _gradfix_without_labels(w, tmp, out):
    argv = transport(w, out, "--calibration", w.cal16, "--device", "cpu", method="gradfix")
    return argv, ("labels",)


def _depth_mismatch_identity(w, tmp, out):
    return transport(w, out, target=w.deep), ("2 layers", "3", "--layer-map")


def _one_calibration_row(w, tmp, out):
    return transport(w, out, "--calibration", w.cal1, method="theseus"), ("1 row", "at least 2")


def _unsupported_architecture(w, tmp, out):
    model = cfg_edit(copy_model(w, tmp), lambda c: c.update(model_type="mamba"))
    return transport(w, out, source=model), ("unsupported architecture", "mamba", "llama", "gpt2")


def _partial_without_allow(w, tmp, out):
    return transport(w, out, target=w.tied), ("lm_head.weight", "--allow-partial")


def _apply_nan_alpha(w, tmp, out):
    return ["apply", "--base", w.src, "--task-vector", w.tv, "--alpha", "nan", "--out", out], ("--alpha", "finite")


def _apply_inf_alpha(w, tmp, out):
    return ["apply", "--base", w.src, "--task-vector", w.tv, "--alpha=-inf", "--out", out], ("--alpha", "finite")


def _prepare_missing_calibration(w, tmp, out):
    argv = ["prepare", "--source-base", w.src, "--target-base", w.tgt, "--calibration", tmp / "none.safetensors",
            "--out", out]
    return argv, ("calibration file", "does not exist")


def _prepare_different_families(w, tmp, out):
    argv = ["prepare", "--source-base", w.src, "--target-base", w.gpt2, "--calibration", w.cal16, "--out", out]
    return argv, ("different families",)


def _bad_rank_tol(w, tmp, out):
    return transport(w, out, "--calibration", w.cal16, "--rank-tol", "2", method="theseus"), ("rank_tol",)


def _bad_whiten_power(w, tmp, out):
    return transport(w, out, "--calibration", w.cal16, "--whiten-power", "0.9", method="theseus"), ("whiten_power",)


def _inspect_garbage(w, tmp, out):
    return ["inspect", garbage(tmp / "thing.safetensors")], ("not a readable safetensors file",)


ERROR_CASES: dict[str, Case] = {
    # 1. missing files
    "missing-source-base": _missing_source_base,
    "missing-task-vector": _missing_task_vector,
    "missing-calibration": _missing_calibration,
    # 2. corrupt files
    "garbage-task-vector": _garbage_task_vector,
    "invalid-config-json": _invalid_config_json,
    "garbage-calibration": _garbage_calibration,
    "garbage-model-weights": _garbage_model_weights,
    # 3. non-finite values
    "nan-in-task-vector": _nan_in_task_vector,
    "inf-in-task-vector": _inf_in_task_vector,
    # 4. task vector vs source base
    "unknown-key": _unknown_key,
    "shape-mismatch": _shape_mismatch,
    # 5.-8. model pairs and methods
    "different-families": _different_families,
    "calibration-rows-differ": _calibration_rows_differ,
    "gradfix-shapes-differ": _gradfix_shapes_differ,
    "naive-shapes-differ": _naive_shapes_differ,
    "gradfix-without-labels": _gradfix_without_labels,
    "depth-mismatch-identity": _depth_mismatch_identity,
    # 9. too little calibration data
    "one-calibration-row": _one_calibration_row,
    # 10. unsupported architecture
    "unsupported-architecture": _unsupported_architecture,
    # 11. partial transport without --allow-partial
    "partial-without-allow": _partial_without_allow,
    # 12. apply
    "apply-nan-alpha": _apply_nan_alpha,
    "rank-tol-out-of-range": _bad_rank_tol,
    "whiten-power-out-of-range": _bad_whiten_power,
    "apply-inf-alpha": _apply_inf_alpha,
    # the other subcommands
    "prepare-missing-calibration": _prepare_missing_calibration,
    "prepare-different-families": _prepare_different_families,
    "inspect-garbage": _inspect_garbage,
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_is_one_clean_error(w, tmp_path, capsys, case):
    out = out_path(tmp_path, "out_model" if case.startswith("apply") else "out.safetensors")
    argv, keywords = ERROR_CASES[case](w, tmp_path, out)
    rc, err = run(capsys, argv)
    assert_clean_error(rc, err, keywords, None if argv[0] == "inspect" else out)


# ----------------------------------------------- bugs: bad input that is not yet a clean error


def _truncated_weights_header_intact(w, tmp, out):
    # The header survives, the tensor data is cut: pad/naive never read the data, so they accept it.
    model = copy_model(w, tmp)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return transport(w, out, source=model), ("model.safetensors",)


def _malformed_header_entry(w, tmp, out):
    model = copy_model(w, tmp)
    header = json.dumps({"model.norm.weight": 1}).encode()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return transport(w, out, target=model), ("model.safetensors",)


def _config_without_layer_count(w, tmp, out):
    model = cfg_edit(copy_model(w, tmp), lambda c: c.pop("num_hidden_layers"))
    return transport(w, out, target=model), ("num_hidden_layers",)


def _calibration_ids_out_of_vocab(w, tmp, out):
    ids = torch.full((4, 8), tiny.VOCAB + 100)
    save_file({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, str(tmp / "oov.safetensors"))
    argv = transport(w, out, "--calibration", tmp / "oov.safetensors", "--device", "cpu", method="theseus")
    return argv, ("input_ids", "vocab")


# Inputs that once crashed or slipped through (found by review); each must now be a clean error.
FIXED_CASES: dict[str, Case] = {
    "truncated-weights-header-intact": _truncated_weights_header_intact,
    "malformed-header-entry": _malformed_header_entry,
    "config-without-layer-count": _config_without_layer_count,
    "calibration-ids-out-of-vocab": _calibration_ids_out_of_vocab,
}


@pytest.mark.parametrize("case", list(FIXED_CASES))
def test_bad_input_formerly_crashing(w, tmp_path, capsys, case):
    out = out_path(tmp_path)
    argv, keywords = FIXED_CASES[case](w, tmp_path, out)
    rc, err = run(capsys, argv)
    assert_clean_error(rc, err, keywords, out)


def test_out_is_an_existing_directory(w, tmp_path, capsys):
    out = out_path(tmp_path)
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("user data")
    try:
        rc, err = run(capsys, transport(w, out))
    finally:  # whatever happens, the directory and its content must survive, with no temp files next to it
        assert (out / "keep.txt").read_text() == "user data"
        assert leftovers(out) == [out.name]
    assert "Traceback" not in err
    assert rc == 2, err
    assert err.strip().splitlines()[-1].startswith(PREFIX)


# ------------------------------------------------------------------ warnings, partial transport


def test_few_calibration_rows_warn_underdetermined(w, tmp_path, capsys):
    """2 examples x 4 tokens = 8 rows for 32- and 64-wide spaces: allowed, with a warning."""
    out = out_path(tmp_path)
    rc, err = run(capsys, transport(w, out, "--calibration", w.cal_few, "--device", "cpu", method="theseus"))
    assert rc == 0, err
    assert "Traceback" not in err and PREFIX not in err
    assert "underdetermined" in err
    assert out.is_file()
    assert leftovers(out) == [out.name]


def test_partial_transport(w, tmp_path, capsys):
    """An untied source's lm_head has no counterpart in a tied target: refused unless --allow-partial."""
    out, report = out_path(tmp_path), tmp_path / "report.json"

    rc, err = run(capsys, transport(w, out, "--report", report, target=w.tied))
    assert_clean_error(rc, err, ("1 of 21", "lm_head.weight", "--allow-partial"), out)
    # the error points at --report, so the report (and only it) is written
    assert json.loads(report.read_text())["summary"]["left_out"] == 1

    rc, err = run(capsys, transport(w, out, "--report", report, "--allow-partial", target=w.tied))
    assert rc == 0, err
    assert PREFIX not in err
    assert out.is_file()
    assert leftovers(out) == [out.name]
    data = json.loads(report.read_text())
    assert data["summary"]["left_out"] == 1
    assert data["summary"]["transported"] == data["summary"]["total"] - 1
    left = [p for p in data["parameters"] if p["status"] == "left_out"]
    assert [p["name"] for p in left] == ["lm_head.weight"]
    assert "model.embed_tokens.weight" in left[0]["reason"]  # names what the target ties it to

    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as fh:
        assert "lm_head.weight" not in fh.keys()  # noqa: SIM118 - safe_open is not a dict
        assert fh.metadata()["theseus.left_out"] == "1"


# --------------------------------------------------------------------------- the real process


def test_console_script_exit_code(w, tmp_path):
    """The installed ``theseus-ops`` script, not ``main``: exit status 2 and one error line."""
    script = Path(sys.executable).parent / "theseus-ops"
    assert script.is_file(), script
    out = out_path(tmp_path)
    argv = [str(a) for a in transport(w, out, tv=garbage(tmp_path / "tv.safetensors"))]
    proc = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=120)
    assert proc.stdout == ""
    assert_clean_error(proc.returncode, proc.stderr, ("not a readable safetensors file",), out)

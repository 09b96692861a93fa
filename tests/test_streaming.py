"""``prepare --stream``: one block of each model at a time, the maps in a file, the same maps.

A streamed prepare builds both models as skeletons, runs each block on stored hidden states, makes each
block's maps and completes them, and writes each map to a scratch file once final (docs/memory.md). It
is worth having only if its maps are exactly those of a whole forward pass, and if it really holds one
block of each model at a time; these tests check both, on random-init and real models, and that what
it cannot run block by block is refused in one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests import tiny
from tests.real_support import real_test
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, PrepareConfig
from theseus_ops.io.alignment import Alignment
from theseus_ops.io.map_store import SpilledMaps, save_tensors_one_by_one
from theseus_ops.io.models import inspect_model_dir
from theseus_ops.pipeline import blocks
from theseus_ops.pipeline.pair import open_pair

CLI = str(Path(sys.executable).parent / "theseus-ops")


def _pair(tmp_path: Path, config, rows: int) -> tuple[Path, Path, Path]:
    tiny.save(tiny.build(config, seed=0), tmp_path / "a")
    tiny.save(tiny.build(config, seed=1), tmp_path / "b")
    return tmp_path / "a", tmp_path / "b", tiny.calibration(tmp_path / "cal.safetensors", rows=rows)


def _both(tmp_path: Path, a: Path, b: Path, calibration: Path, **options) -> tuple[Alignment, Alignment]:
    """The alignments of a whole and a streamed prepare, as written."""
    for stream in (False, True):
        api.prepare(PrepareConfig(str(a), str(b), CalibrationSpec(str(calibration)), device="cpu", stream=stream,
                                  **options), tmp_path / f"stream-{stream}.align")
    return Alignment.load(tmp_path / "stream-False.align"), Alignment.load(tmp_path / "stream-True.align")


@pytest.mark.parametrize(("family", "tie", "rows", "fill"), [
    ("llama", False, 3, "weights"), ("llama", True, 16, "weights"), ("llama", False, 3, "pad"),
    ("mistral", False, 3, "weights"),
])
def test_a_streamed_prepare_gives_the_maps_of_a_whole_forward_pass(tmp_path, family, tie, rows, fill):
    """Bit for bit: the same products in the same order, block by block (3 rows: the completion runs).

    Mistral (the llama architecture's sliding-window member) reads each block's attention type in its loop.
    """
    config = tiny.llama_config(layers=3, tie=tie) if family == "llama" else tiny.mistral_config()
    a, b, calibration = _pair(tmp_path, config, rows)
    whole, streamed = _both(tmp_path, a, b, calibration, fill=fill)
    assert whole.maps.keys() == streamed.maps.keys() and len(whole.maps) == 9 * config.num_hidden_layers + 2
    differ = [k for k in whole.maps if not torch.equal(whole.maps[k], streamed.maps[k])]
    assert not differ, differ
    assert whole.quality == streamed.quality
    assert not list(tmp_path.glob("theseus-maps-*"))  # the scratch store is gone once the alignment is written


def test_a_streamed_prepare_holds_one_block_of_each_model(tmp_path, monkeypatch):
    """Nothing but the block that runs: the embeddings and the final norm only for the first and last pass."""
    a, b, calibration = _pair(tmp_path, tiny.llama_config(layers=3), rows=4)
    resident: list[tuple[str, int, int]] = []  # (what was loaded, parameters held, those of what was loaded)

    def spy(method):
        def loaded(self, *index: int) -> None:
            method(self, *index)
            part = self.blocks[index[0]].parameters() if index else (
                p for n, p in self.model.named_parameters() if n in self._around)
            resident.append((f"block {index[0]}" if index else "around", self.resident_parameters(),
                             sum(p.numel() for p in part)))
        return loaded

    monkeypatch.setattr(blocks.BlockModel, "load_block", spy(blocks.BlockModel.load_block))
    monkeypatch.setattr(blocks.BlockModel, "load_around", spy(blocks.BlockModel.load_around))
    api.prepare(PrepareConfig(str(a), str(b), CalibrationSpec(str(calibration)), device="cpu", stream=True),
                tmp_path / "a.align")
    assert [what for what, _, _ in resident] == ["around"] * 2 + [f"block {i}" for i in range(3) for _ in "ab"] + \
        ["around"] * 2  # both models, segment by segment
    for _, held, part in resident:
        assert held == part > 0  # never a second block, nor the embeddings beside a block
    assert all(not n.startswith("lm_head") for n in blocks.BlockModel(
        inspect_model_dir(a), "model.layers", torch.device("cpu"))._around)  # the head never loads


def test_spilled_maps_are_written_as_a_safetensors_file_one_at_a_time(tmp_path):
    store = SpilledMaps(tmp_path)
    maps = {"x": torch.randn(3, 5), "y": torch.randn(7, 2), "z": torch.randn(1, 4)}
    for key, value in maps.items():
        store[key] = value
    with pytest.raises(ValueError, match="stored already"):
        store["x"] = maps["x"]
    assert set(store) == set(maps) and all(torch.equal(store[k], maps[k]) for k in maps)
    read: list[str] = []

    def one(name: str) -> torch.Tensor:
        read.append(name)
        return store[name]

    save_tensors_one_by_one(one, {k: store.shape(k) for k in store}, tmp_path / "out.safetensors", {"a": "b"})
    assert read == sorted(maps)  # each asked for once, in file order
    loaded = load_file(tmp_path / "out.safetensors")
    assert loaded.keys() == maps.keys() and all(torch.equal(loaded[k], maps[k]) for k in maps)
    with safe_open(tmp_path / "out.safetensors", framework="pt") as fh:
        assert fh.metadata() == {"a": "b"}
    scratch = list(tmp_path.glob("theseus-maps-*"))
    assert len(scratch) == 1
    store.close()
    assert not scratch[0].exists()


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_what_cannot_stream_is_refused_in_one_line(tmp_path):
    a, b, calibration = _pair(tmp_path, tiny.llama_config(layers=2), rows=4)
    gpt_a = tiny.save(tiny.build(tiny.gpt2_config(), seed=0), tmp_path / "gpt-a")
    gpt_b = tiny.save(tiny.build(tiny.gpt2_config(), seed=1), tmp_path / "gpt-b")
    deeper = tiny.save(tiny.build(tiny.llama_config(layers=3), seed=1), tmp_path / "deeper")
    cases = [
        ((a, b, "--fill", "project"), "--stream does not take --fill project"),
        ((gpt_a, gpt_b), "--stream runs llama models block by block, not gpt2"),
        ((a, deeper, "--layer-map", "uniform"), "--stream needs as many blocks in the target (3) as in the source (2)"),
    ]
    for (source, target, *more), message in cases:
        done = _cli("prepare", "--source-base", source, "--target-base", target, "--calibration", calibration,
                    "--device", "cpu", "--stream", *more, "--out", tmp_path / "out.align")
        assert done.returncode == 2, done.stderr
        assert message in done.stderr.strip().splitlines()[-1], done.stderr
    assert not list(tmp_path.glob("*.align")) and not list(tmp_path.glob("theseus-maps-*"))


def test_a_caller_s_models_in_memory_are_not_streamed(tmp_path):
    from theseus_ops.errors import InputError
    from theseus_ops.pipeline import Loaded, compute_alignment

    a, b, calibration = _pair(tmp_path, tiny.llama_config(layers=2), rows=4)
    cfg = PrepareConfig(str(a), str(b), CalibrationSpec(str(calibration)), device="cpu", stream=True)
    config = tiny.llama_config(layers=2)
    loaded = Loaded(source_model=tiny.build(config), target_model=tiny.build(config))
    with pytest.raises(InputError, match="models handed over in memory are whole already"):
        compute_alignment(cfg, open_pair(str(a), str(b), "identity"), loaded=loaded)


@real_test
def test_smollm2_streamed_maps_equal_the_whole_forward_pass(tmp_path):
    """A real, tied-embedding decoder: the first and last blocks' spaces and the global ones, bit for bit."""
    from theseus_ops.demo.real import build_real
    from theseus_ops.pipeline import compute_alignment

    fx = build_real(progress=print)
    keys = {"embed", "final_norm", *(f"layers.{i}.{s}" for i in (0, 29) for s in
                                    ("attn_in", "q", "k", "v", "attn_out", "resid_mid", "mlp_in", "mlp_hidden",
                                     "resid_out"))}
    pair = open_pair(str(fx.model("smollm2")), str(fx.model("smollm2", "v2-perm")), "identity")
    out = {}
    for stream in (False, True):
        cfg = PrepareConfig(str(fx.model("smollm2")), str(fx.model("smollm2", "v2-perm")),
                            CalibrationSpec(str(fx.calibration("smollm2"))), device="cpu", max_rows=8, stream=stream)
        alignment = compute_alignment(cfg, pair, keys=keys, scratch=tmp_path)
        if stream:
            alignment.save(tmp_path / "streamed.align")
        out[stream] = {k: alignment.maps[k] for k in alignment.maps}
    assert out[False].keys() == out[True].keys() == keys
    differ = [k for k in keys if not torch.equal(out[False][k], out[True][k])]
    assert not differ, differ
    assert json.loads(safe_open(tmp_path / "streamed.align", framework="pt").metadata()["theseus.alignment"])


def test_a_failed_streamed_prepare_leaves_no_scratch_file_and_no_alignment(tmp_path):
    """A block whose weights are missing from the shards: one line, exit 2, nothing left beside --out."""
    from safetensors.torch import save_file

    a, b, calibration = _pair(tmp_path, tiny.llama_config(layers=3), rows=4)
    shard = next(b.glob("*.safetensors"))
    tensors = load_file(shard)
    del tensors["model.layers.2.mlp.down_proj.weight"]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    out = tmp_path / "out"
    out.mkdir()
    done = _cli("prepare", "--source-base", a, "--target-base", b, "--calibration", calibration, "--device", "cpu",
                "--stream", "--out", out / "a.align")
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "model.layers.2.mlp.down_proj.weight" in line, done.stderr
    assert list(out.iterdir()) == []  # neither the scratch store nor a partial alignment

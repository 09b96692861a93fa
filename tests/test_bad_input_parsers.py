"""Untrusted files through the real CLI: every malformed one is exit 2 and one error line.

The inputs of issue 13 that gave a traceback (exit 1), or exit 0 with a nonsense answer: malformed
safetensors headers, shard indexes, calibration sets, LoRA adapter configs, alignment metadata,
tokenizers, task JSONL and manifests; and files that escape the model directory through a symlink
or a ``../`` name, which must be refused for reading, hashing and landing alike.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from tests import tiny
from tests.test_bad_input import assert_clean_error, run
from theseus_ops.errors import InputError

SECRET = "host secret: must never be read or uploaded\n"


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("bad_parsers")
    src = root / "src"
    state = tiny.file_state(tiny.build(tiny.llama_config(), seed=0), src)
    tiny.save(tiny.build(tiny.llama_config(), seed=1), root / "tgt")
    secret = root / "secret.txt"
    secret.write_text(SECRET)
    return SimpleNamespace(
        root=root, src=src, tgt=root / "tgt", state=state, secret=secret,
        tv=tiny.save_delta(tiny.random_delta(state), root / "tv.safetensors"),
        cal16=tiny.calibration(root / "cal16.safetensors", rows=16),
    )


# ------------------------------------------------------------------------------------- builders


def copy_model(w, tmp: Path, name: str = "model") -> Path:
    return Path(shutil.copytree(w.src, tmp / name))


def write_safetensors(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def model_with_header(w, tmp: Path, header: dict, data: bytes) -> Path:
    model = copy_model(w, tmp)
    write_safetensors(model / "model.safetensors", header, data)
    return model


def model_with_index(w, tmp: Path, index: object) -> Path:
    model = copy_model(w, tmp)
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    return model


def calibration_file(tmp: Path, ids: torch.Tensor) -> Path:
    path = tmp / "cal.safetensors"
    save_file({"input_ids": ids}, str(path))
    return path


def lora_adapter(w, tmp: Path, config: object, rank: int = 2) -> Path:
    """A PEFT-layout LoRA adapter on q_proj of layer 0, with the given adapter_config.json content."""
    adapter = tmp / "adapter"
    adapter.mkdir()
    weight = w.state["model.layers.0.self_attn.q_proj.weight"]
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    factors = {f"{prefix}.lora_A.weight": 0.1 * torch.ones(rank, weight.shape[1]),
               f"{prefix}.lora_B.weight": 0.1 * torch.ones(weight.shape[0], rank)}
    save_file(factors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return adapter


def peft(**changes) -> dict:
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "use_rslora": False,
              "alpha_pattern": {}, "rank_pattern": {}}
    config.update(changes)
    return config


def alignment_with_metadata(tmp: Path, meta: str) -> Path:
    path = tmp / "alignment.safetensors"
    save_file({"map.layers.0.q": torch.eye(4)}, str(path), metadata={"theseus.alignment": meta})
    return path


def transport(w, out: Path, *extra, source=None, target=None, tv=None, method: str = "pad") -> list:
    return ["transport", "--source-base", source or w.src, "--target-base", target or w.tgt,
            "--task-vector", tv or w.tv, "--method", method, *extra, "--out", out]


def prepare(w, out: Path, calibration: Path) -> list:
    return ["prepare", "--source-base", w.src, "--target-base", w.tgt, "--calibration", calibration,
            "--device", "cpu", "--out", out]


def apply(w, out: Path, tv: Path) -> list:
    return ["apply", "--base", w.src, "--task-vector", tv, "--alpha", "1", "--out", out]


# ------------------------------------------------------------------------------------------ cases

# Each case: (w, tmp_path, out) -> (argv, keywords of the error line).
Case = Callable[[SimpleNamespace, Path, Path], tuple[list, tuple[str, ...]]]
F32 = {"dtype": "F32"}


def _header_shape_not_ints(w, tmp, out):
    model = model_with_header(w, tmp, {"a": {**F32, "shape": ["x", -1], "data_offsets": [0, 4]}}, bytes(4))
    return ["inspect", model], ("model.safetensors", "shape", "non-negative integers")


def _header_absurd_shape(w, tmp, out):  # issue item 9: inspect reported 1.2e24 parameters with exit 0
    model = model_with_header(w, tmp, {"a": {**F32, "shape": [10**12, 10**12], "data_offsets": [0, 4]}}, bytes(4))
    return ["inspect", model], ("model.safetensors", "needs more than 2**64 bytes")


def _header_shape_disagrees_with_offsets(w, tmp, out):
    model = model_with_header(w, tmp, {"a": {**F32, "shape": [3], "data_offsets": [0, 8]}}, bytes(8))
    return ["inspect", model], ("model.safetensors", "needs 12 bytes", "span 8")


def _header_unknown_dtype(w, tmp, out):
    model = model_with_header(w, tmp, {"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, bytes(4))
    return ["inspect", model], ("model.safetensors", "unknown dtype")


def _header_overlapping_tensors(w, tmp, out):
    header = {"a": {**F32, "shape": [2], "data_offsets": [0, 8]}, "b": {**F32, "shape": [1], "data_offsets": [4, 8]}}
    return ["inspect", model_with_header(w, tmp, header, bytes(8))], ("model.safetensors", "overlaps")


def _header_bad_shape_in_transport(w, tmp, out):
    model = model_with_header(w, tmp, {"a": {**F32, "shape": ["x", -1], "data_offsets": [0, 4]}}, bytes(4))
    return transport(w, out, target=model), ("model.safetensors", "shape")


def _index_weight_map_is_a_list(w, tmp, out):
    model = model_with_index(w, tmp, {"weight_map": ["model.safetensors"]})
    return ["inspect", model], ("model.safetensors.index.json", "weight_map")


def _index_is_a_list(w, tmp, out):
    return ["inspect", model_with_index(w, tmp, [1, 2])], ("model.safetensors.index.json", "weight_map")


def _index_names_a_file_outside(w, tmp, out):
    model = model_with_index(w, tmp, {"weight_map": {name: "../src/model.safetensors" for name in w.state}})
    return transport(w, out, target=model), ("model.safetensors.index.json", "../src/model.safetensors",
                                                "leaves the directory")


def _index_names_a_missing_shard(w, tmp, out):
    model = model_with_index(w, tmp, {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}})
    return ["inspect", model], ("missing", "model-00002-of-00002.safetensors")


def _index_disagrees_with_shards(w, tmp, out):
    model = model_with_index(w, tmp, {"weight_map": {"no.such.tensor": "model.safetensors"}})
    return ["inspect", model], ("no.such.tensor", "is not in its shard")


def _symlinked_tokenizer_inspect(w, tmp, out):
    model = copy_model(w, tmp)
    (model / "tokenizer.json").symlink_to(w.secret)
    return ["inspect", model], ("tokenizer.json", "symbolic link")


def _symlinked_shard_transport(w, tmp, out):
    model = copy_model(w, tmp)
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").symlink_to(w.src / "model.safetensors")
    return transport(w, out, target=model), ("model.safetensors", "symbolic link")


def _symlinked_tokenizer_apply(w, tmp, out):
    model = copy_model(w, tmp)
    (model / "tokenizer.json").symlink_to(w.secret)
    return ["apply", "--base", model, "--task-vector", w.tv, "--alpha", "1", "--out", out], ("symbolic link",)


def _calibration_without_tokens(w, tmp, out):
    cal = calibration_file(tmp, torch.zeros(4, 0, dtype=torch.long))
    return transport(w, out, "--calibration", cal, "--device", "cpu", method="theseus"), ("input_ids", "[4, 0]")


def _calibration_uint8(w, tmp, out):
    cal = calibration_file(tmp, torch.full((4, 8), 5, dtype=torch.uint8))
    return transport(w, out, "--calibration", cal, "--device", "cpu", method="theseus"), ("input_ids", "uint8")


def _calibration_bool(w, tmp, out):
    return prepare(w, out, calibration_file(tmp, torch.ones(4, 8, dtype=torch.bool))), ("input_ids", "bool")


def _calibration_float_labels(w, tmp, out):
    ids = torch.full((4, 8), 5)
    save_file({"input_ids": ids, "labels": ids.float()}, str(tmp / "cal.safetensors"))
    return prepare(w, out, tmp / "cal.safetensors"), ("labels", "int64")


def _lora_config_is_a_list(w, tmp, out):
    return apply(w, out, lora_adapter(w, tmp, [])), ("adapter_config.json", "JSON object")


def _lora_rank_zero(w, tmp, out):
    return apply(w, out, lora_adapter(w, tmp, peft(r=0))), ("adapter_config.json", "r must be a positive integer")


def _lora_string_alpha(w, tmp, out):
    return apply(w, out, lora_adapter(w, tmp, peft(lora_alpha="16"))), ("lora_alpha", "finite number")


def _lora_infinite_alpha(w, tmp, out):  # issue item 2: wrote an Inf model with exit 0
    adapter = lora_adapter(w, tmp, json.dumps(peft(lora_alpha=1)).replace('"lora_alpha": 1', '"lora_alpha": Infinity'))
    return apply(w, out, adapter), ("lora_alpha", "finite number", "inf")


def _lora_nan_alpha_transport(w, tmp, out):
    adapter = lora_adapter(w, tmp, json.dumps(peft(lora_alpha=1)).replace('"lora_alpha": 1', '"lora_alpha": NaN'))
    return transport(w, out, tv=adapter), ("lora_alpha", "finite number")


def _lora_bad_alpha_pattern(w, tmp, out):
    adapter = lora_adapter(w, tmp, peft(alpha_pattern={"q_proj(": 8}))
    return ["inspect", adapter], ("alpha_pattern", "q_proj(", "not a valid regular expression")


def _lora_bad_rank_pattern(w, tmp, out):
    return apply(w, out, lora_adapter(w, tmp, peft(rank_pattern={"[q": 2}))), ("rank_pattern", "regular expression")


def _lora_rank_disagrees_with_config(w, tmp, out):
    return apply(w, out, lora_adapter(w, tmp, peft(r=8))), ("rank 2", "says 8")


def _alignment_metadata_not_json(w, tmp, out):
    alignment = alignment_with_metadata(tmp, "{not json")
    return transport(w, out, "--alignment", alignment, method="theseus"), ("alignment.safetensors", "not JSON")


def _alignment_map_of_the_wrong_shape(w, tmp, out):  # was: a matmul error midway, exit 1
    from theseus_ops import api
    from theseus_ops.config import CalibrationSpec, PrepareConfig
    from theseus_ops.io.alignment import Alignment

    path = tmp / "edited.alignment"
    prepared = api.prepare(PrepareConfig(str(w.src), str(w.tgt), CalibrationSpec(str(w.cal16)), device="cpu"), path)
    maps = dict(prepared.maps)
    maps["layers.0.mlp_hidden"] = maps["layers.0.mlp_hidden"][:, :-1]  # edited: one column short
    Alignment(maps, prepared.quality, prepared.provenance).save(tmp / "edited-2.alignment")
    return (transport(w, out, "--alignment", tmp / "edited-2.alignment", method="theseus"),
            ("layers.0.mlp_hidden", "space"))


def _alignment_metadata_empty_object(w, tmp, out):
    return ["inspect", alignment_with_metadata(tmp, "{}")], ("alignment.safetensors", "version")


def _alignment_metadata_without_provenance(w, tmp, out):
    meta = json.dumps({"version": "1", "quality": {}, "provenance": {}})
    alignment = alignment_with_metadata(tmp, meta)
    return transport(w, out, "--alignment", alignment, method="theseus"), ("provenance source.sha256",)


def _integer_delta_for_a_float_weight(w, tmp, out):  # was: added to the weights with exit 0
    name = "model.layers.0.mlp.up_proj.weight"
    save_file({name: torch.ones_like(w.state[name], dtype=torch.int64)}, str(tmp / "int_tv.safetensors"))
    return apply(w, out, tmp / "int_tv.safetensors"), (name, "int64 delta", "F32")


def _bool_delta_transport(w, tmp, out):
    name = "model.layers.0.mlp.up_proj.weight"
    save_file({name: torch.ones_like(w.state[name], dtype=torch.bool)}, str(tmp / "bool_tv.safetensors"))
    return transport(w, out, tv=tmp / "bool_tv.safetensors"), (name, "bool delta")


def _labels_past_the_vocabulary_gradfix(w, tmp, out):  # was: IndexError from the loss, exit 1
    ids = torch.full((4, 8), 5)
    labels = torch.full((4, 8), -100)
    labels[:, -1] = 500
    save_file({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels},
              str(tmp / "cal.safetensors"))
    return transport(w, out, "--calibration", tmp / "cal.safetensors", method="gradfix"), ("labels", "vocabulary")


CASES: dict[str, Case] = {
    "header-shape-not-ints": _header_shape_not_ints,
    "header-absurd-shape": _header_absurd_shape,
    "header-shape-disagrees-with-offsets": _header_shape_disagrees_with_offsets,
    "header-unknown-dtype": _header_unknown_dtype,
    "header-overlapping-tensors": _header_overlapping_tensors,
    "header-bad-shape-in-transport": _header_bad_shape_in_transport,
    "index-weight-map-is-a-list": _index_weight_map_is_a_list,
    "index-is-a-list": _index_is_a_list,
    "index-names-a-file-outside": _index_names_a_file_outside,
    "index-names-a-missing-shard": _index_names_a_missing_shard,
    "index-disagrees-with-shards": _index_disagrees_with_shards,
    "symlinked-tokenizer-inspect": _symlinked_tokenizer_inspect,
    "symlinked-shard-transport": _symlinked_shard_transport,
    "symlinked-tokenizer-apply": _symlinked_tokenizer_apply,
    "calibration-without-tokens": _calibration_without_tokens,
    "calibration-uint8": _calibration_uint8,
    "calibration-bool": _calibration_bool,
    "calibration-float-labels": _calibration_float_labels,
    "labels-past-the-vocabulary-gradfix": _labels_past_the_vocabulary_gradfix,
    "lora-config-is-a-list": _lora_config_is_a_list,
    "lora-rank-zero": _lora_rank_zero,
    "lora-string-alpha": _lora_string_alpha,
    "lora-infinite-alpha": _lora_infinite_alpha,
    "lora-nan-alpha-transport": _lora_nan_alpha_transport,
    "lora-bad-alpha-pattern": _lora_bad_alpha_pattern,
    "lora-bad-rank-pattern": _lora_bad_rank_pattern,
    "lora-rank-disagrees-with-config": _lora_rank_disagrees_with_config,
    "integer-delta-for-a-float-weight": _integer_delta_for_a_float_weight,
    "bool-delta-transport": _bool_delta_transport,
    "alignment-metadata-not-json": _alignment_metadata_not_json,
    "alignment-metadata-empty-object": _alignment_metadata_empty_object,
    "alignment-map-of-the-wrong-shape": _alignment_map_of_the_wrong_shape,
    "alignment-metadata-without-provenance": _alignment_metadata_without_provenance,
}


@pytest.mark.parametrize("case", list(CASES))
def test_untrusted_file_is_one_clean_error(w, tmp_path, capsys, case):
    out = tmp_path / "outdir" / "out"  # a file for transport and prepare, a directory for apply
    argv, keywords = CASES[case](w, tmp_path, out)
    rc, err = run(capsys, argv)
    assert_clean_error(rc, err, keywords, None if argv[0] == "inspect" else out)


def test_valid_lora_adapter_still_applies(w, tmp_path, capsys):
    """The checks refuse only bad configs: a well-formed adapter (with patterns) applies with exit 0."""
    config = peft(alpha_pattern={r"layers\.0\.self_attn\.q_proj": 8}, rank_pattern={"q_proj": 2})
    adapter = lora_adapter(w, tmp_path, config)
    out = tmp_path / "applied"
    rc, err = run(capsys, apply(w, out, adapter))
    assert rc == 0, err
    from safetensors.torch import load_file

    got = load_file(str(out / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    base = w.state["model.layers.0.self_attn.q_proj.weight"]
    # delta = (alpha_pattern 8 / r 2) * B A, every entry 0.1 * 0.1 * 2 (rank) = 0.02, times 4
    torch.testing.assert_close(got - base, torch.full_like(base, 0.08), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- evaluate: tokenizer, JSONL


@pytest.fixture(scope="module")
def task_dir(w) -> Path:
    task = w.root / "task"
    task.mkdir()
    for split in ("train", "val", "test"):
        (task / f"{split}.jsonl").write_text(json.dumps({"prompt": "Q: ab\nA: ", "answer": "cd"}) + "\n")
    return task


def test_tokenizer_larger_than_vocabulary(w, tmp_path, task_dir, capsys):
    """The demo's 259-token byte tokenizer beside a 64-token model: was IndexError in the embedding."""
    from theseus_ops.demo.tokenizer import save_tokenizer

    model = copy_model(w, tmp_path)
    save_tokenizer(model)
    rc, err = run(capsys, ["evaluate", "--model", model, "--task", task_dir, "--split", "test"])
    assert_clean_error(rc, err, ("tokenizer has 259 tokens", "vocab_size is 64"), None)


def test_tokenizer_larger_than_vocabulary_in_the_workflow(w, tmp_path):
    """The workflow's own tokenizer loader (calibration and scoring) refuses it too."""
    from theseus_ops.demo.tokenizer import save_tokenizer
    from theseus_ops.workflow.evaluation import load_tokenizer

    model = copy_model(w, tmp_path)
    save_tokenizer(model)
    with pytest.raises(InputError, match="tokenizer has 259 tokens") as info:
        load_tokenizer(model)
    assert "\n" not in str(info.value)


def test_task_jsonl_with_non_utf8_bytes(w, tmp_path, capsys):
    task = tmp_path / "task"
    task.mkdir()
    good = json.dumps({"prompt": "ok", "answer": "ok"}).encode()
    (task / "test.jsonl").write_bytes(good + b'\n{"prompt": "\xff\xfe"}\n')
    model = copy_model(w, tmp_path)
    rc, err = run(capsys, ["evaluate", "--model", model, "--task", task, "--split", "test"])
    assert_clean_error(rc, err, ("test.jsonl:2", "not UTF-8", "0xff"), None)


def test_task_jsonl_line_separator_inside_a_string_is_valid():
    """Lines end at newline only: a raw U+2028 inside a JSON string is part of the string."""
    from theseus_ops.demo.skills import parse_split

    rows = parse_split(json.dumps({"prompt": "a\u2028b\x1cc", "answer": "x"}, ensure_ascii=False).encode() + b"\r\n",
                       "t.jsonl")
    assert rows == [("a\u2028b\x1cc", "x")]


# ------------------------------------------------------------- landing: nothing outside the model


def test_landing_refuses_a_symlinked_tokenizer(w, tmp_path, capsys):
    """Was: the host file a tokenizer.json symlink pointed at was uploaded into the landing zone."""
    model = copy_model(w, tmp_path)
    (model / "tokenizer.json").symlink_to(w.secret)
    zone = tmp_path / "landing"
    rc, err = run(capsys, ["catalog", "land", "--family", "llama-tiny", "--release", "r1", "--model-dir", model,
                           "--landing-url", zone])
    assert_clean_error(rc, err, ("tokenizer.json", "symbolic link"), None)
    uploaded = [p for p in zone.rglob("*") if p.is_file()] if zone.exists() else []
    assert not [p for p in uploaded if SECRET in p.read_text(errors="replace")], uploaded
    assert not (zone / "llama-tiny" / "r1" / "theseus-manifest.json").exists()


def test_landing_refuses_a_symlinked_directory(w, tmp_path):
    from theseus_ops.storage import LocalLandingZone, land_release

    model = copy_model(w, tmp_path)
    (model / "extra").symlink_to(w.secret.parent, target_is_directory=True)
    zone = LocalLandingZone(tmp_path / "landing")
    with pytest.raises(InputError, match="extra is a symbolic link") as info:
        land_release(model, "llama-tiny", "r1", zone)
    assert "\n" not in str(info.value)
    assert zone.children("") == []


def test_hashing_refuses_a_symlinked_shard(w, tmp_path):
    """A ModelInfo whose shard was swapped for a symlink after inspection is not hashed through it."""
    from theseus_ops.io.models import inspect_model_dir
    from theseus_ops.storage import build_manifest

    model = copy_model(w, tmp_path)
    info = inspect_model_dir(model)
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").symlink_to(w.src / "model.safetensors")
    with pytest.raises(InputError, match="symbolic link"):
        info.sha256()
    with pytest.raises(InputError, match="symbolic link"):
        build_manifest(model)


def test_a_regular_model_directory_still_lands_and_reads(w, tmp_path, capsys):
    """The refusals are for links only: the same directory without the link lands and inspects."""
    model = copy_model(w, tmp_path)
    (model / "tokenizer.json").write_text("{}")
    rc, err = run(capsys, ["catalog", "land", "--family", "llama-tiny", "--release", "r1", "--model-dir", model,
                           "--landing-url", tmp_path / "landing"])
    assert rc == 0, err
    landed = list((tmp_path / "landing" / "llama-tiny" / "r1").glob("sha256-*/tokenizer.json"))
    assert [p.read_text() for p in landed] == ["{}"]
    rc, err = run(capsys, ["inspect", model])
    assert rc == 0, err


# ------------------------------------------------------------------------------------ manifests


@pytest.mark.parametrize(("files", "message"), [
    ({"path": "a", "size": 1, "sha256": "0" * 64}, "'files' must be a list"),
    ([{"path": "../etc/passwd", "size": 1, "sha256": "0" * 64}], "leaves the directory"),
    ([{"path": "a", "size": "12", "sha256": "0" * 64}], "size must be a non-negative integer"),
    ([{"path": "a", "size": -1, "sha256": "0" * 64}], "size must be a non-negative integer"),
    ([{"path": "a", "size": True, "sha256": "0" * 64}], "size must be a non-negative integer"),
    ([{"path": 5, "size": 1, "sha256": "0" * 64}], "not a non-empty string"),
    ([{"path": "a", "size": 1, "sha256": "z" * 64}], "sha256 must be 64 lowercase hex digits"),
    ([{"path": "a", "size": 1, "sha256": "0" * 64}] * 2, "listed twice"),
    (["a"], "'files' must be a list of objects"),
])
def test_landed_manifest_of_the_wrong_shape(tmp_path, files, message):
    """A manifest in the zone is untrusted: the wrong types are one error, not a crash or a coerced value."""
    from theseus_ops.storage import LocalLandingZone, download_release

    zone = LocalLandingZone(tmp_path / "landing")
    body = {"format": "theseus.manifest/1", "files": files}
    zone.put_bytes("fam/r1/theseus-manifest.json", json.dumps(body).encode())
    with pytest.raises(InputError, match=r"not a valid manifest|invalid") as info:
        download_release(zone, "fam", "r1", tmp_path / "dest")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "dest").exists()


# ------------------------------------------------------------------------------ calibration vocab


def test_label_ids_outside_the_vocabulary_are_refused(tmp_path):
    """Labels (other than -100) index the LM loss: a label past vocab_size is an IndexError in gradfix."""
    from theseus_ops.io.calibration import check_vocabulary, load_calibration

    ids = torch.randint(3, tiny.VOCAB, (4, 8))
    labels = torch.full_like(ids, -100)
    labels[0, 5] = tiny.VOCAB + 10
    save_file({"input_ids": ids, "labels": labels}, str(tmp_path / "cal.safetensors"))
    cal = load_calibration(tmp_path / "cal.safetensors", "tokens")
    check_vocabulary(cal, tiny.VOCAB + 11, "big-model")  # fits a larger vocabulary
    with pytest.raises(InputError, match=rf"target calibration .*labels span {tiny.VOCAB + 10}\.\.{tiny.VOCAB + 10}, "
                                         rf"outside the vocabulary of {tiny.VOCAB} of model") as info:
        check_vocabulary(cal, tiny.VOCAB, "model", "target")
    assert "\n" not in str(info.value)

"""Property tests of every parser that takes untrusted input.

The property, for each: the parser returns a valid result (checked against its own invariants,
and for safetensors headers against the safetensors library itself), or raises a TheseusError
whose message is one line. Never another exception. Inputs are both arbitrary bytes and
near-valid structures with one field mutated, which is where real files go wrong.
"""

from __future__ import annotations

import json
import math
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from theseus_ops.errors import TheseusError
from theseus_ops.io.alignment import ALIGNMENT_VERSION, parse_metadata
from theseus_ops.io.calibration import load_calibration
from theseus_ops.io.lora_config import LoraAdapterConfig
from theseus_ops.io.models import INDEX_NAME, read_shard_index
from theseus_ops.io.safetensors_header import ITEMSIZE, read_header
from theseus_ops.storage.manifest import Manifest

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_FILES = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_line(exc: BaseException) -> None:
    """A TheseusError with a one-line message; anything else is re-raised so the property fails."""
    if not isinstance(exc, TheseusError):
        raise exc
    message = str(exc)
    assert message, "empty error message"
    assert "\n" not in message and "\r" not in message, message


def outcome(fn, *args, **kwargs):
    """fn(...) or None when it raised a one-line TheseusError."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # the property: only a one-line TheseusError may escape
        one_line(exc)
        return None


# ------------------------------------------------------------------------------------ strategies

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def mutate(valid: dict, key_strategy=None):
    """A valid object with one key replaced by an arbitrary JSON value, removed, or kept."""
    keys = sorted(valid)

    @st.composite
    def build(draw):
        body = dict(valid)
        key = draw(st.sampled_from(keys)) if keys else None
        action = draw(st.sampled_from(["keep", "drop", "replace"]))
        if key is not None and action == "drop":
            body.pop(key)
        elif key is not None and action == "replace":
            body[key] = draw(json_values)
        return body

    return build()


def dumps(value) -> str:
    return json.dumps(value)  # NaN and Infinity are written as JSON tokens, as a careless writer would


# ---------------------------------------------------------------------------- safetensors headers


@st.composite
def header_bytes(draw):
    """A safetensors file: mostly well-formed headers, with dtypes, shapes and offsets drawn freely."""
    count = draw(st.integers(0, 3))
    header: dict = {}
    position = 0
    for i in range(count):
        dtype = draw(st.sampled_from([*ITEMSIZE, "Q7", "F4"]) | json_values)
        shape = draw(st.lists(st.integers(0, 5), max_size=3) | st.lists(st.integers(-2, 2**40), max_size=3)
                     | json_values)
        size = ITEMSIZE.get(dtype, 4) if isinstance(dtype, str) else 4
        nbytes = math.prod(shape) * size if isinstance(shape, list) and all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 6 for d in shape) else 4
        begin = position + draw(st.sampled_from([0, 0, 0, 1, -1]))
        end = begin + nbytes + draw(st.sampled_from([0, 0, 0, 1, -1]))
        offsets = draw(st.sampled_from([[begin, end]]) | json_values)
        header[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        position = max(position, end if isinstance(end, int) else position)
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)
                                      | json_values)
    raw = dumps(header).encode()
    length = len(raw) + draw(st.sampled_from([0, 0, 0, -1, 1, 2**63]))
    data = bytes(max(position + draw(st.sampled_from([0, 0, 0, 1, -1])), 0))
    return struct.pack("<Q", max(length, 0) % 2**64) + raw + data


@FUZZ
@given(blob=header_bytes() | st.binary(max_size=64))
def test_safetensors_header_is_valid_or_one_error(blob):
    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.safetensors"
        path.write_bytes(blob)
        header = outcome(read_header, path)
        if header is None:
            return
        # accepted ⇒ the safetensors library reads the same tensors with the same shapes and dtypes
        with safe_open(str(path), framework="pt") as fh:
            assert sorted(fh.keys()) == sorted(header.tensors)
            for name, entry in header.tensors.items():
                tensor = fh.get_tensor(name)
                assert list(tensor.shape) == list(entry.shape)
                assert tensor.numel() * tensor.element_size() == entry.end - entry.begin
            assert (fh.metadata() or {}) == header.metadata


# ---------------------------------------------------------------------------------- shard indexes


SHARD_NAMES = ["model-1.safetensors", "../x.safetensors", "/etc/x.safetensors", "a/../../b.safetensors",
               "sub/model.safetensors", "model.bin", "", "link.safetensors"]
index_bodies = (mutate({"metadata": {"total_size": 8}, "weight_map": {"a": "model-1.safetensors"}})
                | st.builds(lambda m: {"weight_map": m},
                            st.dictionaries(st.text(max_size=6), st.sampled_from(SHARD_NAMES) | json_values,
                                            max_size=3))
                | json_values)


@FUZZ_FILES
@given(body=index_bodies, raw=st.none() | st.binary(max_size=40))
def test_shard_index_is_valid_or_one_error(body, raw):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "model"
        root.mkdir()
        (Path(tmp) / "x.safetensors").write_bytes(b"outside")
        (root / "link.safetensors").symlink_to(Path(tmp) / "x.safetensors")
        (root / INDEX_NAME).write_bytes(raw if raw is not None else dumps(body).encode())
        mapping = outcome(read_shard_index, root)
        if mapping is None:
            return
        assert isinstance(mapping, dict) and mapping
        real = root.resolve()
        for name, shard in mapping.items():
            assert isinstance(name, str) and isinstance(shard, str) and shard.endswith(".safetensors")
            assert (root / shard).resolve().is_relative_to(real)
            assert not (root / shard).is_symlink()


# ------------------------------------------------------------------------------------ LoRA configs

VALID_LORA = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": False, "use_dora": False,
              "alpha_pattern": {"q_proj": 16}, "rank_pattern": {"v_proj": 2}, "target_modules": ["q_proj"]}
lora_configs = (mutate(VALID_LORA)
                | st.builds(lambda a, r: {**VALID_LORA, "alpha_pattern": a, "rank_pattern": r},
                            st.dictionaries(st.text(max_size=6) | st.sampled_from(["(", "[a", "a{2,1}", r"\\"]),
                                            json_scalars, max_size=2),
                            st.dictionaries(st.text(max_size=6), json_scalars, max_size=2))
                | json_values)


@FUZZ
@given(raw=lora_configs, module=st.sampled_from(["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.v_proj"]))
def test_lora_config_is_valid_or_one_error(raw, module):
    config = outcome(LoraAdapterConfig, raw, "adapter_config.json")
    if config is None:
        return
    rank = config.rank_of(module)
    assert isinstance(rank, int) and rank >= 1
    assert math.isfinite(config.scaling(module, rank))


@FUZZ_FILES
@given(text=st.binary(max_size=40) | lora_configs.map(lambda v: dumps(v).encode()))
def test_lora_adapter_directory_is_valid_or_one_error(text):
    from theseus_ops.io.task_vectors import read_lora_adapter

    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp)
        prefix = "base_model.model.model.layers.0.self_attn.q_proj"
        save_file({f"{prefix}.lora_A.weight": torch.ones(4, 8), f"{prefix}.lora_B.weight": torch.ones(8, 4)},
                  str(adapter / "adapter_model.safetensors"))
        (adapter / "adapter_config.json").write_bytes(text)
        tv = outcome(read_lora_adapter, adapter)
        if tv is None:
            return
        factors = tv.lora["model.layers.0.self_attn.q_proj.weight"]
        assert math.isfinite(factors.scaling)


# ----------------------------------------------------------------------------- alignment metadata

VALID_PROVENANCE = {"source": {"sha256": "a" * 64, "path": "/s"}, "target": {"sha256": "b" * 64, "path": "/t"},
                    "layer_map": {"kind": "identity", "sources": [0, 1]}, "options": {"method": "theseus"}}
VALID_ALIGNMENT = {"version": ALIGNMENT_VERSION, "provenance": VALID_PROVENANCE,
                   "quality": {"layers.0.q": {"residual": 0.1, "underdetermined": False}}}
alignment_texts = (st.text(max_size=40)
                   | mutate(VALID_ALIGNMENT).map(dumps)
                   | st.builds(lambda p: dumps({**VALID_ALIGNMENT, "provenance": p}), mutate(VALID_PROVENANCE))
                   | st.builds(lambda q: dumps({**VALID_ALIGNMENT, "quality": {"s": q}}),
                               mutate({"residual": 0.5, "underdetermined": True}))
                   | json_values.map(dumps))


@FUZZ
@given(text=alignment_texts)
def test_alignment_metadata_is_valid_or_one_error(text):
    data = outcome(parse_metadata, text, "alignment.safetensors")
    if data is None:
        return
    # everything transport and inspect read from it is there, with its type
    prov = data["provenance"]
    assert isinstance(prov["source"]["sha256"], str) and isinstance(prov["layer_map"]["sources"], list)
    assert isinstance(prov["options"]["method"], str)
    for q in data["quality"].values():
        assert isinstance(q["residual"], int | float) and isinstance(q["underdetermined"], bool)
    max((q["residual"] for q in data["quality"].values()), default=None)


# -------------------------------------------------------------------------------------- manifests

VALID_ENTRY = {"path": "config.json", "size": 12, "sha256": "0" * 64}
manifest_texts = (st.binary(max_size=40)
                  | json_values.map(dumps)
                  | mutate({"format": "theseus.manifest/1", "files": [VALID_ENTRY]}).map(dumps)
                  | st.lists(mutate(VALID_ENTRY) | st.builds(
                      lambda p: {**VALID_ENTRY, "path": p},
                      st.text(max_size=12) | st.sampled_from(["../a", "/a", "a/./b", "a//b", "a\nb", "a/b"])),
                      max_size=3).map(lambda files: dumps({"format": "theseus.manifest/1", "files": files})))


@FUZZ
@given(text=manifest_texts)
def test_manifest_is_valid_or_one_error(text):
    manifest = outcome(Manifest.from_json, text, "s3://bucket/fam/r1/theseus-manifest.json")
    if manifest is None:
        return
    paths = [f.path for f in manifest.files]
    assert len(set(paths)) == len(paths)
    for f in manifest.files:
        assert isinstance(f.path, str) and not f.path.startswith("/") and ".." not in f.path.split("/")
        assert isinstance(f.size, int) and f.size >= 0 and len(f.sha256) == 64
    again = Manifest.from_json(manifest.to_json(), "round trip")
    assert again.files == manifest.files and again.digest() == manifest.digest()


# -------------------------------------------------------------------------------------- task JSONL

row = st.fixed_dictionaries({"prompt": st.text(max_size=8), "answer": st.text(max_size=8)})
jsonl_lines = st.lists(row.map(lambda r: json.dumps(r, ensure_ascii=False).encode())
                       | mutate({"prompt": "Q", "answer": "A"}).map(lambda r: dumps(r).encode())
                       | st.binary(max_size=12), max_size=4)


@FUZZ
@given(lines=jsonl_lines, ending=st.sampled_from([b"\n", b"\r\n"]))
def test_task_jsonl_is_valid_or_one_error(lines, ending):
    from theseus_ops.demo.skills import parse_split

    rows = outcome(parse_split, ending.join(lines), "test.jsonl")
    if rows is None:
        return
    assert rows
    assert all(isinstance(p, str) and isinstance(a, str) and p and a for p, a in rows)


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=8),
                                            "answer": st.text(min_size=1, max_size=8)}), min_size=1, max_size=4))
def test_every_valid_task_jsonl_parses(rows):
    """The other direction: any file of valid rows, in any Unicode, reads back exactly."""
    from theseus_ops.demo.skills import parse_split

    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    assert parse_split(data, "t.jsonl") == [(r["prompt"], r["answer"]) for r in rows]


# ------------------------------------------------------------------------------------- calibration

DTYPES = [torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool, torch.float32, torch.float16]


@st.composite
def calibration_sets(draw):
    tensors = {}
    for key in draw(st.lists(st.sampled_from(["input_ids", "attention_mask", "labels", "pixel_values", "extra"]),
                             min_size=1, max_size=3, unique=True)):
        shape = draw(st.lists(st.integers(0, 3), min_size=0, max_size=4))
        dtype = draw(st.sampled_from(DTYPES))
        value = torch.randint(-101, 3, shape).to(dtype) if dtype != torch.bool else torch.zeros(shape, dtype=torch.bool)
        if dtype.is_floating_point and draw(st.booleans()) and value.numel():
            value.view(-1)[0] = float("nan")
        tensors[key] = value
    return tensors


@st.composite
def near_valid_calibration(draw):
    """input_ids [N, L] with a matching mask and maybe labels, each of a drawn dtype."""
    n, length = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    ids = torch.randint(0, 5, (n, length))
    tensors = {"input_ids": ids.to(draw(st.sampled_from(DTYPES)))}
    if draw(st.booleans()):
        tensors["attention_mask"] = torch.ones_like(ids).to(draw(st.sampled_from(DTYPES)))
    if draw(st.booleans()):
        tensors["labels"] = torch.where(ids > 2, ids, -100).to(draw(st.sampled_from(DTYPES)))
    return tensors


@FUZZ_FILES
@given(tensors=calibration_sets() | near_valid_calibration(),
       input_kind=st.sampled_from(["tokens", "tokens", "pixels"]))
def test_calibration_is_valid_or_one_error(tensors, input_kind):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cal.safetensors"
        save_file(tensors, str(path))
        cal = outcome(load_calibration, path, input_kind)
        if cal is None:
            return
        main = cal.tensors["input_ids" if input_kind == "tokens" else "pixel_values"]
        assert main.numel() > 0 and cal.rows >= 1
        if input_kind == "tokens":  # what an embedding lookup and the LM loss accept
            assert main.dtype in (torch.int64, torch.int32) and main.dim() == 2
            mask, labels = cal.tensors.get("attention_mask"), cal.tensors.get("labels")
            assert mask is None or (mask.shape == main.shape and mask.dtype in (torch.int64, torch.int32, torch.bool))
            assert labels is None or (labels.shape == main.shape and labels.dtype == torch.int64)
        else:
            assert main.is_floating_point() and bool(torch.isfinite(main).all())
        assert all(t.dim() >= 1 and t.shape[0] == cal.rows for t in cal.tensors.values())


@pytest.mark.parametrize("blob", [b"", b"\x00" * 8, struct.pack("<Q", 2) + b"[]", struct.pack("<Q", 2**64 - 1)])
def test_header_edge_cases(tmp_path, blob):
    """A few fixed edge cases, so they run even when Hypothesis draws differently."""
    path = tmp_path / "x.safetensors"
    path.write_bytes(blob)
    assert outcome(read_header, path) is None

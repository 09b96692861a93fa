"""Task datasets as an s3:// prefix (moto in server mode) or a datasets.save_to_disk DatasetDict."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import boto3
import pytest

from tests.conftest_servers import free_port, new_bucket, start, stop
from theseus_ops.errors import InputError
from theseus_ops.evaluation.config import CLASSIFICATION, GENERATION, PERPLEXITY
from theseus_ops.evaluation.data import load_classification, load_prompt_answer, read_text
from theseus_ops.workflow.dataset_sources import CHECKSUM_FILE
from theseus_ops.workflow.evaluation import dataset_dir

GEN = {"train": [("2+2=", "4"), ("3+3=", "6")], "val": [("1+1=", "2")], "test": [("5+5=", "10"), ("4+1=", "5")]}
CLS_NAMES = ["sport", "politics", "tech"]
CLS = {"train": [("goal scored", 0), ("election day", 1)], "val": [("new phone", 2)],
       "test": [("match won", 0), ("cpu launch", 2), ("vote counted", 1)]}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto's S3 server with its request log, to count the GETs a download makes."""
    import os

    tmp = tmp_path_factory.mktemp("moto-datasets")
    port = free_port()
    log = tmp / "moto.log"
    exe = Path(sys.executable).parent / "moto_server"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    proc = start([*cmd, "-H", "127.0.0.1", "-p", str(port)], f"http://127.0.0.1:{port}/moto-api/", log, timeout=60)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    yield f"http://127.0.0.1:{port}", log
    stop(proc)


@pytest.fixture
def s3(moto, monkeypatch, tmp_path):
    endpoint, log = moto
    monkeypatch.setenv("THESEUS_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("THESEUS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("THESEUS_RETRY_ATTEMPTS", "1")
    bucket = new_bucket(endpoint)
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1"), bucket, log


def _gen_jsonl(rows) -> str:
    return "".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows)


def _cls_jsonl(rows) -> str:
    return "".join(json.dumps({"text": t, "label": CLS_NAMES[label]}) + "\n" for t, label in rows)


def _upload(client, bucket: str, prefix: str, files: dict[str, bytes], sums: bool = True) -> None:
    if sums:
        files = {**files, CHECKSUM_FILE: "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n"
                                                 for n, d in sorted(files.items())).encode()}
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)


def _gen_files() -> dict[str, bytes]:
    return {**{f"{s}.jsonl": _gen_jsonl(r).encode() for s, r in GEN.items()}, "heldout.txt": b"some held-out text\n"}


def _gets(log: Path, bucket: str) -> int:
    return sum(f'"GET /{bucket}/' in line and "list-type" not in line
               for line in log.read_text(errors="replace").splitlines())


def _cache_entries(tmp_path: Path) -> list[str]:
    root = tmp_path / "cache" / "datasets"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


@pytest.mark.parametrize("sums", [True, False], ids=["sha256sums", "etag"])
def test_s3_prefix_downloads_a_verified_task_dir(s3, tmp_path, sums):
    client, bucket, _log = s3
    _upload(client, bucket, "tasks/math", _gen_files(), sums=sums)
    client.put_object(Bucket=bucket, Key="tasks/math2/train.jsonl", Body=b"not this one")  # a sibling prefix
    path = dataset_dir(f"s3://{bucket}/tasks/math", GENERATION)
    assert path.parent == tmp_path / "cache" / "datasets"
    for split, rows in GEN.items():
        assert load_prompt_answer(path, split) == rows
    assert read_text(path / "heldout.txt") == "some held-out text\n"
    assert _cache_entries(tmp_path) == [path.name]  # no temporary directory left beside it


def test_second_call_reuses_the_cache_without_downloading(s3):
    client, bucket, log = s3
    _upload(client, bucket, "t", _gen_files())
    uri = f"s3://{bucket}/t"
    first = dataset_dir(uri)
    gets = _gets(log, bucket)
    assert gets >= 5  # SHA256SUMS, three splits, heldout.txt
    assert dataset_dir(uri) == first
    assert _gets(log, bucket) == gets  # only the listing went to the server
    # a changed object is a changed listing, hence a new, verified copy
    client.put_object(Bucket=bucket, Key="t/heldout.txt", Body=b"other text\n")
    with pytest.raises(InputError, match=r"heldout\.txt does not match its sha256 in SHA256SUMS"):
        dataset_dir(uri)


def test_tampered_file_is_named_and_nothing_is_cached(s3, tmp_path):
    client, bucket, _log = s3
    _upload(client, bucket, "t", _gen_files())
    client.put_object(Bucket=bucket, Key="t/val.jsonl", Body=_gen_jsonl([("1+1=", "3")]).encode())
    with pytest.raises(InputError, match=r"val\.jsonl does not match its sha256") as err:
        dataset_dir(f"s3://{bucket}/t")
    assert "\n" not in str(err.value)
    assert _cache_entries(tmp_path) == []


def test_files_outside_the_checksum_file_are_refused(s3, tmp_path):
    client, bucket, _log = s3
    _upload(client, bucket, "t", _gen_files())
    client.put_object(Bucket=bucket, Key="t/extra.bin", Body=b"x")
    with pytest.raises(InputError, match=r"extra\.bin is not listed in SHA256SUMS"):
        dataset_dir(f"s3://{bucket}/t")
    assert _cache_entries(tmp_path) == []


def test_s3_input_errors_are_one_line(s3):
    client, bucket, _log = s3
    with pytest.raises(InputError, match="no objects under the prefix"):
        dataset_dir(f"s3://{bucket}/empty")
    with pytest.raises(InputError, match="does not exist"):
        dataset_dir("s3://theseus-no-such-bucket/t")
    _upload(client, bucket, "partial", {"train.jsonl": _gen_jsonl(GEN["train"]).encode()})
    with pytest.raises(InputError, match=r"missing split file\(s\) val\.jsonl, test\.jsonl"):
        dataset_dir(f"s3://{bucket}/partial")
    with pytest.raises(InputError, match=r"without \?query"):
        dataset_dir(f"s3://{bucket}/t?splits=train,validation,test")
    with pytest.raises(InputError, match="only file://DIR and s3://"):
        dataset_dir("gs://bucket/t")


# -- save_to_disk -----------------------------------------------------------------------------------
datasets = pytest.importorskip("datasets")


def _save_cls(root: Path, val_name: str = "validation") -> Path:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=CLS_NAMES)})
    dd = datasets.DatasetDict({
        (val_name if s == "val" else s): datasets.Dataset.from_dict(
            {"text": [t for t, _ in rows], "label": [lab for _, lab in rows]}, features=features)
        for s, rows in CLS.items()})
    dd.save_to_disk(str(root))
    return root


def _save_gen(root: Path, splits=None, columns=("prompt", "answer")) -> Path:
    splits = splits or {"train": "train", "validation": "val", "test": "test"}
    dd = datasets.DatasetDict({
        name: datasets.Dataset.from_dict({c: [r[i] for r in GEN[ours]] for i, c in enumerate(columns)})
        for name, ours in splits.items()})
    dd.save_to_disk(str(root))
    return root


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("THESEUS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("val_name", ["validation", "val"])
def test_save_to_disk_classification_gives_the_jsonl_rows(cache, tmp_path, val_name):
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    for split, rows in CLS.items():
        (jsonl / f"{split}.jsonl").write_text(_cls_jsonl(rows))
    saved = _save_cls(tmp_path / "hf", val_name)
    path = dataset_dir(f"file://{saved}", CLASSIFICATION)
    assert path != saved and path.parent == tmp_path / "cache" / "datasets"
    for split in CLS:
        rows = load_classification(path, split)
        assert rows == load_classification(jsonl, split)
        assert all(isinstance(r.label, str) for r in rows)  # ClassLabel ids became the dataset's names
    assert dataset_dir(f"file://{saved}", CLASSIFICATION) == path  # converted once


def test_save_to_disk_generation_and_perplexity(cache, tmp_path):
    saved = _save_gen(tmp_path / "hf")
    (saved / "heldout.txt").write_text("held out\n")
    path = dataset_dir(f"file://{saved}", GENERATION)
    for split, rows in GEN.items():
        assert load_prompt_answer(path, split) == rows
    assert (path / "heldout.txt").read_text() == "held out\n"
    texts = _save_gen(tmp_path / "lm", columns=("text", "answer"))
    lm = dataset_dir(f"file://{texts}", PERPLEXITY)
    assert read_text(lm / "train.txt") == "2+2=\n3+3=\n"


def test_save_to_disk_text_pairs_keep_plain_labels(cache, tmp_path):
    split = {"text_a": ["a cat", "a dog"], "text_b": ["a feline", "a car"], "label": ["same", "different"]}
    saved = tmp_path / "pairs"
    datasets.DatasetDict({s: datasets.Dataset.from_dict(split) for s in ("train", "val", "test")}).save_to_disk(
        str(saved))
    rows = load_classification(dataset_dir(f"file://{saved}", CLASSIFICATION), "val")
    assert [(r.text, r.text_pair, r.label) for r in rows] == [("a cat", "a feline", "same"),
                                                              ("a dog", "a car", "different")]


def test_save_to_disk_from_an_s3_prefix(s3, tmp_path):
    client, bucket, _log = s3
    saved = _save_cls(tmp_path / "hf")
    files = {str(p.relative_to(saved)): p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    _upload(client, bucket, "hf/news", files)
    path = dataset_dir(f"s3://{bucket}/hf/news", CLASSIFICATION)
    assert [r.label for r in load_classification(path, "test")] == ["sport", "tech", "politics"]


def test_save_to_disk_input_errors_are_one_line(cache, tmp_path):
    no_test = _save_gen(tmp_path / "a", splits={"train": "train", "validation": "val"})
    with pytest.raises(InputError, match=r"has no split test \(splits: train, validation\)") as err:
        dataset_dir(f"file://{no_test}", GENERATION)
    assert "\n" not in str(err.value)
    wrong = _save_gen(tmp_path / "b", columns=("question", "answer"))
    with pytest.raises(InputError, match=r"split train has no column 'prompt' \(columns: question, answer\)"):
        dataset_dir(f"file://{wrong}", GENERATION)
    with pytest.raises(InputError, match="has no column 'text'"):
        dataset_dir(f"file://{wrong}", CLASSIFICATION)
    single = tmp_path / "single"
    datasets.Dataset.from_dict({"prompt": ["a"], "answer": ["b"]}).save_to_disk(str(single))
    (single / "dataset_dict.json").write_text('{"splits": ["train"]}')
    with pytest.raises(InputError, match="a single Dataset, not a DatasetDict"):
        dataset_dir(f"file://{single}", GENERATION)
    assert not (tmp_path / "cache" / "datasets").exists() or not any((tmp_path / "cache" / "datasets").iterdir())


def test_missing_datasets_package_is_one_line(cache, tmp_path, monkeypatch):
    saved = _save_gen(tmp_path / "hf")
    monkeypatch.setitem(sys.modules, "datasets", None)  # what an environment without the package sees
    with pytest.raises(InputError, match="install the 'datasets' package"):
        dataset_dir(f"file://{saved}", GENERATION)

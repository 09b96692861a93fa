"""Task datasets that are not a plain local directory: an ``s3://`` prefix, a ``save_to_disk`` DatasetDict.

Both end as a verified local task directory in the cache (``THESEUS_CACHE_DIR``, default
``~/.cache/theseus-ops``), under ``datasets/<sha256>``; a cache directory only ever appears whole
(built beside its final name, verified, then renamed), so one that exists is reused as it is.

* ``s3://BUCKET/PREFIX``: every object under the prefix is downloaded, keeping its relative path.
  The cache key is the sha256 of the URI and the listing (key, size, ETag of every object), so a
  changed object is a new download. When the prefix holds ``SHA256SUMS`` (``sha256sum`` output:
  ``<hex>  <path>`` per line, paths relative to the prefix), every other object must be listed in it
  and match; without it, each file's size must match the listing, and its MD5 the ETag where the
  ETag is a plain MD5 (not a multipart ``<md5>-<parts>`` one). A mismatch is an InputError naming
  the file. Endpoint, region and retries are the storage zones' own (:class:`StorageConfig.from_env`).
* a ``datasets.save_to_disk`` directory (it holds ``dataset_dict.json``), local or downloaded: its
  splits ``train``, ``validation`` (or ``val``) and ``test`` become ``<split>.jsonl`` files (or
  ``<split>.txt`` for perplexity) with the columns the task kind reads; ``ClassLabel`` labels become
  their names, which the model's ``id2label`` then maps to ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlparse

from theseus_ops.errors import InputError
from theseus_ops.evaluation.config import CLASSIFICATION, GENERATION, PERPLEXITY
from theseus_ops.io.atomic import build_directory_once

__all__ = ["CHECKSUM_FILE", "HELDOUT_FILE", "cache_root", "fetch_s3", "from_save_to_disk", "is_save_to_disk"]

CHECKSUM_FILE = "SHA256SUMS"
DATASET_DICT_FILE = "dataset_dict.json"
HELDOUT_FILE = "heldout.txt"  # the general-capability text of LM tasks, beside the splits
# our split name -> the DatasetDict split names accepted for it, in order of preference
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
_CHUNK = 1024 * 1024


def cache_root() -> Path:
    return Path(os.environ.get("THESEUS_CACHE_DIR") or Path.home() / ".cache" / "theseus-ops").expanduser()


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _file_hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _build_once(final: Path, build) -> Path:
    """``final`` if a verified copy is there, else built by ``build(tmp)`` beside it and renamed."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
    build_directory_once(final, tmp, build)
    return final


# -- s3:// -------------------------------------------------------------------------------------------
def _safe_relative(uri: str, key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InputError(f"dataset {uri}: object key {key!r} cannot be a file path")
    return key


def _parse_sums(uri: str, data: bytes) -> dict[str, str]:
    sums: dict[str, str] = {}
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().removeprefix("*").removeprefix("./")
        if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest) or not name:
            raise InputError(f"dataset {uri}: {CHECKSUM_FILE}:{number} is not '<sha256 hex>  <path>'")
        sums[name] = digest.lower()
    return sums


def fetch_s3(uri: str) -> Path:
    """The verified local copy of every object under an ``s3://`` prefix, downloaded once."""
    from theseus_ops.storage.zones import S3LandingZone, StorageConfig

    parsed = urlparse(uri)
    if not parsed.netloc:
        raise InputError(f"dataset {uri} names no bucket")
    if parsed.query or parsed.fragment:
        raise InputError(f"dataset {uri}: an s3:// dataset is a bare prefix, without ?query or #fragment")
    zone = S3LandingZone(parsed.netloc, parsed.path.strip("/"), StorageConfig.from_env(url=uri))
    listing = zone.objects()
    if not listing:
        raise InputError(f"dataset {uri}: no objects under the prefix")
    for key, _size, _etag in listing:
        _safe_relative(uri, key)
    final = cache_root() / "datasets" / _digest("s3", zone.url, listing)

    def build(tmp: Path) -> None:
        sums = None
        if any(key == CHECKSUM_FILE for key, _, _ in listing):
            zone.get_file(CHECKSUM_FILE, tmp / CHECKSUM_FILE)
            sums = _parse_sums(uri, (tmp / CHECKSUM_FILE).read_bytes())
            keys = {key for key, _, _ in listing}
            absent = sorted(set(sums) - keys)
            if absent:
                raise InputError(f"dataset {uri}: {CHECKSUM_FILE} lists {absent[0]}, which is not under the prefix")
        for key, size, etag in listing:
            if key == CHECKSUM_FILE:
                continue
            if sums is not None and key not in sums:
                raise InputError(f"dataset {uri}: {key} is not listed in {CHECKSUM_FILE}")
            local = tmp / key
            zone.get_file(key, local)
            got = local.stat().st_size
            if got != size:
                raise InputError(f"dataset {uri}: {key} has {got} bytes, the listing says {size}")
            if sums is not None:
                if _file_hash(local, "sha256") != sums[key]:
                    raise InputError(f"dataset {uri}: {key} does not match its sha256 in {CHECKSUM_FILE}")
            elif etag and "-" not in etag and _file_hash(local, "md5") != etag.lower():
                raise InputError(f"dataset {uri}: {key} does not match its ETag {etag} (MD5)")

    return _build_once(final, build)


# -- save_to_disk ------------------------------------------------------------------------------------
def is_save_to_disk(path: Path) -> bool:
    return (path / DATASET_DICT_FILE).is_file()


def _load_dataset_dict(uri: str, path: Path):
    try:
        import datasets
    except ImportError:
        raise InputError(f"dataset {uri} is a datasets.save_to_disk directory: install the 'datasets' package "
                         "(pip install datasets) to read it") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"dataset {uri}: not a readable save_to_disk directory ({str(exc).splitlines()[0]})") \
            from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise InputError(f"dataset {uri}: a single Dataset, not a DatasetDict with train/validation/test splits")
    return datasets, loaded


def _column(uri: str, split: str, ds, name: str) -> list:
    if name not in ds.column_names:
        raise InputError(f"dataset {uri}: split {split} has no column {name!r} (columns: "
                         f"{', '.join(ds.column_names)})")
    return ds[name]


def _strings(uri: str, split: str, ds, name: str) -> list[str]:
    values = _column(uri, split, ds, name)
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v:
            raise InputError(f"dataset {uri}: split {split} row {i}: {name!r} must be a non-empty string, got {v!r}")
    return values


def _labels(uri: str, split: str, ds, datasets_module) -> list[str | int]:
    values = _column(uri, split, ds, "label")
    feature = ds.features["label"]
    names = feature.names if isinstance(feature, datasets_module.ClassLabel) else None
    out: list[str | int] = []
    for i, v in enumerate(values):
        if names is not None and isinstance(v, int) and 0 <= v < len(names):
            out.append(names[v])
        elif isinstance(v, str | int) and not isinstance(v, bool) and v != "":
            out.append(v)
        else:
            raise InputError(f"dataset {uri}: split {split} row {i}: 'label' must be a label name or an integer "
                             f"id, got {v!r}")
    return out


def _rows(uri: str, split: str, ds, task_kind: str, datasets_module) -> list[dict]:
    if task_kind == GENERATION:
        prompts, answers = _strings(uri, split, ds, "prompt"), _strings(uri, split, ds, "answer")
        return [{"prompt": p, "answer": a} for p, a in zip(prompts, answers, strict=True)]
    if "text_a" in ds.column_names or "text_b" in ds.column_names:
        a, b = _strings(uri, split, ds, "text_a"), _strings(uri, split, ds, "text_b")
        labels = _labels(uri, split, ds, datasets_module)
        return [{"text_a": x, "text_b": y, "label": lab} for x, y, lab in zip(a, b, labels, strict=True)]
    texts = _strings(uri, split, ds, "text")
    labels = _labels(uri, split, ds, datasets_module)
    return [{"text": t, "label": lab} for t, lab in zip(texts, labels, strict=True)]


def _tree_listing(path: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in path.rglob("*") if p.is_file())


def from_save_to_disk(uri: str, path: Path, task_kind: str) -> Path:
    """A task directory of split files converted from the ``save_to_disk`` DatasetDict at ``path``."""
    if task_kind not in (GENERATION, CLASSIFICATION, PERPLEXITY):
        raise InputError(f"dataset {uri}: save_to_disk datasets serve generation, classification and perplexity "
                         f"tasks, not {task_kind}")
    path = path.resolve()
    final = cache_root() / "datasets" / _digest("save_to_disk", str(path), task_kind, _tree_listing(path))
    if final.is_dir():
        return final
    datasets_module, loaded = _load_dataset_dict(uri, path)
    chosen = {}
    for split, candidates in SPLIT_NAMES.items():
        name = next((c for c in candidates if c in loaded), None)
        if name is None:
            raise InputError(f"dataset {uri}: the DatasetDict has no split {' or '.join(candidates)} (splits: "
                             f"{', '.join(loaded)})")
        chosen[split] = loaded[name]

    def build(tmp: Path) -> None:
        for split, ds in chosen.items():
            if len(ds) == 0:
                raise InputError(f"dataset {uri}: split {split} is empty")
            if task_kind == PERPLEXITY:
                (tmp / f"{split}.txt").write_text("\n".join(_strings(uri, split, ds, "text")) + "\n", encoding="utf-8")
                continue
            rows = _rows(uri, split, ds, task_kind, datasets_module)
            (tmp / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                 encoding="utf-8")
        if (path / HELDOUT_FILE).is_file():
            shutil.copyfile(path / HELDOUT_FILE, tmp / HELDOUT_FILE)

    return _build_once(final, build)

"""Landing zones: object storage (S3 API, via boto3) or a local directory, behind one interface.

Keys are POSIX paths relative to the zone's root (``s3://bucket/prefix`` or a directory), laid out
as ``<base line>/<release>/<file>``. Every call goes through the bounded retry policy.

``put_bytes_if_absent`` is the one primitive that lets concurrent writers agree on a winner: it
creates the key only if nothing is there, atomically (S3 ``PutObject`` with ``If-None-Match: *``;
a hard link for a directory), and says whether this call created it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlparse

from theseus_ops.errors import InputError
from theseus_ops.io.atomic import replacing, scratch_file
from theseus_ops.retry import RetryPolicy, call_with_retry

Progress = Callable[[str], None]


@dataclass(frozen=True)
class StorageConfig:
    """Where releases land.

    ``url``: ``s3://bucket/prefix`` or a local directory (``file:///path`` or a plain path).
    ``endpoint_url``: an S3-compatible server (RustFS, SeaweedFS, Garage, MinIO); None means AWS.
    Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID``, profiles, instance roles).

    Env defaults (:meth:`from_env`): ``THESEUS_LANDING_URL`` (default ``.theseus/landing``),
    ``THESEUS_S3_ENDPOINT_URL`` (else ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``),
    ``THESEUS_S3_REGION`` (else ``AWS_DEFAULT_REGION``, else us-east-1),
    ``THESEUS_S3_MULTIPART_THRESHOLD_MB`` (64) and ``THESEUS_S3_MULTIPART_CHUNK_MB`` (64).
    """

    url: str = ".theseus/landing"
    endpoint_url: str | None = None
    region: str | None = None
    multipart_threshold: int = 64 * 1024 * 1024
    multipart_chunksize: int = 64 * 1024 * 1024
    max_concurrency: int = 4
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not self.url:
            raise InputError("the landing zone URL is empty")
        if self.multipart_chunksize < 5 * 1024 * 1024:
            raise InputError("S3 multipart chunks must be at least 5 MiB")
        if self.multipart_threshold < 1 or self.max_concurrency < 1:
            raise InputError("multipart threshold and concurrency must be positive")

    @classmethod
    def from_env(cls, **overrides) -> StorageConfig:
        env = os.environ.get
        mb = 1024 * 1024
        values = {
            "url": env("THESEUS_LANDING_URL", ".theseus/landing"),
            "endpoint_url": env("THESEUS_S3_ENDPOINT_URL") or env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL"),
            "region": env("THESEUS_S3_REGION") or env("AWS_DEFAULT_REGION"),
            "multipart_threshold": int(float(env("THESEUS_S3_MULTIPART_THRESHOLD_MB", "64")) * mb),
            "multipart_chunksize": int(float(env("THESEUS_S3_MULTIPART_CHUNK_MB", "64")) * mb),
            "retry": RetryPolicy.from_env(),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@runtime_checkable
class LandingZone(Protocol):
    url: str

    def put_file(self, local: Path, key: str) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` unless it exists, atomically; True when this call created it."""

    def delete(self, key: str) -> None:
        """Remove ``key`` if it exists."""

    def get_file(self, key: str, local: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when it does not exist."""

    def children(self, prefix: str) -> list[str]:
        """Names one level below ``prefix`` (a key ending in '/' or empty), files and folders alike."""


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise InputError(f"invalid landing-zone key {key!r}")
    return key


class LocalLandingZone:
    """The embedded default: a directory with the same layout as the bucket. Writes are atomic."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root.resolve()}"

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _atomic(self, dest: Path, write: Callable[[Path], None]) -> None:
        with replacing(dest, ".part") as tmp:
            write(tmp)

    def put_file(self, local: Path, key: str) -> None:
        self._atomic(self._path(key), lambda tmp: shutil.copyfile(local, tmp))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic(self._path(key), lambda tmp: tmp.write_bytes(data))

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Write a temporary file, then hard-link it to ``key``: ``link`` never replaces an existing
        file, so of concurrent writers exactly one succeeds, and the file appears complete."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with scratch_file(dest, suffix=".part") as name:
            with open(name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(name, dest)
            except FileExistsError:
                return False
            return True

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def get_file(self, key: str, local: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise InputError(f"{self.url}/{key} does not exist")
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, local)

    def get_bytes(self, key: str) -> bytes | None:
        p = self._path(key)
        return p.read_bytes() if p.is_file() else None

    def children(self, prefix: str) -> list[str]:
        d = self.root / prefix if prefix else self.root
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))


class S3LandingZone:
    """A bucket prefix on AWS S3 or any S3-compatible server, through boto3.

    Files above ``multipart_threshold`` go up and down in parallel multipart transfers; an
    interrupted multipart upload never becomes a visible object.
    """

    def __init__(self, bucket: str, prefix: str = "", config: StorageConfig | None = None, client=None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.config = config or StorageConfig(url=f"s3://{bucket}/{prefix}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        cfg = self.config
        self.client = client or boto3.client(
            "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region or "us-east-1",
            # one attempt per boto3 call: the bounded policy below is the one retry loop in force
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                          connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout),
        )
        self.transfer = TransferConfig(multipart_threshold=cfg.multipart_threshold,
                                       multipart_chunksize=cfg.multipart_chunksize,
                                       max_concurrency=cfg.max_concurrency)

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _retry(self, what: str, fn):
        return call_with_retry(fn, f"S3 {what} ({self.config.endpoint_url or 'AWS'})", self.config.retry)

    def put_file(self, local: Path, key: str) -> None:
        self._retry(f"upload of s3://{self.bucket}/{self._key(key)}", lambda: self.client.upload_file(
            str(local), self.bucket, self._key(key), Config=self.transfer))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._retry(f"write of s3://{self.bucket}/{self._key(key)}",
                    lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """``PutObject`` with ``If-None-Match: *``: S3 (and moto, MinIO) refuse it with 412 when the key
        exists. A concurrent conditional write in flight (409) is transient and retried."""
        def put() -> bool:
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            except Exception as exc:
                if _error_code(exc) in ("PreconditionFailed", "412"):
                    return False
                if _error_code(exc) in ("NotImplemented", "501"):
                    raise InputError(f"the S3 server at {self.config.endpoint_url or 'AWS'} does not support "
                                     f"conditional writes (If-None-Match), which single-writer releases "
                                     f"need") from exc
                raise
            return True

        return self._retry(f"conditional write of s3://{self.bucket}/{self._key(key)}", put)

    def delete(self, key: str) -> None:
        self._retry(f"delete of s3://{self.bucket}/{self._key(key)}",
                    lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def get_file(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._retry(f"download of s3://{self.bucket}/{self._key(key)}", lambda: self.client.download_file(
                self.bucket, self._key(key), str(local), Config=self.transfer))
        except Exception as exc:
            if _is_missing(exc):
                raise InputError(f"{self.url}/{key} does not exist") from exc
            raise

    def get_bytes(self, key: str) -> bytes | None:
        def read():
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            except Exception as exc:
                if _is_missing(exc):
                    return None
                raise

        return self._retry(f"read of s3://{self.bucket}/{self._key(key)}", read)

    def children(self, prefix: str) -> list[str]:
        full = self._key(prefix.rstrip("/")) + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")

        def listing():
            names: set[str] = set()
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full, Delimiter="/"):
                names.update(p["Prefix"][len(full):].rstrip("/") for p in page.get("CommonPrefixes", []))
                names.update(o["Key"][len(full):] for o in page.get("Contents", []))
            return sorted(n for n in names if n)

        return self._listing(full, listing)

    def objects(self, prefix: str = "") -> list[tuple[str, int, str]]:
        """Every object below ``prefix`` (a folder key, or empty for the zone's root), recursively:
        (key relative to ``prefix``, size in bytes, ETag without its quotes), sorted by key."""
        full = self._key(prefix.strip("/")) + "/" if prefix.strip("/") else (f"{self.prefix}/" if self.prefix else "")

        def listing():
            found = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                found += [(o["Key"][len(full):], int(o["Size"]), str(o.get("ETag", "")).strip('"'))
                          for o in page.get("Contents", []) if not o["Key"].endswith("/")]
            return sorted(found)

        return self._listing(full, listing)

    def _listing(self, full: str, listing: Callable[[], list]) -> list:
        """A listing below the key prefix ``full``, retried; a bucket that does not exist is an input error."""
        try:
            return self._retry(f"listing of s3://{self.bucket}/{full}", listing)
        except Exception as exc:
            if _is_missing(exc):
                raise InputError(f"bucket {self.bucket} does not exist at {self.config.endpoint_url or 'AWS'}") \
                    from exc
            raise


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _is_missing(exc: BaseException) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


def open_zone(config: StorageConfig | None = None) -> LandingZone:
    """The zone a config names: S3 for ``s3://``, else a local directory."""
    config = config or StorageConfig.from_env()
    parsed = urlparse(config.url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InputError(f"landing URL {config.url} names no bucket")
        return S3LandingZone(parsed.netloc, parsed.path.strip("/"), config)
    if parsed.scheme == "file":
        return LocalLandingZone(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise InputError(f"landing URL scheme {parsed.scheme}:// is not supported (use s3:// or a directory)")
    return LocalLandingZone(config.url)

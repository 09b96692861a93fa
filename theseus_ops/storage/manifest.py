"""Manifests: the list of a release's (or an artifact's) files with their sizes and sha256 sums.

The manifest is what makes a transfer atomic: it is written last, so its presence means every
file it names was written completely, and it is what every download is verified against.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from theseus_ops.errors import InputError
from theseus_ops.io.paths import check_relative_name, iter_model_files, open_regular
from theseus_ops.service_errors import IntegrityError

MANIFEST_NAME = "theseus-manifest.json"
MANIFEST_FORMAT = "theseus.manifest/1"
_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open_regular(Path(path), str(Path(path).parent)) as fh:  # never hashes what a symlink points at
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileEntry:
    path: str  # POSIX path relative to the release (or artifact) root
    size: int
    sha256: str

    def __post_init__(self) -> None:
        check_relative_name(self.path, "manifest entry")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise InputError(f"manifest entry {self.path!r}: size must be a non-negative integer")
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise InputError(f"manifest entry {self.path!r}: sha256 must be 64 lowercase hex digits")


@dataclass(frozen=True)
class Manifest:
    files: tuple[FileEntry, ...]
    meta: dict = field(default_factory=dict)

    def to_json(self) -> str:
        body = {"format": MANIFEST_FORMAT, **self.meta,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files]}
        return json.dumps(body, indent=1, sort_keys=True) + "\n"

    def digest(self) -> str:
        """sha256 of the file list alone (not of ``meta``): equal for equal content."""
        listing = "\n".join(f"{f.sha256}  {f.size}  {f.path}" for f in sorted(self.files, key=lambda f: f.path))
        return hashlib.sha256(listing.encode()).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        try:
            body = json.loads(text)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            if body.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is {str(body.get('format'))[:40]!r}, expected {MANIFEST_FORMAT}")
            listed = body.get("files")
            if not isinstance(listed, list) or not all(isinstance(f, dict) for f in listed):
                raise ValueError("'files' must be a list of objects")
            files = tuple(FileEntry(f.get("path"), f.get("size"), f.get("sha256")) for f in listed)
        except RecursionError:
            raise InputError(f"{where}: not a valid manifest (nested too deeply)") from None
        except InputError as exc:
            raise InputError(f"{where}: invalid {exc}") from None
        except ValueError as exc:
            raise InputError(f"{where}: not a valid manifest ({str(exc).splitlines()[0][:200]})") from exc
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise InputError(f"{where}: invalid manifest (a file is listed twice)")
        meta = {k: v for k, v in body.items() if k not in ("format", "files")}
        return cls(files, meta)


def local_files(root: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every regular file under ``root`` (or ``root`` itself).

    Symlinks and special files inside ``root`` are refused, so nothing outside it is hashed or uploaded.
    """
    if root.is_file():  # a single file the caller named (it may be a symlink the user chose)
        return [(root.name, root.resolve())]
    if not root.is_dir():
        raise InputError(f"{root} does not exist")
    found = [(rel, p) for rel, p in iter_model_files(root) if rel != MANIFEST_NAME]
    if not found:
        raise InputError(f"{root} holds no files")
    return found


def build_manifest(root: str | Path, **meta) -> Manifest:
    """Hash every file under ``root`` (a directory, or a single file)."""
    root = Path(root)
    files = tuple(FileEntry(rel, p.stat().st_size, file_sha256(p)) for rel, p in local_files(root))
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return Manifest(files, {"created": created, **meta})


def verify_local(root: str | Path, manifest: Manifest, where: str, exact: bool = False) -> None:
    """Raise IntegrityError unless ``root`` holds the manifest's files with their sums (and, if
    ``exact``, no other files)."""
    root = Path(root)
    if exact:
        listed = {f.path for f in manifest.files}
        extra = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                       if p.is_file() and p.relative_to(root).as_posix() not in listed)
        if extra:
            raise IntegrityError(f"{where}: {extra[0]} is not in the manifest")
    for f in manifest.files:
        p = root / f.path
        if not p.is_file():
            raise IntegrityError(f"{where}: {f.path} is missing")
        size = p.stat().st_size
        if size != f.size:
            raise IntegrityError(f"{where}: {f.path} has {size} bytes, the manifest says {f.size}")
        got = file_sha256(p)
        if got != f.sha256:
            raise IntegrityError(f"{where}: checksum mismatch for {f.path} (sha256 {got[:12]}…, "
                                 f"manifest {f.sha256[:12]}…)")

"""Manifests: the list of a release's (or an artifact's) files with their sizes and sha256 sums.

The manifest is what makes a transfer atomic: it is written last, so its presence means every
file it names was written completely, and it is what every download is verified against.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from theseus_ops.errors import InputError
from theseus_ops.service_errors import IntegrityError

MANIFEST_NAME = "theseus-manifest.json"
MANIFEST_FORMAT = "theseus.manifest/1"
_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    path: str  # POSIX path relative to the release (or artifact) root
    size: int
    sha256: str


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
            if body.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is {body.get('format')!r}, expected {MANIFEST_FORMAT}")
            files = tuple(FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in body["files"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{where}: not a valid manifest ({exc})") from exc
        for f in files:
            if f.path.startswith("/") or ".." in f.path.split("/") or len(f.sha256) != 64:
                raise InputError(f"{where}: invalid manifest entry {f.path!r}")
        meta = {k: v for k, v in body.items() if k not in ("format", "files")}
        return cls(files, meta)


def local_files(root: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, absolute path) of every regular file under ``root`` (or ``root`` itself)."""
    if root.is_file():
        return [(root.name, root)]
    if not root.is_dir():
        raise InputError(f"{root} does not exist")
    found = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink() and not p.exists():
            raise InputError(f"{p} is a broken symbolic link")
        if p.is_file() and rel != MANIFEST_NAME:
            found.append((rel, p))
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

"""Base releases in the landing zone: ``<base line>/<release>/`` plus a manifest written last.

A release counts as landed once ``<base line>/<release>/theseus-manifest.json`` exists; files
without a manifest are an upload in progress (or an interrupted one) and are ignored.

Releases are immutable and have a single writer. ``land_release`` uploads the files under a
folder named by their content hash, ``<base line>/<release>/sha256-<digest>/``, and then commits
the release by creating its manifest with one conditional write (``put_bytes_if_absent``). Of
concurrent writers exactly one creates the manifest; the others find it there: with the same
content they report ``created=False``, with other content they get :class:`ConflictError`
naming the content hash that is there. Writers of different content never write the same key,
so a committed release cannot be corrupted by a concurrent one. The manifest records the folder
(``content_root``); a manifest without one (written by another tool) has the files beside it.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from theseus_ops.errors import InputError
from theseus_ops.io.atomic import promote, staging_directory
from theseus_ops.service_errors import CatalogError, ConflictError
from theseus_ops.storage.manifest import MANIFEST_NAME, Manifest, build_manifest, local_files, verify_local
from theseus_ops.storage.zones import LandingZone, open_zone

log = logging.getLogger("theseus_ops")
# The wire name of a base line (the registered model whose versions are a model's base releases) in
# manifests and every JSON the workflow writes or passes on (XCom, records, the releases view, Asset
# events, DAG Params, the webhook's answer): "family", as it always was. Read and written through this.
BASE_LINE_KEY = "family"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InputError(f"{what} {value!r} is not a valid name (letters, digits, '.', '_', '+', '-'; "
                         f"no slashes)")
    return value


@dataclass(frozen=True)
class LandedRelease:
    """A committed release; ``created`` is set by :func:`land_release` only (True for the one writer that won)."""

    base_line: str
    release: str
    manifest: Manifest
    url: str
    created: bool | None = None

    def file_key(self, path: str) -> str:
        """The zone key of one of the release's files."""
        root = self.manifest.meta.get(CONTENT_ROOT)
        return f"{self.base_line}/{self.release}/{root}/{path}" if root else f"{self.base_line}/{self.release}/{path}"

    def as_dict(self) -> dict:
        out = {BASE_LINE_KEY: self.base_line, "release": self.release, "url": self.url,
               "files": len(self.manifest.files), "bytes": self.manifest.total_bytes,
               "content_sha256": self.manifest.digest()}
        if self.created is not None:
            out["created"] = self.created
        return out


CONTENT_ROOT = "content_root"  # manifest field: the folder, below the release, that holds its files
LANDING_ID = "landing_id"  # manifest field: unique per land_release call, to recognise one's own commit


def content_root(manifest: Manifest) -> str:
    return f"sha256-{manifest.digest()}"


class BaseRegistry(Protocol):
    """What the scan needs from a catalog: whether a base line's release is already registered."""

    def base_release_registered(self, base_line: str, release: str) -> bool: ...


def _manifest_key(base_line: str, release: str) -> str:
    return f"{base_line}/{release}/{MANIFEST_NAME}"


def read_landed(zone: LandingZone, base_line: str, release: str) -> LandedRelease | None:
    """The landed release, or None if its manifest is not (yet) there."""
    raw = zone.get_bytes(_manifest_key(base_line, release))
    if raw is None:
        return None
    where = f"{zone.url}/{_manifest_key(base_line, release)}"
    manifest = Manifest.from_json(raw, where)
    root = manifest.meta.get(CONTENT_ROOT)
    if root is not None and root != content_root(manifest):
        raise InputError(f"{where}: {CONTENT_ROOT} {root!r} does not match the files it lists")
    return LandedRelease(base_line, release, manifest, f"{zone.url}/{base_line}/{release}")


def land_release(local_dir: str | Path, base_line: str, release: str, zone: LandingZone | None = None,
                 progress: Callable[[str], None] | None = None) -> LandedRelease:
    """Upload a model directory as ``<base line>/<release>/``, the manifest last, as its single writer.

    Idempotent: landing the same content again is a no-op (``created=False``); other content
    under a landed release is refused with :class:`ConflictError` (releases are immutable), also
    when the other writer is running at the same moment (see the module docstring).
    """
    check_name(base_line, "family")  # the word users type: --family, the Param
    check_name(release, "release")
    zone = zone or open_zone()
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise InputError(f"{local_dir} is not a directory")
    built = build_manifest(local_dir, **{BASE_LINE_KEY: base_line, "release": release})
    root = content_root(built)
    manifest = Manifest(built.files, {**built.meta, CONTENT_ROOT: root, LANDING_ID: uuid.uuid4().hex})
    existing = read_landed(zone, base_line, release)
    if existing is not None:
        return _landed_already(existing, manifest)
    staged = []
    for rel, path in local_files(local_dir):
        staged.append(f"{base_line}/{release}/{root}/{rel}")
        zone.put_file(path, staged[-1])
        if progress:
            progress(rel)
    if zone.put_bytes_if_absent(_manifest_key(base_line, release), manifest.to_json().encode()):
        log.info("landed %s/%s: %d files, %d bytes", base_line, release, len(manifest.files), manifest.total_bytes)
        return LandedRelease(base_line, release, manifest, f"{zone.url}/{base_line}/{release}", created=True)
    existing = read_landed(zone, base_line, release)
    if existing is None:  # pragma: no cover - a committed manifest is never removed by theseus-ops
        raise CatalogError(f"{zone.url}/{base_line}/{release}: the manifest disappeared while landing")
    if existing.manifest.meta.get(LANDING_ID) == manifest.meta[LANDING_ID]:
        return LandedRelease(base_line, release, existing.manifest, existing.url, created=True)  # a retried commit
    try:
        return _landed_already(existing, manifest)
    except ConflictError:
        _discard(zone, staged)  # nothing refers to our folder: the release holds other content
        raise


def _landed_already(existing: LandedRelease, manifest: Manifest) -> LandedRelease:
    """The landed release if it holds ``manifest``'s content (``created=False``), else ConflictError."""
    if existing.manifest.digest() == manifest.digest():
        log.info("%s/%s is already landed with the same content", existing.base_line, existing.release)
        return LandedRelease(existing.base_line, existing.release, existing.manifest, existing.url, created=False)
    raise ConflictError(f"{existing.url} is already landed with other content (content sha256 "
                        f"{existing.manifest.digest()}, this directory has {manifest.digest()}); releases are "
                        f"immutable, land it under a new release name")


def _discard(zone: LandingZone, keys: list[str]) -> None:
    try:
        for key in keys:
            zone.delete(key)
    except Exception as exc:  # best effort: the conflict is what the caller must hear about
        log.warning("could not remove the staged files of a refused landing (%s)", exc)


def list_landed_releases(zone: LandingZone) -> list[LandedRelease]:
    """Every complete release in the zone; folders without a manifest, or with a corrupt one, are skipped."""
    found = []
    for base_line in zone.children(""):
        if not _NAME.match(base_line):
            continue
        for release in zone.children(f"{base_line}/"):
            if not _NAME.match(release):
                continue
            try:
                landed = read_landed(zone, base_line, release)
            except InputError as exc:
                log.warning("skipping %s/%s: %s", base_line, release, exc)
                continue
            if landed is None:
                log.info("skipping %s/%s: no manifest yet (upload incomplete)", base_line, release)
                continue
            found.append(landed)
    return found


def scan_landed_releases(zone: LandingZone | None = None, catalog: BaseRegistry | None = None) -> list[LandedRelease]:
    """Releases that are complete in the zone and not yet registered in the catalog."""
    zone = zone or open_zone()
    landed = list_landed_releases(zone)
    if catalog is None:
        return landed
    return [r for r in landed if not catalog.base_release_registered(r.base_line, r.release)]


def download_release(zone: LandingZone, base_line: str, release: str, dest: str | Path) -> Path:
    """Download a landed release into ``dest`` and verify every file's sha256; atomic on success."""
    check_name(base_line, "family")
    check_name(release, "release")
    landed = read_landed(zone, base_line, release)
    if landed is None:
        raise InputError(f"{zone.url}/{base_line}/{release} has not landed (no {MANIFEST_NAME})")
    dest = Path(dest)
    with staging_directory(dest) as tmp:
        for f in landed.manifest.files:
            zone.get_file(landed.file_key(f.path), tmp / f.path)
        verify_local(tmp, landed.manifest, landed.url)
        promote(tmp, dest)
    return dest

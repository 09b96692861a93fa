"""Base releases in the landing zone: ``<family>/<release>/`` plus a manifest written last.

A release counts as landed once ``<family>/<release>/theseus-manifest.json`` exists; files
without a manifest are an upload in progress (or an interrupted one) and are ignored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from theseus_ops.errors import InputError
from theseus_ops.io.atomic import promote, staging_directory
from theseus_ops.service_errors import CatalogError
from theseus_ops.storage.manifest import MANIFEST_NAME, Manifest, build_manifest, local_files, verify_local
from theseus_ops.storage.zones import LandingZone, open_zone

log = logging.getLogger("theseus_ops")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InputError(f"{what} {value!r} is not a valid name (letters, digits, '.', '_', '+', '-'; "
                         f"no slashes)")
    return value


@dataclass(frozen=True)
class LandedRelease:
    family: str
    release: str
    manifest: Manifest
    url: str

    def as_dict(self) -> dict:
        return {"family": self.family, "release": self.release, "url": self.url, "files": len(self.manifest.files),
                "bytes": self.manifest.total_bytes, "content_sha256": self.manifest.digest()}


class BaseRegistry(Protocol):
    """What the scan needs from a catalog: whether a family's release is already registered."""

    def base_release_registered(self, family: str, release: str) -> bool: ...


def _manifest_key(family: str, release: str) -> str:
    return f"{family}/{release}/{MANIFEST_NAME}"


def read_landed(zone: LandingZone, family: str, release: str) -> LandedRelease | None:
    """The landed release, or None if its manifest is not (yet) there."""
    raw = zone.get_bytes(_manifest_key(family, release))
    if raw is None:
        return None
    manifest = Manifest.from_json(raw, f"{zone.url}/{_manifest_key(family, release)}")
    return LandedRelease(family, release, manifest, f"{zone.url}/{family}/{release}")


def land_release(local_dir: str | Path, family: str, release: str, zone: LandingZone | None = None,
                 progress: Callable[[str], None] | None = None) -> LandedRelease:
    """Upload a model directory as ``<family>/<release>/``, the manifest last.

    Idempotent: landing the same content again is a no-op; different content under a landed
    release is refused (releases are immutable).
    """
    check_name(family, "family")
    check_name(release, "release")
    zone = zone or open_zone()
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise InputError(f"{local_dir} is not a directory")
    manifest = build_manifest(local_dir, family=family, release=release)
    existing = read_landed(zone, family, release)
    if existing is not None:
        if existing.manifest.digest() == manifest.digest():
            log.info("%s/%s is already landed with the same content", family, release)
            return existing
        raise CatalogError(f"{existing.url} is already landed with other content; releases are immutable, "
                           f"land it under a new release name")
    for rel, path in local_files(local_dir):
        zone.put_file(path, f"{family}/{release}/{rel}")
        if progress:
            progress(rel)
    zone.put_bytes(_manifest_key(family, release), manifest.to_json().encode())
    log.info("landed %s/%s: %d files, %d bytes", family, release, len(manifest.files), manifest.total_bytes)
    return LandedRelease(family, release, manifest, f"{zone.url}/{family}/{release}")


def list_landed_releases(zone: LandingZone) -> list[LandedRelease]:
    """Every complete release in the zone; folders without a manifest, or with a corrupt one, are skipped."""
    found = []
    for family in zone.children(""):
        if not _NAME.match(family):
            continue
        for release in zone.children(f"{family}/"):
            if not _NAME.match(release):
                continue
            try:
                landed = read_landed(zone, family, release)
            except InputError as exc:
                log.warning("skipping %s/%s: %s", family, release, exc)
                continue
            if landed is None:
                log.info("skipping %s/%s: no manifest yet (upload incomplete)", family, release)
                continue
            found.append(landed)
    return found


def scan_landed_releases(zone: LandingZone | None = None, catalog: BaseRegistry | None = None) -> list[LandedRelease]:
    """Releases that are complete in the zone and not yet registered in the catalog."""
    zone = zone or open_zone()
    landed = list_landed_releases(zone)
    if catalog is None:
        return landed
    return [r for r in landed if not catalog.base_release_registered(r.family, r.release)]


def download_release(zone: LandingZone, family: str, release: str, dest: str | Path) -> Path:
    """Download a landed release into ``dest`` and verify every file's sha256; atomic on success."""
    check_name(family, "family")
    check_name(release, "release")
    landed = read_landed(zone, family, release)
    if landed is None:
        raise InputError(f"{zone.url}/{family}/{release} has not landed (no {MANIFEST_NAME})")
    dest = Path(dest)
    with staging_directory(dest) as tmp:
        for f in landed.manifest.files:
            zone.get_file(f"{family}/{release}/{f.path}", tmp / f.path)
        verify_local(tmp, landed.manifest, landed.url)
        promote(tmp, dest)
    return dest

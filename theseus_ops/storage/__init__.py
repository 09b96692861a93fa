"""The landing zone where new base releases arrive: S3-compatible object storage or a local directory."""

from theseus_ops.storage.manifest import MANIFEST_NAME, FileEntry, Manifest, build_manifest, file_sha256, verify_local
from theseus_ops.storage.releases import (
    BASE_LINE_KEY,
    LandedRelease,
    download_release,
    land_release,
    list_landed_releases,
    read_landed,
    scan_landed_releases,
)
from theseus_ops.storage.zones import LandingZone, LocalLandingZone, S3LandingZone, StorageConfig, open_zone

__all__ = [
    "BASE_LINE_KEY",
    "MANIFEST_NAME",
    "FileEntry",
    "LandedRelease",
    "LandingZone",
    "LocalLandingZone",
    "Manifest",
    "S3LandingZone",
    "StorageConfig",
    "build_manifest",
    "download_release",
    "file_sha256",
    "land_release",
    "list_landed_releases",
    "open_zone",
    "read_landed",
    "scan_landed_releases",
    "verify_local",
]

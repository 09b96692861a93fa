"""The landing zone against moto's S3 server (over HTTP with boto3) and the local-directory zone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import boto3
import pytest

from tests.conftest_servers import closed_port, free_port, moto_endpoint, new_bucket, start, stop  # noqa: F401
from theseus_ops.errors import InputError
from theseus_ops.retry import RetryPolicy, call_with_retry, is_transient
from theseus_ops.service_errors import CatalogError, ConflictError, IntegrityError, ServiceUnavailableError
from theseus_ops.storage import (
    MANIFEST_NAME,
    LocalLandingZone,
    S3LandingZone,
    StorageConfig,
    download_release,
    file_sha256,
    land_release,
    list_landed_releases,
    open_zone,
    scan_landed_releases,
)

FAST = RetryPolicy(attempts=2, base_delay=0.05)


def release_dir(path: Path, seed: int = 0, big: int = 0) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(f'{{"seed": {seed}}}')
    (path / "sub").mkdir()
    (path / "sub" / "weights.bin").write_bytes(bytes(range(256)) * (4 + seed))
    if big:
        (path / "big.bin").write_bytes(b"\x01" * big)
    return path


@pytest.fixture(params=["s3", "local"])
def zone(request, tmp_path):
    if request.param == "local":
        return LocalLandingZone(tmp_path / "landing")
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = new_bucket(endpoint)
    return open_zone(StorageConfig(url=f"s3://{bucket}/landing/zone", endpoint_url=endpoint, retry=FAST))


class FakeCatalog:
    """Stands in for the registry's one question here (the real one is exercised in test_catalog)."""

    def __init__(self, registered: set[tuple[str, str]]):
        self.registered = registered

    def base_release_registered(self, base_line: str, release: str) -> bool:
        return (base_line, release) in self.registered


def test_land_scan_download_roundtrip(zone, tmp_path):
    src = release_dir(tmp_path / "src")
    landed = land_release(src, "llama-tiny", "r1", zone)
    assert {f.path for f in landed.manifest.files} == {"config.json", "sub/weights.bin"}
    land_release(release_dir(tmp_path / "src2", seed=1), "llama-tiny", "r2", zone)
    found = scan_landed_releases(zone)
    assert [(r.base_line, r.release) for r in found] == [("llama-tiny", "r1"), ("llama-tiny", "r2")]
    assert [r.release for r in scan_landed_releases(zone, FakeCatalog({("llama-tiny", "r1")}))] == ["r2"]
    out = download_release(zone, "llama-tiny", "r1", tmp_path / "out")
    assert file_sha256(out / "sub" / "weights.bin") == file_sha256(src / "sub" / "weights.bin")
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["config.json", "weights.bin"]


def test_relanding_is_idempotent_and_releases_are_immutable(zone, tmp_path):
    first = land_release(release_dir(tmp_path / "a"), "fam", "r1", zone)
    again = land_release(release_dir(tmp_path / "b"), "fam", "r1", zone)  # same bytes, other directory
    assert again.manifest.digest() == first.manifest.digest()
    assert (first.created, again.created) == (True, False)
    with pytest.raises(CatalogError, match="already landed with other content"):
        land_release(release_dir(tmp_path / "c", seed=3), "fam", "r1", zone)
    with pytest.raises(ConflictError, match=f"content sha256 {first.manifest.digest()}"):
        land_release(release_dir(tmp_path / "d", seed=4), "fam", "r1", zone)


def test_missing_manifest_is_ignored_by_the_scan(zone, tmp_path):
    src = release_dir(tmp_path / "src")
    zone.put_file(src / "config.json", "fam/half-uploaded/config.json")  # files, but no manifest
    land_release(release_dir(tmp_path / "ok"), "fam", "done", zone)
    assert [r.release for r in list_landed_releases(zone)] == ["done"]
    with pytest.raises(InputError, match="has not landed"):
        download_release(zone, "fam", "half-uploaded", tmp_path / "out")


def test_corrupt_manifest_is_skipped(zone, tmp_path):
    zone.put_bytes("fam/broken/" + MANIFEST_NAME, b"{not json")
    land_release(release_dir(tmp_path / "ok"), "fam", "good", zone)
    assert [r.release for r in list_landed_releases(zone)] == ["good"]


def test_interrupted_upload_is_invisible(zone, tmp_path):
    src = release_dir(tmp_path / "src")

    def interrupt(rel: str) -> None:
        raise KeyboardInterrupt  # the process is stopped after the first file went up

    with pytest.raises(KeyboardInterrupt):
        land_release(src, "fam", "r1", zone, progress=interrupt)
    assert zone.children("fam/r1/")  # something was uploaded...
    assert scan_landed_releases(zone) == []  # ...but no release is visible
    land_release(src, "fam", "r1", zone)  # a re-run completes it
    assert [r.release for r in scan_landed_releases(zone)] == ["r1"]


def test_checksum_mismatch_on_download(zone, tmp_path):
    landed = land_release(release_dir(tmp_path / "src"), "fam", "r1", zone)
    tampered = tmp_path / "tampered.bin"
    tampered.write_bytes(b"\x00" * (256 * 4))  # same size, other bytes
    zone.put_file(tampered, landed.file_key("sub/weights.bin"))
    with pytest.raises(IntegrityError, match=r"checksum mismatch for sub/weights\.bin"):
        download_release(zone, "fam", "r1", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-downloaded is left behind


def test_release_written_by_another_tool_has_its_files_beside_the_manifest(zone, tmp_path):
    """A manifest without ``content_root`` (an upload by hand, or by an older theseus-ops) still reads."""
    from theseus_ops.storage import build_manifest

    src = release_dir(tmp_path / "src")
    for rel in ("config.json", "sub/weights.bin"):
        zone.put_file(src / rel, f"fam/byhand/{rel}")
    zone.put_bytes(f"fam/byhand/{MANIFEST_NAME}", build_manifest(src).to_json().encode())
    out = download_release(zone, "fam", "byhand", tmp_path / "out")
    assert file_sha256(out / "sub" / "weights.bin") == file_sha256(src / "sub" / "weights.bin")
    assert land_release(src, "fam", "byhand", zone).created is False  # same content: a no-op
    tampered = tmp_path / "tampered.bin"
    tampered.write_bytes(b"\x00" * (256 * 4))
    zone.put_file(tampered, "fam/byhand/sub/weights.bin")
    with pytest.raises(IntegrityError, match=r"checksum mismatch for sub/weights\.bin"):
        download_release(zone, "fam", "byhand", tmp_path / "out2")


def test_a_manifest_whose_content_root_does_not_match_is_refused(zone, tmp_path):
    import json

    landed = land_release(release_dir(tmp_path / "src"), "fam", "r1", zone)
    assert landed.created is True
    body = json.loads(zone.get_bytes(f"fam/r1/{MANIFEST_NAME}"))
    body["content_root"] = "sha256-" + "0" * 64
    zone.put_bytes(f"fam/r1/{MANIFEST_NAME}", json.dumps(body).encode())
    with pytest.raises(InputError, match=r"content_root .* does not match the files it lists"):
        download_release(zone, "fam", "r1", tmp_path / "out")
    assert list_landed_releases(zone) == []  # skipped by the scan, like any invalid manifest


def test_bad_names_are_refused(zone, tmp_path):
    with pytest.raises(InputError, match="family"):
        land_release(release_dir(tmp_path / "src"), "../etc", "r1", zone)
    with pytest.raises(InputError, match="not a directory"):
        land_release(tmp_path / "missing", "fam", "r1", zone)


def test_large_files_use_multipart_transfers(moto_endpoint, tmp_path):  # noqa: F811
    bucket = new_bucket(moto_endpoint)
    mib = 1024 * 1024
    cfg = StorageConfig(url=f"s3://{bucket}/lz", endpoint_url=moto_endpoint, multipart_threshold=5 * mib,
                        multipart_chunksize=5 * mib, max_concurrency=2, retry=FAST)
    zone = open_zone(cfg)
    assert isinstance(zone, S3LandingZone)
    src = release_dir(tmp_path / "src", big=11 * mib)
    landed = land_release(src, "fam", "big", zone)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    etag = s3.head_object(Bucket=bucket, Key=f"lz/{landed.file_key('big.bin')}")["ETag"].strip('"')
    assert etag.endswith("-3")  # 11 MiB in 5 MiB parts: a three-part multipart upload
    assert "-" not in s3.head_object(Bucket=bucket, Key=f"lz/{landed.file_key('config.json')}")["ETag"]
    out = download_release(zone, "fam", "big", tmp_path / "out")
    assert file_sha256(out / "big.bin") == file_sha256(src / "big.bin")


def test_s3_unreachable_gives_a_clear_error(tmp_path):
    cfg = StorageConfig(url="s3://bucket/p", endpoint_url=f"http://127.0.0.1:{closed_port()}", connect_timeout=1,
                        retry=RetryPolicy(attempts=3, base_delay=0.05))
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match=r"S3 .*unreachable after 3 attempt"):
        scan_landed_releases(open_zone(cfg))
    assert time.monotonic() - started < 20


def test_s3_transient_outage_is_retried(tmp_path):
    """The S3 server comes up only while the client is already retrying; the call then succeeds."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    box = {}

    def late_start():
        time.sleep(1.0)
        import sys

        box["proc"] = start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            f"{endpoint}/moto-api/", tmp_path / "moto.log", timeout=60)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="late")

    thread = threading.Thread(target=late_start)
    thread.start()
    try:
        zone = open_zone(StorageConfig(url="s3://late/x", endpoint_url=endpoint, connect_timeout=1,
                                       retry=RetryPolicy(attempts=12, base_delay=0.5, factor=1.5, max_delay=3)))
        attempts = []

        def list_buckets():
            attempts.append(1)
            return zone.client.list_buckets()["Buckets"]

        call_with_retry(list_buckets, "S3 listing", zone.config.retry)
        assert len(attempts) > 1  # refused at first, retried, then answered
        thread.join()
        land_release(release_dir(tmp_path / "src"), "fam", "r1", zone)
        assert [r.release for r in scan_landed_releases(zone)] == ["r1"]
    finally:
        thread.join()
        if "proc" in box:
            stop(box["proc"])


def test_nontransient_errors_are_not_retried():
    calls = []

    def fail():
        calls.append(1)
        raise InputError("bad input")

    with pytest.raises(InputError):
        call_with_retry(fail, "thing", RetryPolicy(attempts=5, base_delay=0))
    assert len(calls) == 1
    assert is_transient(ConnectionRefusedError()) and not is_transient(ValueError())


def test_local_zone_is_the_embedded_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("THESEUS_LANDING_URL", raising=False)
    zone = open_zone(StorageConfig.from_env())
    assert isinstance(zone, LocalLandingZone)
    land_release(release_dir(tmp_path / "src"), "fam", "r1", zone)
    assert (tmp_path / ".theseus" / "landing" / "fam" / "r1" / MANIFEST_NAME).is_file()
    assert isinstance(open_zone(StorageConfig(url=(tmp_path / "x").as_uri())), LocalLandingZone)
    with pytest.raises(InputError, match="not supported"):
        open_zone(StorageConfig(url="gs://bucket/x"))

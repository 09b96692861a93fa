"""Races on every registry and landing write: N writers, one entry, the same and different content.

Against the real servers (``mlflow server`` on SQLite and PostgreSQL, moto's S3 in server mode)
and the local-directory zone. Each writer waits at a barrier after its own "is it there yet?"
check and its first upload, so all of them pass that check before any of them commits: every run
races at the commit itself. The promise: exactly one writer wins (``created=True``); a writer of
the winner's content gets ``created=False``; a writer of other content gets ``ConflictError``
naming the content hash that is there; the registry holds one version, and a landed release
downloads and verifies with the winner's bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.catalog_support import make_base, make_delta
from tests.conftest_servers import (  # noqa: F401 - fixtures
    BIN,
    mlflow_postgres,
    mlflow_server,
    mlflow_sqlite,
    moto_endpoint,
    new_bucket,
)
from theseus_ops.catalog import (
    Catalog,
    CatalogConfig,
    Evaluation,
    GateConfig,
    register_base,
    register_task_vector,
    register_transported_model,
    register_transported_vector,
)
from theseus_ops.io.models import inspect_model_dir
from theseus_ops.retry import RetryPolicy
from theseus_ops.service_errors import ConflictError
from theseus_ops.storage import (
    MANIFEST_NAME,
    LandedRelease,
    LocalLandingZone,
    StorageConfig,
    download_release,
    file_sha256,
    land_release,
    open_zone,
    read_landed,
)

N = 4
FAST = RetryPolicy(attempts=3, base_delay=0.05)
DATASET = "s3://data/sst2?splits=train,validation,test"


def race(n: int, write: Callable[[int, Callable[[str], None]], object]) -> list:
    """``write(i, progress)`` in ``n`` threads, held at a barrier on their first progress call; results or errors."""
    barrier = threading.Barrier(n, timeout=300)

    def progress_of() -> Callable[[str], None]:
        waited = []

        def progress(_rel: str) -> None:
            if not waited:
                waited.append(True)
                barrier.wait()

        return progress

    def run(i: int):
        try:
            return write(i, progress_of())
        except Exception as exc:
            barrier.abort()  # a writer that fails early must not leave the others waiting
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


# -- the landing zone --------------------------------------------------------------------------------
def release_dir(path: Path, seed: int = 0) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(f'{{"seed": {seed}}}')
    (path / "sub").mkdir()
    (path / "sub" / "weights.bin").write_bytes(bytes(range(256)) * (64 + seed))
    return path


@pytest.fixture(params=["s3", "local"])
def zone(request, tmp_path):
    if request.param == "local":
        return LocalLandingZone(tmp_path / "landing")
    endpoint = request.getfixturevalue("moto_endpoint")
    return open_zone(StorageConfig(url=f"s3://{new_bucket(endpoint)}/lz", endpoint_url=endpoint, retry=FAST))


def zone_files(zone, prefix: str) -> list[str]:
    """Every object (file) under ``prefix``, relative to it."""
    if isinstance(zone, LocalLandingZone):
        root = zone.root / prefix
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    full = f"{zone.prefix}/{prefix}"
    pages = zone.client.get_paginator("list_objects_v2").paginate(Bucket=zone.bucket, Prefix=full)
    return sorted(o["Key"][len(full):] for page in pages for o in page.get("Contents", []))


def check_landings(zone, tmp_path: Path, seeds: list[int]) -> None:
    sources = [release_dir(tmp_path / f"src{i}", seed) for i, seed in enumerate(seeds)]
    results = race(len(seeds), lambda i, progress: land_release(sources[i], "fam", "r1", zone, progress=progress))
    landed = [r for r in results if isinstance(r, LandedRelease)]
    assert all(isinstance(r, LandedRelease | ConflictError) for r in results), results
    [winner] = [r for r in landed if r.created]  # exactly one writer created the release
    digest = winner.manifest.digest()
    won = seeds[results.index(winner)]
    for seed, result in zip(seeds, results, strict=True):
        if result is winner:
            continue
        if seed == won:  # the winner's content: a no-op
            assert isinstance(result, LandedRelease) and result.created is False
            assert result.manifest.digest() == digest
        else:  # other content: refused, naming what is there
            assert isinstance(result, ConflictError), result
            assert "already landed with other content" in str(result) and digest in str(result)
    assert read_landed(zone, "fam", "r1").manifest.digest() == digest
    out = download_release(zone, "fam", "r1", tmp_path / "out")  # verifies every sha256: nothing is corrupt
    src = sources[results.index(winner)]
    assert file_sha256(out / "sub" / "weights.bin") == file_sha256(src / "sub" / "weights.bin")
    # the refused writers' staged files are gone: the release holds its manifest and the winner's files
    assert zone_files(zone, "fam/r1/") == sorted(
        [MANIFEST_NAME, f"sha256-{digest}/config.json", f"sha256-{digest}/sub/weights.bin"])


def test_concurrent_landings_of_different_content(zone, tmp_path):
    check_landings(zone, tmp_path, list(range(N)))


def test_concurrent_landings_of_identical_content(zone, tmp_path):
    check_landings(zone, tmp_path, [0] * N)


def test_concurrent_landings_mixed(zone, tmp_path):
    check_landings(zone, tmp_path, [0, 0, 1, 1, 2])


def test_conditional_write_has_one_winner(zone):
    barrier = threading.Barrier(8, timeout=60)

    def write(i: int) -> bool:
        barrier.wait()
        return zone.put_bytes_if_absent("fam/r1/commit", f"writer {i}".encode())

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(write, range(8)))
    assert won.count(True) == 1
    assert zone.get_bytes("fam/r1/commit") == f"writer {won.index(True)}".encode()
    assert zone_files(zone, "fam/r1/") == ["commit"]  # no temporary file is left


def test_concurrent_land_commands(tmp_path):
    """Separate ``theseus-ops catalog land`` processes: one exit 0, the others one conflict line and exit 2."""
    landing = tmp_path / "landing"
    sources = [release_dir(tmp_path / f"src{i}", i) for i in range(3)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([str(BIN / "theseus-ops"), "-q", "catalog", "land", "--family", "fam", "--release",
                               "r1", "--model-dir", str(src), "--landing-url", str(landing)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for src in sources]
    outcomes = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(rc for rc, _out, _err in outcomes) == [0, 2, 2], outcomes
    [(_rc, out, _err)] = [o for o in outcomes if o[0] == 0]
    digest = json.loads(out)["content_sha256"]
    for rc, _out, err in outcomes:
        if rc == 2:
            lines = err.strip().splitlines()
            assert lines[-1].startswith("theseus-ops: error: ") and digest in lines[-1], err
            assert "already landed with other content" in lines[-1]
    assert download_release(LocalLandingZone(landing), "fam", "r1", tmp_path / "out").is_dir()


# -- the MLflow registry -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("bases")
    return [make_base(d / f"b{i}", seed=i) for i in range(3)]


@pytest.fixture
def catalog(mlflow_server):  # noqa: F811
    return Catalog(CatalogConfig(tracking_uri=mlflow_server.url, experiment=f"c-{uuid.uuid4().hex[:6]}", retry=FAST))


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def check_base_registrations(catalog: Catalog, dirs: list[Path]) -> None:
    base_line = uid("llama")
    results = race(len(dirs), lambda i, progress: register_base(catalog, base_line, "r1", dirs[i], progress=progress))
    assert all(not isinstance(r, Exception) or isinstance(r, ConflictError) for r in results), results
    [winner] = [r for r in results if not isinstance(r, Exception) and r.created]
    sha = winner.version.tags["theseus.sha256"]
    shas = [inspect_model_dir(d).sha256() for d in dirs]
    for mine, result in zip(shas, results, strict=True):
        if result is winner:
            continue
        if mine == sha:
            assert not isinstance(result, Exception) and not result.created and result.ref == winner.ref
        else:
            assert isinstance(result, ConflictError), result
            assert f"already registered as version {winner.ref.version} with other weights" in str(result)
            assert sha in str(result)
    registered = catalog.search_versions(base_line, {"theseus.role": "base", "theseus.release": "r1"})
    assert [str(v.version) for v in registered] == [winner.ref.version]  # no duplicate version
    assert registered[0].tags["theseus.sha256"] == sha


def test_concurrent_base_registrations_of_identical_weights(catalog, bases):
    check_base_registrations(catalog, [bases[0]] * N)


def test_concurrent_base_registrations_of_different_weights(catalog, bases):
    check_base_registrations(catalog, [bases[0], bases[0], bases[1], bases[2]])


def test_concurrent_task_vector_registrations(catalog, bases, tmp_path):
    base_line, name = uid("llama"), uid("sst2-tv")
    base = register_base(catalog, base_line, "r1", bases[0])
    same = make_delta(bases[0], tmp_path / "tv.safetensors", seed=1)
    kwargs = {"task": "sst2", "base_model": base_line, "base_version": base.ref.version, "dataset": DATASET,
              "metric": "accuracy"}
    results = race(N, lambda _i, progress: register_task_vector(catalog, name, same, progress=progress, **kwargs))
    assert sorted(r.created for r in results) == [False] * (N - 1) + [True], results
    assert len({r.ref for r in results}) == 1 and len(catalog.search_versions(name)) == 1
    # a task vector is keyed by its content: other content at the same moment is another entry each
    others = [make_delta(bases[0], tmp_path / f"tv{i}.safetensors", seed=10 + i) for i in range(N)]
    results = race(N, lambda i, progress: register_task_vector(catalog, name, others[i], progress=progress, **kwargs))
    assert all(r.created for r in results) and len({r.ref for r in results}) == N
    assert len(catalog.search_versions(name)) == N + 1


@pytest.fixture
def transport_setup(catalog, bases, tmp_path):
    base_line, name = uid("llama"), uid("sst2-tv")
    b1 = register_base(catalog, base_line, "r1", bases[0])
    b2 = register_base(catalog, base_line, "r2", bases[1])
    tv = register_task_vector(catalog, name, make_delta(bases[0], tmp_path / "tv1.safetensors"), task="sst2",
                              base_model=base_line, base_version=b1.ref.version, dataset=DATASET, metric="accuracy")
    ported = make_delta(bases[1], tmp_path / "tv2.safetensors", seed=3)
    return {"family": base_line, "name": name, "b2": b2.ref, "tv": tv.ref, "ported": ported}


def test_concurrent_transported_vector_registrations(catalog, transport_setup):
    s = transport_setup

    def write(_i, progress):
        return register_transported_vector(catalog, s["tv"], s["b2"], s["ported"], method="naive", alpha=1.0,
                                           alignment="s3://align/r1-r2", progress=progress)

    results = race(N, write)
    assert sorted(r.created for r in results) == [False] * (N - 1) + [True], results
    assert len({r.ref for r in results}) == 1
    assert len(catalog.search_versions(s["name"], {"theseus.base_version": s["b2"].version})) == 1


def test_concurrent_transported_model_registrations(catalog, bases, transport_setup, tmp_path):
    s = transport_setup
    evaluation = Evaluation(val_metric=0.8, test_metric=0.8, base_test_metric=0.7, general_loss=2.0,
                            base_general_loss=2.0)
    name = uid("served")
    dirs = [shutil.copytree(bases[1], tmp_path / f"m{i}") for i in range(2)]

    def write(i, progress):
        return register_transported_model(catalog, name, dirs[i], source_vector=s["tv"], target_base=s["b2"],
                                          method="naive", alpha=1.0, evaluation=evaluation, gate=GateConfig(),
                                          progress=progress)

    results = race(2, write)
    assert sorted(r.created for r in results) == [False, True], results
    [winner] = [r for r in results if r.created]
    assert [str(v.version) for v in catalog.search_versions(name)] == [winner.ref.version]
    assert str(catalog.get_alias(name, "candidate").version) == winner.ref.version
    assert tied_model_builds_tied()  # the racing pipeline builds left transformers' tying switched on


# -- transformers' loading, from threads ------------------------------------------------------------
def tied_model_builds_tied() -> bool:
    """Does a tied config still build (and re-tie) a tied head? transformers' class state says."""
    import transformers

    from tests.tiny import gpt2_config

    model = transformers.GPT2LMHeadModel(gpt2_config())
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie, then ask to tie
    model.tie_weights()
    return model.lm_head.weight is model.get_input_embeddings().weight


def test_loads_from_many_threads_leave_transformers_tying(tmp_path):
    """Eight threads loading at once: afterwards tied models still tie (one lock around every load).

    transformers' from_pretrained swaps PreTrainedModel.tie_weights for a no-op while it loads and
    restores what it found; two concurrent loads used to leave the no-op in place for the rest of
    the process (found as untied heads in every oracle test after a concurrent registration).
    """
    from tests.tiny import build, gpt2_config, save
    from theseus_ops.io.models import load_model

    info = inspect_model_dir(save(build(gpt2_config(), seed=1), tmp_path / "m"))
    assert tied_model_builds_tied()
    barrier = threading.Barrier(8, timeout=60)

    def load(_i):
        barrier.wait()
        return load_model(info, torch.device("cpu"))

    with ThreadPoolExecutor(8) as pool:
        models = list(pool.map(load, range(8)))
    assert all(m.lm_head.weight is m.get_input_embeddings().weight for m in models)
    assert tied_model_builds_tied()

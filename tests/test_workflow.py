"""The release workflow end to end against a real ``mlflow server`` and a local landing zone.

The micro demo family (built in seconds) lands v1 and v2-wide-shuffled; v1's task vectors are
registered with file:// task directories; the workflow then ports them, registers the results,
summarises the release and marks it processed. A second full run must create nothing.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest_servers import mlflow_sqlite  # noqa: F401 - fixture
from theseus_ops.catalog import ALIAS_CANDIDATE, Catalog, CatalogConfig, GateConfig, VersionRef, register_task_vector
from theseus_ops.demo import family as demo_family
from theseus_ops.errors import InputError
from theseus_ops.retry import RetryPolicy
from theseus_ops.storage import LocalLandingZone, StorageConfig, land_release
from theseus_ops.workflow import (
    PROCESSED_TAG,
    SUMMARY_TAG,
    Pair,
    ReleaseSummary,
    WorkflowConfig,
    base_lines,
    local_pair,
    mark_announced,
    pending_releases,
    plan_jobs,
    port_job,
    register_landed_releases,
    release_overview,
    releases_to_announce,
    resolve_pair,
    resolve_releases,
    select_releases,
    summarize_releases,
)
from theseus_ops.workflow.release import dataset_dir, parse_ref

FAST = RetryPolicy(attempts=2, base_delay=0.05)
# The micro family is barely trained: at α=1 no transport beats the base on val, at α=3 theseus gains
# answer-token accuracy on `lookup` (measured), so the test exercises both outcomes: base kept, and registered.
METHODS = ("pad", "theseus", "theseus-data-free", "naive", "gradfix")  # the defaults



def port_and_summarize(cfg: WorkflowConfig, pairs: list[Pair]) -> list[ReleaseSummary]:
    """The DAG's plan, port and summarize steps: a failed port is recorded and the others go on (mapped tasks)."""
    jobs = plan_jobs(cfg, pairs)
    outcomes = []
    for job in jobs:
        with contextlib.suppress(InputError):  # recorded by port_job; its DAG task fails, its siblings go on
            outcomes.append(port_job(cfg, job))
    return summarize_releases(cfg, pairs, jobs, outcomes)


def run_workflow(cfg: WorkflowConfig, base_line: str) -> dict:
    """The DAG's steps in its order (reconcile, releases, resolve, plan, port, summarize), as JSON like XCom."""
    landed = register_landed_releases(cfg)
    todo = select_releases(cfg, base_line)
    pairs = resolve_releases(cfg, todo)
    summaries = port_and_summarize(cfg, pairs)
    releases = [{"release": release.to_json(), "pair": pair.to_json(),
                 "outcomes": [o.to_json() for o in summary.results], "run_id": summary.summary_run}
                for release, pair, summary in zip(todo, pairs, summaries, strict=True)]
    return {"landed": landed, "releases": releases}


def all_versions(catalog: Catalog) -> list[tuple[str, str]]:
    return sorted((v.name, str(v.version)) for v in catalog.search_versions())


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_sqlite):  # noqa: F811
    tmp = tmp_path_factory.mktemp("workflow")
    fam = demo_family.build_family(demo_family.family_config("micro"), tmp / "families", progress=lambda _m: None)
    base_line = f"micro-{uuid.uuid4().hex[:6]}"
    landing = tmp / "landing"
    zone = LocalLandingZone(landing)
    for release in ("v1", "v2-wide-shuffled"):
        land_release(fam.model(release), base_line, release, zone)
    cfg = WorkflowConfig(
        catalog=CatalogConfig(tracking_uri=mlflow_sqlite.url, experiment=f"wf-{uuid.uuid4().hex[:6]}", retry=FAST),
        storage=StorageConfig(url=str(landing)), work_dir=tmp / "work", methods=METHODS, alphas=(0.0, 3.0),
        gate=GateConfig(margin=0.0, max_general_loss_increase=100.0))
    catalog = Catalog(cfg.catalog)
    # the first reconcile registers the bases, so the task vectors can name v1's version
    assert [(r["release"], r["version"]) for r in register_landed_releases(cfg)] == [("v1", "1"),
                                                                                     ("v2-wide-shuffled", "2")]
    tasks = {}
    for skill in ("upper", "lookup"):
        data = shutil.copytree(fam.task(skill), tmp / "data" / skill)
        shutil.copy(fam.heldout, data / "heldout.txt")
        reg = register_task_vector(catalog, f"{base_line}-{skill}", fam.task_vector(skill), task=skill,
                                   base_model=base_line, base_version="1", dataset=data.as_uri(), metric="exact_match")
        tasks[skill] = str(reg.ref)
    broken = register_task_vector(catalog, f"{base_line}-broken", fam.task_vector("lookup"), task="lookup",
                                  base_model=base_line, base_version="1", dataset=(tmp / "missing").as_uri(),
                                  metric="exact_match")
    tasks["broken"] = str(broken.ref)
    t0 = time.perf_counter()
    first = run_workflow(cfg, base_line)
    first_s = time.perf_counter() - t0
    before = all_versions(catalog)
    t0 = time.perf_counter()
    second = run_workflow(cfg, base_line)
    # a forced rerun of every step (what a cleared DAG run does) must not write either
    [summary] = port_and_summarize(cfg, [resolve_pair(cfg, base_line, "2")])
    rerun, rerun_summary = [o.to_json() for o in summary.results], summary.summary_run
    second_s = time.perf_counter() - t0
    return {"cfg": cfg, "catalog": catalog, "family": base_line, "tasks": tasks, "first": first, "second": second,
            "before": before, "after": all_versions(catalog), "rerun": rerun, "rerun_summary": rerun_summary,
            "seconds": (first_s, second_s), "landing": landing, "fam": fam, "zone": zone}


def _by_vector(outcomes: list[dict]) -> dict[str, dict]:
    return {o["vector"]: o for o in outcomes}


def test_first_run_registers_and_marks_processed(world):
    first, base_line, catalog = world["first"], world["family"], world["catalog"]
    assert first["landed"] == []  # registered by the fixture's first reconcile
    [release] = first["releases"]
    assert release["release"] == {"family": base_line, "version": "2", "release": "v2-wide-shuffled", "supersedes": "1"}
    pair = release["pair"]
    assert (pair["source"]["release"], pair["target"]["release"]) == ("v1", "v2-wide-shuffled")
    assert Path(pair["target"]["dir"], "config.json").is_file()
    base2 = catalog.get_version(VersionRef(base_line, "2"))
    assert base2.tags["theseus.role"] == "base"
    assert base2.tags["theseus.source_uri"].endswith(f"{base_line}/v2-wide-shuffled")
    assert base2.tags[PROCESSED_TAG] == release["run_id"]
    run = catalog.client.get_run(release["run_id"])
    assert run.data.tags[SUMMARY_TAG] == f"{base_line}/2"


def test_outcomes_and_registry_entries(world):
    outcomes = _by_vector(world["first"]["releases"][0]["outcomes"])
    catalog, base_line = world["catalog"], world["family"]
    for skill in ("upper", "lookup"):
        o = outcomes[world["tasks"][skill]]
        assert o["task"] == skill and o["target_base"] == f"{base_line}/2" and not o["reused"]
        for method in ("naive", "gradfix"):  # same-shape methods on a wider target: recorded, not errors
            assert "identical shape" in o["methods"][method]["not_applicable"]
        for method in ("pad", "theseus", "theseus-data-free"):
            r = o["methods"][method]
            assert r["alpha"] in (0.0, 3.0) and set(r["val"]) >= {"exact_match", "token_accuracy"}
            assert r["general_loss"] is not None and [s["alpha"] for s in r["sweep"]] == [0.0, 3.0]
        assert o["selected"] in ("base", "pad", "theseus", "theseus-data-free")
        if o["selected"] == "base":
            assert o["registered"]["model"] is None
            continue
        vec = catalog.get_version(parse_ref(o["registered"]["task_vector"]))
        assert vec.tags["theseus.transported_from"] == o["vector"]
        assert vec.tags["theseus.base_version"] == "2" and vec.tags["theseus.method"] == o["selected"]
        model = catalog.get_version(parse_ref(o["registered"]["model"]))
        assert model.name == f"{base_line}-{skill}-serving"
        assert model.tags["theseus.role"] == "transported_model" and model.tags["theseus.gate"] == o["registered"][
            "gate"]
        if o["registered"]["candidate"]:
            assert catalog.get_alias(model.name, ALIAS_CANDIDATE).version == model.version
    assert any(outcomes[world["tasks"][s]]["registered"]["model"] for s in ("upper", "lookup")), \
        "the micro family should register at least one transported model"


def test_broken_vector_fails_alone_with_one_line(world):
    outcomes = _by_vector(world["first"]["releases"][0]["outcomes"])
    error = outcomes[world["tasks"]["broken"]]["error"]
    assert "does not exist" in error and "\n" not in error
    assert sum("error" in o for o in outcomes.values()) == 1
    with pytest.raises(InputError, match="only file://"):
        dataset_dir("http://host/data")


def test_second_run_creates_nothing(world):
    assert world["after"] == world["before"]
    assert world["second"] == {"landed": [], "releases": []}
    assert pending_releases(world["cfg"], world["family"]) == []
    first = _by_vector(world["first"]["releases"][0]["outcomes"])
    for o in world["rerun"]:
        if "error" in o:
            continue
        assert o["reused"] and o["registered"] == first[o["vector"]]["registered"]
    assert world["rerun_summary"] == world["first"]["releases"][0]["run_id"]


def test_summary_artifacts(world):
    catalog = world["catalog"]
    run_id = world["first"]["releases"][0]["run_id"]
    with tempfile.TemporaryDirectory() as tmp:
        md = Path(catalog.client.download_artifacts(run_id, "summary.md", tmp)).read_text()
    for ref in world["tasks"].values():
        assert ref in md
    assert "## Failed task vectors" in md and "| pad val/test (α) |" in md
    artifacts = {a.path for a in catalog.client.list_artifacts(run_id)}
    assert {"summary.md", "summary.json", "alpha-sweeps.png"} <= artifacts


def test_release_overview_lists_the_processed_release(world):
    base_line = world["family"]
    overview = release_overview(world["cfg"], base_line)
    assert [(r["version"], r["status"]) for r in overview] == [("2", "processed"), ("1", "first")]
    head, rows, failed = overview[0]["table"]
    assert head[0] == "vector" and {r[0] for r in rows} == {world["tasks"]["upper"], world["tasks"]["lookup"]}
    assert [v for v, _ in failed] == [world["tasks"]["broken"]] and "does not exist" in failed[0][1]


def test_announce_once_then_again_when_stale(world):
    cfg, fam = world["cfg"], world["fam"]
    base_line = f"micro-{uuid.uuid4().hex[:6]}"
    for release in ("v1", "v2-wide-shuffled"):
        land_release(fam.model(release), base_line, release, world["zone"])
    register_landed_releases(cfg)
    assert base_line in base_lines(cfg)
    due = [r for r in releases_to_announce(cfg, 3600, now=1000.0) if r["family"] == base_line]
    assert due == [{"family": base_line, "version": "2", "release": "v2-wide-shuffled", "supersedes": "1"}]
    mark_announced(cfg, base_line, "2", now=1000.0)
    assert not [r for r in releases_to_announce(cfg, 3600, now=1010.0) if r["family"] == base_line]
    assert [r["version"] for r in releases_to_announce(cfg, 3600, now=4601.0) if r["family"] == base_line] == ["2"]
    assert world["family"] not in {r["family"] for r in releases_to_announce(cfg, 0)}  # processed: never again


def test_local_pair_fetches_bases_missing_on_this_worker(world):
    pair = world["first"]["releases"][0]["pair"]
    elsewhere = {**pair, "source": {**pair["source"], "dir": "/nonexistent/source"}}
    local = local_pair(world["cfg"], Pair.from_json(elsewhere)).to_json()
    assert Path(local["source"]["dir"], "config.json").is_file()
    assert local["source"]["sha256"] == pair["source"]["sha256"]
    typed = Pair.from_json(pair)
    assert local_pair(world["cfg"], typed) is typed


def test_config_validation(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="unknown method"):
        WorkflowConfig(methods=("pad", "nope"))
    with pytest.raises(InputError, match="finite"):
        WorkflowConfig(alphas=(0.0, float("nan")))
    with pytest.raises(InputError, match="device"):
        WorkflowConfig(device="tpu")
    monkeypatch.setenv("THESEUS_METHODS", "pad, theseus")
    monkeypatch.setenv("THESEUS_ALPHAS", "0,1")
    monkeypatch.setenv("THESEUS_WORK_DIR", str(tmp_path))
    cfg = WorkflowConfig.from_env()
    assert cfg.methods == ("pad", "theseus") and cfg.alphas == (0.0, 1.0) and cfg.work_dir == tmp_path
    with pytest.raises(InputError, match="name/version"):
        parse_ref("no-version")


def test_fill_setting_reaches_the_maps_and_the_outcome_key(tmp_path, monkeypatch):
    """THESEUS_FILL: validated, the library's default when unset, part of the outcome key and of the cached
    alignment."""
    from theseus_ops.transport.tolerances import DEFAULT_FILL

    monkeypatch.delenv("THESEUS_FILL", raising=False)
    default = WorkflowConfig.from_env()
    assert default.fill == DEFAULT_FILL == "weights" and default.fingerprint_options()["fill"] == "weights"
    monkeypatch.setenv("THESEUS_FILL", "pad")
    cfg = WorkflowConfig.from_env()
    assert cfg.fill == "pad" and cfg.fingerprint_options()["fill"] == "pad"
    assert cfg.fingerprint_options() != default.fingerprint_options()
    monkeypatch.setenv("THESEUS_FILL", "zeros")
    with pytest.raises(InputError, match="fill must be one of"):
        WorkflowConfig.from_env()

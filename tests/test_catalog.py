"""The MLflow catalog against a real ``mlflow server`` (SQLite, and PostgreSQL where reachable)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.catalog_support import make_base, make_delta
from tests.conftest_servers import (  # noqa: F401 - fixtures
    closed_port,
    mlflow_postgres,
    mlflow_server,
    mlflow_sqlite,
    moto_endpoint,
    new_bucket,
)
from theseus_ops import api
from theseus_ops.catalog import (
    ALIAS_CANDIDATE,
    ALIAS_CHAMPION,
    Catalog,
    CatalogConfig,
    Evaluation,
    GateConfig,
    VersionRef,
    find_task_vectors,
    get_task_vector,
    idempotency_key,
    register_base,
    register_landed_release,
    register_task_vector,
    register_transported_model,
    register_transported_vector,
)
from theseus_ops.catalog import cli as catalog_cli
from theseus_ops.config import TransportConfig
from theseus_ops.errors import InputError
from theseus_ops.io.models import inspect_model_dir
from theseus_ops.retry import RetryPolicy
from theseus_ops.service_errors import CatalogError, IntegrityError, ServiceUnavailableError
from theseus_ops.storage import LocalLandingZone, StorageConfig, land_release, open_zone, scan_landed_releases

FAST = RetryPolicy(attempts=2, base_delay=0.05)
DATASET = "s3://data/sst2?splits=train,validation,test"
GOOD = Evaluation(val_metric=0.81, test_metric=0.80, base_test_metric=0.70, general_loss=2.02, base_general_loss=2.0)
GATE = GateConfig(margin=0.05, max_general_loss_increase=0.05)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two releases of one tiny family, a task vector for the first, its transport to the second."""
    d = tmp_path_factory.mktemp("models")
    v1, v2 = make_base(d / "v1", seed=0), make_base(d / "v2", seed=5)
    tv1 = make_delta(v1, d / "tv-v1.safetensors")
    tv2 = d / "tv-v2.safetensors"
    api.transport(TransportConfig(str(v1), str(v2), "naive", task_vector=str(tv1)), tv2)
    tuned = api.apply_task_vector(v2, tv2, 1.0, d / "v2-tuned")
    return {"v1": v1, "v2": v2, "tv1": tv1, "tv2": tv2, "tuned": tuned}


@pytest.fixture
def catalog(mlflow_server):  # noqa: F811
    return Catalog(CatalogConfig(tracking_uri=mlflow_server.url, experiment=f"t-{uuid.uuid4().hex[:6]}", retry=FAST))


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def seed(catalog: Catalog, models: dict) -> dict:
    base_line, vectors = uid("llama"), uid("sst2-tv")
    b1 = register_base(catalog, base_line, "r1", models["v1"])
    b2 = register_base(catalog, base_line, "r2", models["v2"])
    tv = register_task_vector(catalog, vectors, models["tv1"], task="sst2", base_model=base_line,
                              base_version=b1.ref.version, dataset=DATASET, metric="accuracy")
    return {"family": base_line, "vectors": vectors, "b1": b1.ref, "b2": b2.ref, "tv": tv.ref}


def count(catalog: Catalog, name: str) -> int:
    return len(catalog.search_versions(name))


def test_base_and_task_vector_entries_carry_the_schema(catalog, models, tmp_path):
    s = seed(catalog, models)
    base = catalog.get_version(s["b1"])
    assert base.tags["theseus.role"] == "base" and base.tags["theseus.release"] == "r1"
    assert base.tags["theseus.sha256"] == inspect_model_dir(models["v1"]).sha256()
    tv = catalog.get_version(s["tv"])
    expected = {"theseus.role": "task_vector", "theseus.task": "sst2", "theseus.base_model": s["family"],
                "theseus.base_version": s["b1"].version, "theseus.format": "full", "theseus.dataset": DATASET,
                "theseus.metric": "accuracy"}
    assert expected.items() <= tv.tags.items()
    assert catalog.base_release_registered(s["family"], "r2") and not catalog.base_release_registered(s["family"], "r9")
    # a verified download gives back the exact weights
    out = catalog.download(s["b1"], tmp_path / "b1")
    assert inspect_model_dir(out).sha256() == base.tags["theseus.sha256"]
    tv_file = catalog.download(s["tv"], tmp_path / "tv")
    assert tv_file.name == "tv-v1.safetensors" and tv_file.read_bytes() == models["tv1"].read_bytes()


def test_registration_is_idempotent(catalog, models):
    s = seed(catalog, models)
    again = register_base(catalog, s["family"], "r1", models["v1"])
    assert not again.created and again.ref == s["b1"]
    tv = register_task_vector(catalog, s["vectors"], models["tv1"], task="sst2", base_model=s["family"],
                              base_version=s["b1"].version, dataset=DATASET, metric="accuracy")
    assert not tv.created and tv.ref == s["tv"]
    with pytest.raises(CatalogError, match="already registered as version 1 with other weights"):
        register_base(catalog, s["family"], "r1", models["v2"])
    assert count(catalog, s["family"]) == 2 and count(catalog, s["vectors"]) == 1


def test_concurrent_registrations_converge_on_one_version(catalog, models):
    """Two processes that both passed the "already registered?" check: the lowest version survives."""
    s = seed(catalog, models)
    first = catalog.get_version(s["b1"])
    unique = {"theseus.role": "base", "theseus.release": "r1"}
    # the second writer, as if it had checked before the first one's version existed
    second = catalog.upload_and_register(s["family"], models["v1"], dict(first.tags), "model", unique=unique)
    assert str(second.version) == s["b1"].version
    assert [str(v.version) for v in catalog.search_versions(s["family"], unique)] == [s["b1"].version]
    # and racing for real, from two threads, each entry ends up registered once
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        refs = list(pool.map(lambda _i: register_base(catalog, s["family"], "r3", models["v2"]).ref, range(2)))
    assert refs[0] == refs[1] and len(catalog.search_versions(s["family"], {"theseus.release": "r3"})) == 1


def test_transported_vector_lineage_and_idempotency(catalog, models):
    s = seed(catalog, models)
    kwargs = {"method": "naive", "alpha": 1.0, "alignment": "s3://align/r1-r2.alignment", "options": {"center": False}}
    first = register_transported_vector(catalog, s["tv"], s["b2"], models["tv2"], **kwargs)
    assert first.created
    before = count(catalog, s["vectors"])
    second = register_transported_vector(catalog, s["tv"], s["b2"], models["tv2"], **kwargs)
    assert not second.created and second.ref == first.ref
    assert count(catalog, s["vectors"]) == before == 2  # running twice leaves the version count unchanged
    tags = catalog.get_version(first.ref).tags
    assert tags["theseus.transported_from"] == str(s["tv"])
    assert tags["theseus.base_version"] == s["b2"].version and tags["theseus.task"] == "sst2"
    assert tags["theseus.method"] == "naive" and float(tags["theseus.alpha"]) == 1.0
    assert tags["theseus.alignment"] == "s3://align/r1-r2.alignment" and tags["theseus.dataset"] == DATASET
    assert tags["theseus.idempotency_key"] == idempotency_key(s["tv"], s["b2"], "naive",
                                                              {"center": False, "alpha": 1.0})
    # the transported vector is a catalog entry of the new base, so the next release can port it again
    on_r2 = find_task_vectors(catalog, "sst2", s["b2"])
    assert [VersionRef(v.name, v.version) for v in on_r2] == [first.ref]
    assert get_task_vector(catalog, first.ref).base == s["b2"]
    # other options are another transport
    other = register_transported_vector(catalog, s["tv"], s["b2"], models["tv2"], **{**kwargs, "alpha": 0.5})
    assert other.created and count(catalog, s["vectors"]) == 3


def test_transported_model_gate_aliases_and_consumer(catalog, models, mlflow_server):  # noqa: F811
    s = seed(catalog, models)
    name = uid("sst2-serving")
    common = {"source_vector": s["tv"], "target_base": s["b2"], "method": "naive"}
    reg = register_transported_model(catalog, name, models["tuned"], alpha=1.0, evaluation=GOOD, gate=GATE, **common)
    assert reg.created and reg.decision.candidate and not reg.decision.champion
    tags = catalog.get_version(reg.ref).tags
    assert tags["theseus.role"] == "transported_model" and tags["theseus.task"] == "sst2"
    assert (tags["theseus.source_base_version"], tags["theseus.base_version"]) == (s["b1"].version, s["b2"].version)
    assert float(tags["theseus.val_metric"]) == 0.81 and float(tags["theseus.test_metric"]) == 0.80
    assert tags["theseus.method"] == "naive" and tags["theseus.gate"].startswith("passed")
    assert catalog.get_alias(name, ALIAS_CANDIDATE).version == reg.ref.version
    assert catalog.get_alias(name, ALIAS_CHAMPION) is None  # never moved automatically

    # idempotent: the same transport again creates nothing and moves nothing
    again = register_transported_model(catalog, name, models["tuned"], alpha=1.0, evaluation=GOOD, gate=GATE,
                                       **common)
    assert not again.created and again.ref == reg.ref and count(catalog, name) == 1

    # a model that regresses general capability is registered but gets no alias
    worse = Evaluation(0.9, 0.9, 0.70, general_loss=2.5, base_general_loss=2.0)
    failed = register_transported_model(catalog, name, models["tuned"], alpha=0.5, evaluation=worse, gate=GATE,
                                        **common)
    assert failed.created and not failed.decision.candidate and "general-capability loss rose" in failed.decision.reason
    assert catalog.get_alias(name, ALIAS_CANDIDATE).version == reg.ref.version
    # too small a gain: no alias either
    small = Evaluation(0.72, 0.72, 0.70, general_loss=2.0, base_general_loss=2.0)
    assert not register_transported_model(catalog, name, models["tuned"], alpha=0.25, evaluation=small, gate=GATE,
                                          **common).decision.candidate
    # champion moves only when configuration says so
    promoted = register_transported_model(catalog, name, models["tuned"], alpha=0.75, evaluation=GOOD,
                                          gate=GateConfig(0.05, 0.05, move_champion=True), **common)
    assert catalog.get_alias(name, ALIAS_CHAMPION).version == promoted.ref.version
    catalog.set_alias(name, ALIAS_CANDIDATE, reg.ref.version)

    # consumer: a fresh process loads the model by alias, offline, and generates text
    import transformers

    local = transformers.pipeline("text-generation", model=str(models["tuned"]), tokenizer=str(models["tuned"]))
    expected = local("hello world", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    script = (
        "import json, sys, mlflow\n"
        "uri = sys.argv[1]\n"
        "pipe = mlflow.transformers.load_model(uri)\n"
        "text = pipe('hello world', max_new_tokens=6, do_sample=False)[0]['generated_text']\n"
        "py = mlflow.pyfunc.load_model(uri)\n"
        "pred = py.predict(['hello world'])\n"
        "print(json.dumps({'text': text, 'pyfunc': [str(p) for p in pred]}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script, f"models:/{name}@{ALIAS_CANDIDATE}"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["text"] == expected and len(result["text"]) > len("hello world")
    assert result["pyfunc"] and result["pyfunc"][0].startswith("hello world")


def test_interrupted_registration_is_invisible(catalog, models):
    base_line = uid("llama")

    def interrupt(rel: str) -> None:
        raise KeyboardInterrupt  # stopped mid-upload, after the first file

    with pytest.raises(KeyboardInterrupt):
        register_base(catalog, base_line, "r1", models["v1"], progress=interrupt)
    assert count(catalog, base_line) == 0 and not catalog.base_release_registered(base_line, "r1")
    runs = catalog.client.search_runs([catalog.experiment_id()])
    assert [r.info.status for r in runs] == ["FAILED"]
    done = register_base(catalog, base_line, "r1", models["v1"])
    assert done.created and count(catalog, base_line) == 1


def test_checksum_mismatch_on_download(catalog, models, mlflow_server, tmp_path):  # noqa: F811
    s = seed(catalog, models)
    run_id = catalog.get_version(s["tv"]).run_id
    stored = next(p for p in mlflow_server.artifacts.rglob("tv-v1.safetensors") if run_id in str(p))
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"checksum mismatch for tv-v1\.safetensors"):
        catalog.download(s["tv"], tmp_path / "tv")
    assert not (tmp_path / "tv").exists()


def test_bad_inputs(catalog, models, tmp_path):
    s = seed(catalog, models)
    with pytest.raises(CatalogError, match=r"unknown task 'nope'.*known tasks: .*sst2"):
        find_task_vectors(catalog, "nope")
    with pytest.raises(CatalogError, match=f"base release {s['family']}/7 is not in the registry"):
        register_task_vector(catalog, uid("tv"), models["tv1"], task="sst2", base_model=s["family"],
                             base_version="7", dataset=DATASET, metric="accuracy")
    with pytest.raises(CatalogError, match="was made for base weights"):  # a vector of r1 filed under r2
        register_task_vector(catalog, uid("tv"), models["tv1"], task="sst2", base_model=s["family"],
                             base_version=s["b2"].version, dataset=DATASET, metric="accuracy")
    with pytest.raises(InputError, match="is not a URI"):
        register_task_vector(catalog, uid("tv"), models["tv1"], task="sst2", base_model=s["family"],
                             base_version=s["b1"].version, dataset="sst2", metric="accuracy")
    with pytest.raises(CatalogError, match="is not a task_vector entry"):
        register_transported_vector(catalog, s["b1"], s["b2"], models["tv2"], method="naive", alpha=1.0,
                                    alignment="s3://a/b")
    with pytest.raises(CatalogError, match=r"task vector .* is not in the registry"):
        register_transported_model(catalog, uid("m"), models["tuned"], source_vector=VersionRef(s["vectors"], "9"),
                                   target_base=s["b2"], method="naive", alpha=1.0, evaluation=GOOD, gate=GATE)
    with pytest.raises(InputError, match="is not a valid name"):
        register_task_vector(catalog, uid("tv"), models["tv1"], task="bad task", base_model=s["family"],
                             base_version=s["b1"].version, dataset=DATASET, metric="accuracy")
    assert count(catalog, s["family"]) == 2 and count(catalog, s["vectors"]) == 1


def test_landed_releases_against_the_registry(catalog, models, moto_endpoint, tmp_path):  # noqa: F811
    base_line = uid("llama")
    bucket = new_bucket(moto_endpoint)
    zone = open_zone(StorageConfig(url=f"s3://{bucket}/releases", endpoint_url=moto_endpoint, retry=FAST))
    land_release(models["v1"], base_line, "r1", zone)
    land_release(models["v2"], base_line, "r2", zone)
    pending = scan_landed_releases(zone, catalog)
    assert [(r.base_line, r.release) for r in pending] == [(base_line, "r1"), (base_line, "r2")]
    reg = register_landed_release(catalog, zone, pending[0])
    assert reg.created and reg.version.tags["theseus.source_uri"] == f"s3://{bucket}/releases/{base_line}/r1"
    assert reg.version.tags["theseus.sha256"] == inspect_model_dir(models["v1"]).sha256()
    assert [r.release for r in scan_landed_releases(zone, catalog)] == ["r2"]


def cli(*argv: str) -> int | None:
    parser = argparse.ArgumentParser(prog="theseus-ops")
    sub = parser.add_subparsers(dest="command", required=True)
    catalog_cli.add_subcommands(sub)
    sub.add_parser("inspect")
    return catalog_cli.run(parser.parse_args(list(argv)))


def test_cli(mlflow_server, models, tmp_path, capsys):  # noqa: F811
    base_line, uri = uid("llama"), ["--tracking-uri", mlflow_server.url]
    landing = ["--landing-url", str(tmp_path / "landing")]
    assert cli("catalog", "land", "--family", base_line, "--release", "r1", "--model-dir", str(models["v1"]),
               *landing) == 0
    assert json.loads(capsys.readouterr().out)["release"] == "r1"
    assert cli("catalog", *uri, "list", "--landed", *landing) == 0
    assert [r["family"] for r in json.loads(capsys.readouterr().out)] == [base_line]
    assert cli("catalog", *uri, "register-base", "--family", base_line, "--release", "r1", "--from-landing",
               *landing) == 0
    assert json.loads(capsys.readouterr().out)["created"] is True
    assert cli("catalog", *uri, "list", "--landed", *landing) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli("catalog", *uri, "register-task-vector", "--name", f"{base_line}-tv", "--path", str(models["tv1"]),
               "--task", "sst2", "--base-model", base_line, "--base-release", "r1", "--dataset", DATASET,
               "--metric", "accuracy") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["tags"]["theseus.base_version"] == "1" and shown["tags"]["theseus.format"] == "full"
    assert cli("catalog", *uri, "list", "--task", "sst2", "--role", "task_vector") == 0
    assert f"{base_line}-tv" in [e["name"] for e in json.loads(capsys.readouterr().out)]
    Catalog(CatalogConfig(tracking_uri=mlflow_server.url)).set_alias(base_line, "candidate", "1")
    assert cli("catalog", *uri, "show", base_line, "@candidate") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["role"] == "base" and shown["aliases"] == ["candidate"]
    with pytest.raises(CatalogError, match="has no alias"):
        cli("catalog", *uri, "show", base_line, "@champion")
    assert cli("inspect") is None  # not a catalog command


def test_reading_commands_create_no_store(models, tmp_path):
    """``list --landed``, ``list`` and ``show`` with no tracking URI: one line, exit 2, and no ./mlflow.db."""
    landing = tmp_path / "landing"
    land_release(models["v1"], "llama", "r1", LocalLandingZone(landing))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (
        "MLFLOW_TRACKING_URI", "THESEUS_MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "THESEUS_MLFLOW_REGISTRY_URI")}
    exe = os.path.join(os.path.dirname(sys.executable), "theseus-ops")
    for argv, words in (
        (["catalog", "list", "--landed", "--landing-url", str(landing)], "MLflow's default store"),
        (["catalog", "list"], "MLflow's default store"),
        (["catalog", "show", "llama", "1"], "MLflow's default store"),
        (["catalog", "--tracking-uri", "sqlite:///other.db", "list", "--landed", "--landing-url", str(landing)],
         "sqlite:///other.db does not exist"),
    ):
        proc = subprocess.run([exe, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert lines[-1].startswith("theseus-ops: error: no MLflow registry") and words in lines[-1], lines
        assert "--tracking-uri" in lines[-1]
        assert sorted(os.listdir(cwd)) == [], argv  # nothing created just to list


def test_mlflow_down_gives_a_clear_error(models):
    url = f"http://127.0.0.1:{closed_port()}"
    catalog = Catalog(CatalogConfig(tracking_uri=url, retry=RetryPolicy(attempts=3, base_delay=0.05)))
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match=r"MLflow .* unreachable after 3 attempt\(s\)"):
        register_base(catalog, "llama", "r1", models["v1"])
    with pytest.raises(ServiceUnavailableError, match="unreachable"):
        catalog.ping()
    assert time.monotonic() - started < 30


class _Flaky(BaseHTTPRequestHandler):
    """Forwards to the MLflow server, but answers the first ``failures`` requests with 503."""

    failures = 0
    seen: list[int]
    upstream = ""

    def _handle(self) -> None:
        type(self).seen.append(1)
        if len(type(self).seen) <= type(self).failures:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"busy")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        req = urllib.request.Request(self.upstream + self.path, data=body, method=self.command,
                                     headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
        with urllib.request.urlopen(req, timeout=30) as resp:
            payload = resp.read()
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_DELETE = _handle

    def log_message(self, *args) -> None:
        pass


def test_transient_mlflow_errors_are_retried(mlflow_sqlite):  # noqa: F811
    handler = type("Flaky", (_Flaky,), {"failures": 2, "seen": [], "upstream": mlflow_sqlite.url})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        catalog = Catalog(CatalogConfig(tracking_uri=url, retry=RetryPolicy(attempts=4, base_delay=0.05)))
        catalog.ping()  # two 503s, then an answer
        assert len(handler.seen) == 3
        handler.failures, handler.seen = 10, []
        with pytest.raises(ServiceUnavailableError, match="unreachable after 4 attempt"):
            catalog.ping()
        assert len(handler.seen) == 4  # bounded
    finally:
        server.shutdown()
        server.server_close()


def test_local_zone_scan_with_registry(catalog, models, tmp_path):
    base_line = uid("llama")
    zone = LocalLandingZone(tmp_path / "landing")
    land_release(models["v2"], base_line, "r2", zone)
    assert [r.release for r in scan_landed_releases(zone, catalog)] == ["r2"]
    register_base(catalog, base_line, "r2", models["v2"])
    assert scan_landed_releases(zone, catalog) == []


def test_lora_adapter_task_vector(catalog, models, tmp_path):
    import transformers
    from peft import LoraConfig, get_peft_model

    s = seed(catalog, models)
    model = transformers.AutoModelForCausalLM.from_pretrained(models["v1"])
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    reg = register_task_vector(catalog, uid("lora-tv"), adapter, task="sst2", base_model=s["family"],
                               base_version=s["b1"].version, dataset=DATASET, metric="accuracy")
    assert reg.version.tags["theseus.format"] == "lora"
    out = catalog.download(reg.ref, tmp_path / "down")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    with pytest.raises(InputError, match="is a lora task vector, not full"):
        register_task_vector(catalog, uid("lora-tv"), adapter, task="sst2", base_model=s["family"],
                             base_version=s["b1"].version, dataset=DATASET, metric="accuracy", fmt="full")

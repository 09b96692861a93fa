"""Both DAGs for real on a classifier family: a full classification task vector and a LoRA (issue 11).

A tiny BERT sequence classifier is the first release (random weights: it classifies the task's
rows at chance); the second release is the same network with a wider MLP (its new units silent:
the same function, other shapes), so a task vector must be transported to apply there at all. Two task
vectors of the first release are cataloged as ``classification`` tasks: a full fine-tune's delta
and a PEFT LoRA fine-tune, each of which classifies every row. The watcher registers and
announces the second release, the transport DAG ports both vectors, evaluates them and registers
them: the full delta as a merged model, the LoRA as a PEFT adapter on the target base. A fresh,
offline process loads both by alias with ``load_registered`` and gets the labels back; the
adapter loads as a ``PeftModel`` whose logits are the target's merged with the registered vector.

Its own module (and Airflow home) rather than more vectors in ``test_airflow.py``'s shared stack:
that stack asserts its exact set of vectors, and this base line needs its own releases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import transformers

from tests.conftest_servers import BIN, mlflow_sqlite  # noqa: F401 - fixture
from tests.eval_models import LABELS, PAIR_ROWS, TEXT_ROWS, bert_classifier, fit, write_jsonl
from tests.test_airflow import ROOT, run, run_dag, tis
from theseus_ops import api
from theseus_ops.catalog import ALIAS_CANDIDATE, Catalog, CatalogConfig, VersionRef, register_task_vector
from theseus_ops.catalog.schema import TransportedModelTags, evaluation_tags
from theseus_ops.examples import widen_mlp_bert_like
from theseus_ops.retry import RetryPolicy
from theseus_ops.storage import LocalLandingZone, StorageConfig, land_release
from theseus_ops.workflow import WorkflowConfig, register_landed_releases
from theseus_ops.workflow.release import parse_ref

TEXTS = [t for t, _ in TEXT_ROWS]
LORA_MODULES = ["query", "key", "value", "dense"]


def _batch(model_dir: Path) -> dict[str, torch.Tensor]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    return {**batch, "labels": torch.tensor([LABELS.index(y) for _, y in TEXT_ROWS])}


def _accuracy(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return (model(**inputs).logits.argmax(-1) == batch["labels"]).float().mean().item()


def build_classifier_family(root: Path) -> dict[str, Path]:
    """Releases v1 (random BERT classifier) and v2 (v1, MLP widened), a full delta and a LoRA of v1, and the tasks."""
    from peft import LoraConfig, get_peft_model

    from theseus_ops.io.models import inspect_model_dir
    from theseus_ops.io.task_vectors import META_BASE_SHA, read_task_vector, write_task_vector

    v1 = bert_classifier(root / "v1", steps=0)
    auto = transformers.AutoModelForSequenceClassification
    model = auto.from_pretrained(str(v1))
    config = model.config.to_dict() | {"intermediate_size": 2 * model.config.intermediate_size}
    wide = auto.from_config(transformers.BertConfig.from_dict(config))
    wide.load_state_dict(widen_mlp_bert_like(model.state_dict(), model.config.intermediate_size))
    wide.save_pretrained(str(root / "v2"))
    transformers.AutoTokenizer.from_pretrained(str(v1)).save_pretrained(str(root / "v2"))
    batch = _batch(v1)
    assert _accuracy(auto.from_pretrained(str(v1)).eval(), batch) < 0.5  # the base does not know the task

    tuned = auto.from_pretrained(str(v1))
    fit(tuned, batch, 60, 1e-3)
    assert _accuracy(tuned, batch) == 1.0
    tuned.save_pretrained(str(root / "tuned"))
    transformers.AutoTokenizer.from_pretrained(str(v1)).save_pretrained(str(root / "tuned"))
    info = inspect_model_dir(v1)
    delta = read_task_vector(root / "tuned", info, tuned=True)
    write_task_vector(delta, root / "topic.safetensors", {META_BASE_SHA: info.sha256()})

    torch.manual_seed(0)
    lora = get_peft_model(auto.from_pretrained(str(v1)), LoraConfig(r=8, lora_alpha=16, target_modules=LORA_MODULES))
    fit(lora, batch, 100, 3e-3)
    assert _accuracy(lora, batch) == 1.0
    lora.save_pretrained(str(root / "topic-lora"))

    rows = [{"text": t, "label": y} for t, y in TEXT_ROWS]  # memorised rows: val and test are the train rows
    general = [{"text_a": a, "text_b": b, "label": y} for (a, b), y in PAIR_ROWS]
    for split in ("train", "val", "test"):
        write_jsonl(root / "data" / "topic" / f"{split}.jsonl", rows)
        write_jsonl(root / "data" / "general" / f"{split}.jsonl", general)
    return {"v1": v1, "v2": root / "v2", "full": root / "topic.safetensors", "lora": root / "topic-lora",
            "data": root / "data" / "topic", "general": root / "data" / "general"}


@pytest.fixture(scope="module")
def classifier_release(tmp_path_factory, mlflow_sqlite):  # noqa: F811
    """Land v1 and catalog its two classification vectors, land v2, then run the watcher and the transport DAG."""
    tmp = tmp_path_factory.mktemp("airflow-vectors")
    base_line = f"bert-{uuid.uuid4().hex[:6]}"
    landing = tmp / "landing"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "THESEUS_MLFLOW_TRACKING_URI": mlflow_sqlite.url, "THESEUS_MLFLOW_EXPERIMENT": f"av-{base_line}",
        "THESEUS_LANDING_URL": str(landing), "THESEUS_WORK_DIR": str(tmp / "work"), "THESEUS_ALPHAS": "0.5,1",
        "THESEUS_GATE_MAX_GENERAL_LOSS_INCREASE": "100", "THESEUS_RETRY_DELAY_SECONDS": "1",
        "THESEUS_RETRY_ATTEMPTS": "2", "THESEUS_RETRY_BASE_DELAY": "0.05", "PYTHONPATH": str(ROOT),
    }
    migrate = run([str(BIN / "airflow"), "db", "migrate"], env)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    built = build_classifier_family(tmp / "family")
    cfg = WorkflowConfig(catalog=CatalogConfig(tracking_uri=mlflow_sqlite.url, experiment=f"av-{base_line}",
                                               retry=RetryPolicy(attempts=2, base_delay=0.05)),
                         storage=StorageConfig(url=str(landing)), work_dir=tmp / "work")
    catalog = Catalog(cfg.catalog)
    zone = LocalLandingZone(landing)
    land_release(built["v1"], base_line, "r1", zone)
    [first] = register_landed_releases(cfg)
    scoring = evaluation_tags(task_kind="classification", general_dataset=built["general"].as_uri())
    vectors = {}
    for key, task in (("full", "topic"), ("lora", "topic-lora")):
        reg = register_task_vector(catalog, f"{base_line}-{task}", built[key], task=task, base_model=base_line,
                                   base_version=first["version"], dataset=built["data"].as_uri(),
                                   metric="accuracy", evaluation=scoring)
        vectors[key] = str(reg.ref)
    land_release(built["v2"], base_line, "r2", zone)
    watch = run_dag(env, "theseus_watch_releases")
    transport = run_dag(env, "theseus_transport_release", returns="summarize,port")
    return {"tmp": tmp, "env": env, "base_line": base_line, "catalog": catalog, "built": built, "vectors": vectors,
            "watch": watch, "transport": transport}


def _outcomes(release: dict) -> dict[str, dict]:
    return {o["vector"]: o for o in release["transport"]["returns"]["port"] if o}


def test_both_classification_vectors_are_ported_evaluated_and_registered(classifier_release):
    release, base_line = classifier_release, classifier_release["base_line"]
    [announce] = tis(release["watch"], "announce")
    assert announce["label"] == f"{base_line}/2" and announce["state"] == "success"
    transport = release["transport"]
    assert transport["state"] == "success", transport["tasks"]
    assert [t["state"] for t in tis(transport, "port")] == ["success", "success"]
    outcomes = _outcomes(release)
    assert set(outcomes) == set(release["vectors"].values())
    catalog = release["catalog"]
    for key, fmt in (("full", "full"), ("lora", "lora")):
        o = outcomes[release["vectors"][key]]
        assert o["metric"] == "accuracy"
        assert o["base_test"] < 0.5 and o["selected"] != "base" and o["selected_test"] == 1.0, o
        assert o["registered"]["candidate"], o["registered"]
        mv = catalog.get_version(parse_ref(o["registered"]["model"]))
        tags = TransportedModelTags.from_tags(mv.tags, mv.name)
        assert tags.format == fmt and tags.base == VersionRef(base_line, "2")
        assert catalog.get_alias(mv.name, ALIAS_CANDIDATE).version == mv.version
        vector = catalog.get_version(parse_ref(o["registered"]["task_vector"]))
        assert vector.tags["theseus.format"] == fmt and vector.tags["theseus.task_kind"] == "classification"
        files = {a.path for a in catalog.client.list_artifacts(mv.run_id, "model")}
        if fmt == "lora":  # the adapter, not a merged copy of the base
            assert "model/peft" in files and "model/model" not in files
        else:
            assert "model/model" in files and "model/peft" not in files


CONSUMER = """
import json, sys
import torch
from theseus_ops.catalog import load_registered
out = {}
for key, uri in json.loads(sys.argv[1]).items():
    pipe = load_registered(uri)
    batch = pipe.tokenizer(json.loads(sys.argv[2]), padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = pipe.model(**batch).logits
    out[key] = {"class": type(pipe.model).__name__, "task": pipe.task, "logits": logits.tolist(),
                "labels": [r["label"] for r in pipe(json.loads(sys.argv[2]))],
                "pyfunc": list(load_registered(uri, flavor="pyfunc").predict(json.loads(sys.argv[2]))["label"])}
print(json.dumps(out))
"""


def test_registered_models_load_by_alias_in_a_fresh_process(classifier_release):
    release = classifier_release
    outcomes, catalog, tmp = _outcomes(release), release["catalog"], release["tmp"]
    models = {key: outcomes[release["vectors"][key]]["registered"]["model"] for key in ("full", "lora")}
    uris = {key: f"models:/{ref.rsplit('/', 1)[0]}@{ALIAS_CANDIDATE}" for key, ref in models.items()}
    env = {**release["env"], "MLFLOW_TRACKING_URI": release["env"]["THESEUS_MLFLOW_TRACKING_URI"],
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "THESEUS_CACHE_DIR": str(tmp / "consumer-cache")}
    proc = subprocess.run([sys.executable, "-c", CONSUMER, json.dumps(uris), json.dumps(TEXTS)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    labels = [y for _, y in TEXT_ROWS]
    for key in ("full", "lora"):
        assert got[key]["task"] == "text-classification"
        assert got[key]["labels"] == labels and got[key]["pyfunc"] == labels
    assert got["lora"]["class"].startswith("PeftModel") and not got["full"]["class"].startswith("PeftModel")

    # the adapter computes the target base merged with α times the registered transported vector
    o = outcomes[release["vectors"]["lora"]]
    vector = catalog.download(parse_ref(o["registered"]["task_vector"]), tmp / "check" / "vector")
    merged_dir = api.apply_task_vector(release["built"]["v2"], vector, o["selected_alpha"], tmp / "check" / "merged")
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(str(merged_dir)).eval()
    batch = _batch(merged_dir)
    with torch.no_grad():
        expected = merged(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(torch.tensor(got["lora"]["logits"]), expected, rtol=0, atol=1e-5)

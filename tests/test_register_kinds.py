"""A transported model is registered with the MLflow transformers pipeline of its task kind.

A BERT sequence classifier trained here to memorise its rows goes through the real registry
(``mlflow server``) as the winner of a classification transport, and a fresh process loads it by
alias with both ``mlflow.transformers.load_model`` and pyfunc and gets the labels it was trained
to give. Image classifiers and bare encoders are saved locally and loaded back the same way.
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
import yaml
from safetensors.torch import save_file

from tests.conftest_servers import mlflow_postgres, mlflow_server, mlflow_sqlite  # noqa: F401 - fixtures
from tests.eval_models import TEXT_ROWS, bert_classifier, vit_classifier, write_images
from theseus_ops.catalog import (
    ALIAS_CANDIDATE,
    Catalog,
    CatalogConfig,
    Evaluation,
    GateConfig,
    register_base,
    register_task_vector,
    register_transported_model,
)
from theseus_ops.catalog.flavors import pipeline_task
from theseus_ops.catalog.register import _save_transformers_model
from theseus_ops.catalog.schema import evaluation_tags
from theseus_ops.errors import InputError
from theseus_ops.retry import RetryPolicy

GOOD = Evaluation(val_metric=1.0, test_metric=1.0, base_test_metric=0.33, general_loss=1.0, base_general_loss=1.0)
TEXTS = [t for t, _ in TEXT_ROWS]
LABELS = [y for _, y in TEXT_ROWS]
GATE = GateConfig(margin=0.05, max_general_loss_increase=0.05)


def _delta(base_dir: Path, out: Path) -> Path:
    """A full-delta task vector on the classifier head, bound to ``base_dir`` by its weights hash."""
    from theseus_ops.io.models import inspect_model_dir
    from theseus_ops.io.task_vectors import FULL_DELTA, META_BASE_SHA, META_BASE_TYPE, META_FORMAT, META_VECTOR_FORMAT

    info = inspect_model_dir(base_dir)
    tensors = {"classifier.weight": torch.full(info.shapes["classifier.weight"], 0.01)}
    save_file(tensors, str(out), metadata={META_FORMAT: "1", META_VECTOR_FORMAT: FULL_DELTA,
                                           META_BASE_SHA: info.sha256(), META_BASE_TYPE: info.model_type})
    return out


def _mlmodel(path: Path) -> dict:
    return yaml.safe_load((path / "MLmodel").read_text())


def test_classifier_registered_as_text_classification_and_served_by_alias(mlflow_server, tmp_path):  # noqa: F811
    catalog = Catalog(CatalogConfig(tracking_uri=mlflow_server.url, experiment=f"k-{uuid.uuid4().hex[:6]}",
                                    retry=RetryPolicy(attempts=2, base_delay=0.05)))
    v1, v2 = bert_classifier(tmp_path / "v1", steps=0), bert_classifier(tmp_path / "v2", steps=3)
    tuned = bert_classifier(tmp_path / "tuned")  # the winner: memorises TEXT_ROWS
    base_line, vectors, name = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("bert", "topic-tv", "topic-serving"))
    b1, b2 = register_base(catalog, base_line, "r1", v1).ref, register_base(catalog, base_line, "r2", v2).ref
    tv = register_task_vector(catalog, vectors, _delta(v1, tmp_path / "tv.safetensors"), task="topic",
                              base_model=base_line, base_version=b1.version, dataset="file:///data/topic",
                              metric="accuracy", evaluation=evaluation_tags(task_kind="classification")).ref
    reg = register_transported_model(catalog, name, tuned, source_vector=tv, target_base=b2, method="naive",
                                     alpha=1.0, evaluation=GOOD, gate=GATE)
    assert reg.created and reg.decision.candidate

    import transformers

    local = transformers.pipeline("text-classification", model=str(tuned), tokenizer=str(tuned))
    expected = [r["label"] for r in local(TEXTS)]
    assert expected == LABELS  # the model really is the trained winner
    script = (
        "import json, sys, mlflow\n"
        "uri, texts = sys.argv[1], json.loads(sys.argv[2])\n"
        "info = mlflow.models.get_model_info(uri)\n"
        "pipe = mlflow.transformers.load_model(uri)\n"
        "native = [r['label'] for r in pipe(texts)]\n"
        "pred = mlflow.pyfunc.load_model(uri).predict(texts)\n"
        "print(json.dumps({'task': info.flavors['transformers']['task'], 'pipeline': pipe.task,\n"
        "                  'inputs': info.signature.inputs.to_dict(), 'outputs': info.signature.outputs.to_dict(),\n"
        "                  'example': info.saved_input_example_info is not None,\n"
        "                  'native': native, 'pyfunc': list(pred['label']), 'score': list(pred['score'])}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script, f"models:/{name}@{ALIAS_CANDIDATE}", json.dumps(TEXTS)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["task"] == got["pipeline"] == "text-classification"
    assert got["native"] == expected and got["pyfunc"] == expected
    assert all(0.5 < s <= 1.0 for s in got["score"])
    assert got["inputs"][0]["type"] == "string" and {c["name"] for c in got["outputs"]} == {"label", "score"}
    assert got["example"]


def test_image_classifier_and_bare_encoder_flavors(tmp_path):
    import mlflow
    import transformers

    images = write_images(tmp_path / "images")
    vit = vit_classifier(tmp_path / "vit", images)
    _save_transformers_model(vit, tmp_path / "vit-mlflow", task_kind="image-classification")
    meta = _mlmodel(tmp_path / "vit-mlflow")
    assert meta["flavors"]["transformers"]["task"] == "image-classification" and meta["signature"]["inputs"]
    assert (tmp_path / "vit-mlflow" / "input_example.json").is_file()
    pred = mlflow.pyfunc.load_model(str(tmp_path / "vit-mlflow")).predict([str(p) for p, _ in images])
    # a row per image, its labels best first: the best is the memorised one
    assert [top["label"] for top in pred[0]] == [y for _, y in images]

    bert = bert_classifier(tmp_path / "bert", steps=0)
    bare = tmp_path / "bare"
    encoder = transformers.BertModel.from_pretrained(str(bert)).eval()
    encoder.save_pretrained(str(bare))
    transformers.AutoTokenizer.from_pretrained(str(bert)).save_pretrained(str(bare))
    assert pipeline_task("classification", bare) == "feature-extraction"  # no head: nothing else runs it
    _save_transformers_model(bare, tmp_path / "bare-mlflow", task_kind="classification")
    assert _mlmodel(tmp_path / "bare-mlflow")["flavors"]["transformers"]["task"] == "feature-extraction"
    features = mlflow.pyfunc.load_model(str(tmp_path / "bare-mlflow")).predict([TEXTS[0]])
    tok = transformers.AutoTokenizer.from_pretrained(str(bare))
    with torch.no_grad():
        hidden = encoder(**tok(TEXTS[0], return_tensors="pt")).last_hidden_state[0]
    assert torch.allclose(torch.as_tensor(features, dtype=torch.float32).reshape(hidden.shape), hidden, atol=1e-5)


def test_pipeline_task_by_kind_and_head(tmp_path):
    def model(arch: str) -> Path:
        d = tmp_path / arch
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"architectures": [arch]}))
        return d

    assert pipeline_task("generation", model("LlamaForCausalLM")) == "text-generation"
    assert pipeline_task("perplexity", model("GPT2LMHeadModel")) == "text-generation"
    assert pipeline_task("custom", model("ViTForImageClassification")) == "image-classification"
    assert pipeline_task("custom", model("RobertaForSequenceClassification")) == "text-classification"
    with pytest.raises(InputError, match="no MLflow pipeline"):
        pipeline_task("custom", model("T5ForConditionalGeneration"))

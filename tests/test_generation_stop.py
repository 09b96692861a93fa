"""A registered transported model stops generating at the end of the task's answer (issue 14).

The demo tasks end every answer at a newline; the stop ships in the registered model's generation
config, so a consumer loading it by alias in a fresh process gets the answer and nothing after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import torch
import transformers

from tests.catalog_support import make_delta
from tests.conftest_servers import mlflow_sqlite  # noqa: F401 - fixture
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
from theseus_ops.demo import train
from theseus_ops.demo.tokenizer import encode_bytes, save_tokenizer

PROMPT = "Q: lookup a=7 b=2 a\nA: "


def _bigram_model(path, chain: list[tuple[str, str]], scale: float = 10.0):
    """A Llama whose next token depends only on the current one (attention and MLP write nothing):
    each ``(a, b)`` of ``chain`` makes ``a`` predict ``b``. Greedy decoding then follows the chain."""
    config = train.ModelShape(32, 2, 2, 1, 64, head_dim=16).config(64)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for channel, (a, b) in enumerate(chain):
            model.model.embed_tokens.weight[encode_bytes(a)[0], channel] = 1.0
            model.lm_head.weight[encode_bytes(b)[0], channel] = scale
    model.save_pretrained(str(path))
    save_tokenizer(path)
    return path


def test_registered_model_stops_at_the_answer(mlflow_sqlite, tmp_path):  # noqa: F811
    mlflow_server = mlflow_sqlite  # the stop is in the model files, whatever the backend store
    # the answer "7", its newline, then text that is not the answer ("Q" forever)
    target = _bigram_model(tmp_path / "v2", [(" ", "7"), ("7", "\n"), ("\n", "Q"), ("Q", "Q")])
    source = _bigram_model(tmp_path / "v1", [(" ", "7"), ("7", "\n"), ("\n", "Q"), ("Q", "Q")], scale=9.0)
    raw = transformers.pipeline("text-generation", model=str(target), tokenizer=str(target))
    unstopped = raw(PROMPT, max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert unstopped == PROMPT + "7\nQQQQ"  # without the stop the model runs on to max_new_tokens

    catalog = Catalog(CatalogConfig(tracking_uri=mlflow_server.url, experiment=f"t-{uuid.uuid4().hex[:6]}"))
    base_line, name = f"stop-{uuid.uuid4().hex[:6]}", f"stop-serving-{uuid.uuid4().hex[:6]}"
    b1 = register_base(catalog, base_line, "r1", source)
    b2 = register_base(catalog, base_line, "r2", target)
    tv = register_task_vector(catalog, f"{base_line}-lookup", make_delta(source, tmp_path / "tv.safetensors"),
                              task="lookup", base_model=base_line, base_version=b1.ref.version,
                              dataset=(tmp_path / "data").as_uri(), metric="exact_match")
    reg = register_transported_model(catalog, name, target, source_vector=tv.ref, target_base=b2.ref,
                                     method="naive", alpha=1.0, gate=GateConfig(margin=0.05),
                                     evaluation=Evaluation(0.9, 0.9, 0.5, general_loss=2.0, base_general_loss=2.0))
    assert reg.decision.candidate

    script = (
        "import json, sys, mlflow\n"
        "pipe = mlflow.transformers.load_model(sys.argv[1])\n"
        "text = pipe(sys.argv[2], max_new_tokens=6, do_sample=False)[0]['generated_text']\n"
        "print(json.dumps({'text': text, 'eos': pipe.model.generation_config.eos_token_id}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script, f"models:/{name}@{ALIAS_CANDIDATE}", PROMPT], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["text"] == PROMPT + "7\n"
    assert encode_bytes("\n")[0] in result["eos"]

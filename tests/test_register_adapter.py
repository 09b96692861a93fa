"""A transported LoRA is registered as a PEFT adapter on its target base, not as a merged copy (issue 11).

The registered artifact holds the adapter (its LoRA factors scaled by the chosen α) and the
tokenizer, and none of the base's weights; the version names its base. A fresh process, offline,
with the registering machine's copy of the base gone, loads it by alias through
``load_registered``, gets a ``PeftModel`` and the logits of the base merged with α times the
adapter, computed here. Registering the same transport again creates no version.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model

from tests.catalog_support import make_base
from tests.conftest_servers import mlflow_sqlite  # noqa: F401 - fixture
from theseus_ops import api
from theseus_ops.catalog import (
    ALIAS_CANDIDATE,
    Catalog,
    CatalogConfig,
    Evaluation,
    GateConfig,
    register_base,
    register_task_vector,
    register_transported_adapter,
)
from theseus_ops.catalog.schema import TransportedModelTags
from theseus_ops.errors import InputError
from theseus_ops.retry import RetryPolicy

ALPHA = 0.5  # not 1: the registered adapter must carry the chosen scale
GOOD = Evaluation(val_metric=0.9, test_metric=0.9, base_test_metric=0.5, general_loss=2.0, base_general_loss=2.0)
IDS = [[5, 17, 33, 2, 91, 140, 7, 250], [60, 61, 62, 63, 64, 65, 66, 67]]


def _adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A PEFT LoRA on every projection of ``base_dir``'s Llama, with non-zero random factors."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base_dir))
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    get_peft_model(model, config).save_pretrained(str(out))
    return out


def _artifacts(catalog: Catalog, run_id: str, path: str) -> dict[str, int]:
    """Every file under ``path`` of the run's artifacts, with its size."""
    out = {}
    for item in catalog.client.list_artifacts(run_id, path):
        if item.is_dir:
            out.update(_artifacts(catalog, run_id, item.path))
        else:
            out[item.path] = item.file_size
    return out


CONSUMER = """
import json, sys
import torch
from theseus_ops.catalog import load_registered
uri, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
pipe = load_registered(uri)
with torch.no_grad():
    logits = pipe.model(input_ids=ids).logits
pyfunc = load_registered(uri, flavor="pyfunc")
text = pyfunc.predict(["theseus ports"])
try:
    import mlflow
    mlflow.transformers.load_model(uri)  # MLflow alone needs the base at the registering worker's path
    plain = "loaded"
except Exception as exc:
    plain = type(exc).__name__
print(json.dumps({"class": type(pipe.model).__name__, "task": pipe.task, "logits": logits.tolist(),
                  "eos": pipe.model.generation_config.eos_token_id, "pyfunc_config": dict(pyfunc.model_config),
                  "pyfunc_text": list(text), "plain": plain}))
"""


def test_lora_registered_as_adapter_loads_by_alias_in_a_fresh_process(mlflow_sqlite, tmp_path):  # noqa: F811
    catalog = Catalog(CatalogConfig(tracking_uri=mlflow_sqlite.url, experiment=f"a-{uuid.uuid4().hex[:6]}",
                                    retry=RetryPolicy(attempts=2, base_delay=0.05)))
    v1, v2 = make_base(tmp_path / "v1", seed=0), make_base(tmp_path / "v2", seed=1)
    base_line, vectors, name = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("llama", "upper-lora", "upper-lora-serving"))
    b1, b2 = register_base(catalog, base_line, "r1", v1).ref, register_base(catalog, base_line, "r2", v2).ref
    tv = register_task_vector(catalog, vectors, _adapter(v1, tmp_path / "tv-v1", seed=1), task="upper",
                              base_model=base_line, base_version=b1.version, dataset="file:///data/upper",
                              metric="exact_match").ref
    ported = _adapter(v2, tmp_path / "tv-v2", seed=2)  # what a transport onto v2 would have written
    worker_base = shutil.copytree(v2, tmp_path / "worker" / "v2")  # the registering worker's copy of the base
    args = dict(source_vector=tv, target_base=b2, method="theseus", alpha=ALPHA, evaluation=GOOD,
                gate=GateConfig(margin=0.05))
    with pytest.raises(InputError, match="does not hold the weights"):
        register_transported_adapter(catalog, name, ported, base_dir=v1, **args)
    reg = register_transported_adapter(catalog, name, ported, base_dir=worker_base, **args)
    assert reg.created and reg.decision.candidate
    tags = TransportedModelTags.from_tags(reg.version.tags, name)
    assert tags.format == "lora" and tags.is_adapter and tags.base == b2
    assert catalog.get_alias(name, ALIAS_CANDIDATE).version == reg.version.version

    # the artifact: the adapter and the tokenizer, no copy of the base's weights
    files = _artifacts(catalog, reg.version.run_id, "model")
    weights = {p: size for p, size in files.items() if p.endswith((".safetensors", ".bin", ".pt"))}
    assert set(weights) == {"model/peft/adapter_model.safetensors"}
    assert "model/components/tokenizer/tokenizer.json" in files
    assert not any(p.startswith("model/model/") for p in files)
    adapter_bytes = (ported / "adapter_model.safetensors").stat().st_size  # the same factors, scaled
    assert abs(weights["model/peft/adapter_model.safetensors"] - adapter_bytes) < 0.05 * adapter_bytes
    base_bytes = sum(f.stat().st_size for f in v2.glob("*.safetensors"))
    assert sum(files.values()) < base_bytes / 2

    # the same transport again: found, nothing created, no alias moved
    again = register_transported_adapter(catalog, name, ported, base_dir=worker_base, **args)
    assert not again.created and again.version.version == reg.version.version
    assert [v.version for v in catalog.search_versions(name)] == [reg.version.version]

    # what the consumer must get: v2 merged with α times the adapter, computed here
    merged_dir = api.apply_task_vector(v2, ported, ALPHA, tmp_path / "merged")
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    with torch.no_grad():
        expected = merged(input_ids=torch.tensor(IDS)).logits
        base_logits = transformers.AutoModelForCausalLM.from_pretrained(str(v2)).eval()(
            input_ids=torch.tensor(IDS)).logits
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter changes the model

    shutil.rmtree(worker_base)  # the path MLflow recorded is gone: the consumer must fetch the base itself
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_sqlite.url, "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "THESEUS_CACHE_DIR": str(tmp_path / "consumer-cache")}
    proc = subprocess.run([sys.executable, "-c", CONSUMER, f"models:/{name}@{ALIAS_CANDIDATE}", json.dumps(IDS)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["class"].startswith("PeftModel") and got["task"] == "text-generation"
    torch.testing.assert_close(torch.tensor(got["logits"]), expected, rtol=0, atol=1e-5)
    assert got["plain"] != "loaded"
    # the stop ("\n") ships in the model's config, as a merged model's generation config has it
    newline = transformers.AutoTokenizer.from_pretrained(str(v2)).encode("\n", add_special_tokens=False)
    assert len(newline) == 1 and newline[0] in got["eos"] and newline[0] in got["pyfunc_config"]["eos_token_id"]
    assert len(got["pyfunc_text"]) == 1 and isinstance(got["pyfunc_text"][0], str)
    cached = tmp_path / "consumer-cache" / "bases" / base_line
    assert [p.name.split("-")[0] for p in cached.iterdir()] == [b2.version]

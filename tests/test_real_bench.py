"""``bench quality --family real``: the quality protocol on the real fixtures, and its bad input.

The run here is the smallest that still means something: the MiniLM classifier's LoRA onto its
permuted release, three methods, two α values, 16 val/test rows. The whole grid (both models, both
vectors, both releases, every method) is a benchmark (BENCHMARKS.md), not a test.
"""

from __future__ import annotations

import json

import pytest

from tests.real_support import real_test
from theseus_ops.cli import main


@pytest.mark.parametrize("args, message", [
    (["--limit", "0"], "--limit must be at least 1"),
    (["--methods", "theseus,nope"], "unknown method(s) ['nope']"),
    (["--targets", "v9"], "unknown target release(s) ['v9']"),
    (["--models", "gpt5"], "unknown model(s) ['gpt5']"),
    (["--vectors", ","], "--vectors is empty"),
    (["--alphas", "a"], "--alphas must be comma-separated numbers"),
])
def test_real_bench_bad_options_exit_2_before_any_work(tmp_path, capsys, args, message):
    assert main(["-q", "bench", "quality", "--family", "real", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_real_only_options_are_refused_for_the_demo_family(tmp_path, capsys):
    assert main(["-q", "bench", "quality", "--family", "micro", "--out", str(tmp_path), "--vectors", "lora"]) == 2
    assert "--vectors applies to --family real only" in capsys.readouterr().err


@real_test
def test_real_bench_ports_the_minilm_lora_and_scores_it_like_the_workflow(tmp_path):
    from theseus_ops.demo.real.bench import RealBenchConfig, run_real_quality
    from theseus_ops.evaluation.recipe import CalibrationRecipe

    cfg = RealBenchConfig(models=("minilm",), vectors=("lora",), targets=("v2-perm",),
                          methods=("theseus", "naive", "gradfix"), alphas=(0.0, 1.0), rows=16,
                          calibration=CalibrationRecipe.parse("task=32,text=0,probes=16,max_length=48"),
                          oracle_rows=4)
    results = run_real_quality(cfg, tmp_path, progress=lambda _m: None)

    source = results["source"]["minilm"]
    assert source["metric"] == "accuracy" and source["lora"]["accuracy"] > source["base"]["accuracy"] + 0.2
    (cell,) = results["cells"]
    methods = cell["methods"]
    theseus, naive = methods["theseus"], methods["naive"]
    # the permuted release computes v1's function: theseus reproduces the fine-tune, naive adds it to the
    # wrong coordinates
    assert theseus["oracle"]["error"] < 1e-2 < naive["oracle"]["error"]
    assert theseus["oracle"]["error"] < theseus["oracle"]["baseline"] / 10
    assert theseus["recovered"] is not None and theseus["recovered"] > 0.8
    assert theseus["alpha"] == 1.0 and cell["selected"] == "theseus"
    assert theseus["transport_seconds"] > 0 and theseus["peak_rss_mib"] > 100
    assert theseus["general"]["name"] == "general_accuracy" and "general_change" in theseus
    assert "not_applicable" in methods["gradfix"] and "LoRA" in methods["gradfix"]["not_applicable"]
    assert methods["base"]["recovered"] == 0.0
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["cells"][0]["selected"] == "theseus"
    table = (tmp_path / "table.md").read_text()
    assert "| minilm | lora | v2-perm | theseus ✓ | 1 |" in table
    assert "| minilm | lora | v2-perm | gradfix | n/a" in table

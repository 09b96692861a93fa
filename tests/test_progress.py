"""Progress lines of long steps (issue 14): through ``logging`` so they reach Airflow's task log.

The family build says stage k of N and step n of N with elapsed time; prepare says space k of n;
the throttle reports every tenth of a loop (or every 30 s), never every step of a long one. Also
the task-side silencing of third-party progress bars, and the terminal summary's small items.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

from tests.catalog_support import make_base
from theseus_ops import api
from theseus_ops.config import PrepareConfig
from theseus_ops.demo import family
from theseus_ops.progress import Ticker
from theseus_ops.workflow.summary import aligned, not_applicable, round_numbers, table


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("theseus_ops")]


def test_ticker_reports_first_last_and_every_tenth():
    ticker = Ticker(100, every_s=3600)
    due = [i for i in range(1, 101) if ticker.due(i)]
    assert due == [1, *range(10, 101, 10)]
    assert [i for i in range(1, 4) if Ticker(3, every_s=3600).due(i)] == [1, 2, 3]
    slow = Ticker(1000, every_s=0.0)  # time-based: everything is due once the interval is 0
    assert all(slow.due(i) for i in range(2, 9))


def test_family_build_logs_stages_and_steps(tmp_path, caplog):
    cfg = family.family_config("micro")
    with caplog.at_level(logging.INFO, logger="theseus_ops"):
        family.build_family(cfg, tmp_path)  # no callback: progress goes to logging
    lines = _messages(caplog)
    stages = len(family.RELEASES) + len(cfg.skills) + len(cfg.lora_skills)
    assert any(re.match(rf"family micro: stage 1/{stages} v1: started \(\d+s elapsed\)$", x) for x in lines)
    step = re.compile(rf"family micro: stage 1/{stages} v1 pretraining: step (\d+)/{cfg.pretrain.steps}, "
                      r"loss \d+\.\d{3}, \d+\.\d s$")
    steps = [int(m.group(1)) for line in lines if (m := step.match(line))]
    assert steps[0] == 1 and steps[-1] == cfg.pretrain.steps
    assert any(re.match(rf"family micro: stage {stages}/{stages} .* in \d+\.\ds \(\d+s elapsed\)$", x) for x in lines)
    assert lines[-1].startswith("family micro: built in ")


def test_long_training_is_throttled(caplog):
    from theseus_ops.demo import train

    seen: list[str] = []
    config = train.ModelShape(16, 1, 2, 1, 32, head_dim=8).config(32)
    data = train.window_data(["def f(x):\n    return x\n"] * 4, 16)
    train.run_training(train.new_model(config, 0), data, train.TrainSpec(50, 2, 1e-3, 2), 0, progress=seen.append,
                       label="t")
    assert [int(re.match(r"t: step (\d+)/50", s).group(1)) for s in seen] == [1, *range(5, 51, 5)]


def test_prepare_logs_space_k_of_n(tmp_path, caplog):
    v1, v2 = make_base(tmp_path / "v1", seed=0), make_base(tmp_path / "v2", seed=5)
    with caplog.at_level(logging.INFO, logger="theseus_ops"):
        alignment = api.prepare(PrepareConfig(str(v1), str(v2), method="theseus-data-free", device="cpu"),
                                tmp_path / "a.safetensors")
    n = len(alignment.maps)
    spaces = [m for m in _messages(caplog) if m.startswith("maps: space ")]
    assert spaces and spaces[0].startswith(f"maps: space 1/{n} (") and spaces[-1].startswith(f"maps: space {n}/{n} (")
    assert any(m.startswith("statistics: ") and " examples, " in m for m in _messages(caplog))


def test_task_side_silences_third_party_progress_bars():
    script = (
        "import json, os, sys\n"
        "sys.path.insert(0, 'plugins')\n"
        "import theseus_airflow.dag_support  # noqa: F401\n"
        "import warnings\n"
        "import huggingface_hub.utils as hub, mlflow.environment_variables as mv\n"
        "print(json.dumps({'hub': hub.are_progress_bars_disabled(), "
        "'mlflow': mv.MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get(), 'warnings': warnings.showwarning.__module__}))\n"
    )
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "TQDM_DISABLE")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["hub"] is True and out["mlflow"] is False
    assert out["warnings"] != "warnings"  # warnings become log records (ours, or Airflow's structlog), not stderr


def _outcome(vector: str, task: str, gate: str) -> dict:
    score = {"exact_match": 0.5, "token_accuracy": 0.75, "examples": 8}
    return {"vector": vector, "task": task, "metric": "exact_match", "base": {"val": score, "test": score},
            "methods": {"naive": {"not_applicable": "naive needs identical shapes, but model.embed_tokens.weight is "
                                                    "[259, 64] in the source and [259, 96] in the target; use "
                                                    "--method theseus or pad"},
                        "pad": {"alpha": 1.0, "val": score, "test": score}},
            "selected": "pad", "selected_test": 0.5, "general_loss_change": 0.0123456,
            "registered": {"model": f"{vector}-serving/1", "gate": gate, "candidate": True}}


def test_summary_cells_are_readable():
    gate = "passed: test gain 0.0234375 >= margin 0.01; general loss change 0.0123456 <= 0.05"
    outcomes = [_outcome("t-upper/1", "upper", gate), _outcome("t-lookup/1", "lookup", gate)]
    head, rows, _failed = table(["pad", "naive"], outcomes)
    assert [r[1] for r in rows] == ["upper", "lookup"]  # the order given (run order), not alphabetical
    naive = head.index("naive val/test (α)")
    assert rows[0][naive] == "n/a: shapes differ"
    assert rows[0][-1] == "passed: test gain 0.0234 >= margin 0.01; general loss change 0.0123 <= 0.05"
    assert round_numbers("0.125 and 3 and 0.0001234") == "0.125 and 3 and 0.000123"
    assert not_applicable("gradfix masks full deltas; this task vector is a LoRA adapter") == "n/a: LoRA adapter"
    text = aligned(head, rows).splitlines()
    starts = {line.index("passed") for line in text[2:]}
    assert len(starts) == 1 and text[0].index("gate") == starts.pop()  # the gate column lines up


def test_weight_completion_logs_space_k_of_n_group_by_group(tmp_path, caplog):
    """The completion rounds are most of a real model's prepare (a minute a round on SmolLM2-135M)."""
    from tests import tiny
    from theseus_ops.config import CalibrationSpec

    config = tiny.llama_config()
    tiny.save(tiny.build(config, seed=0), tmp_path / "a")
    tiny.save(tiny.build(config, seed=1), tmp_path / "b")
    calibration = tiny.calibration(tmp_path / "cal.safetensors", rows=4)  # too few rows: spaces stay open
    with caplog.at_level(logging.INFO, logger="theseus_ops"):
        api.prepare(PrepareConfig(str(tmp_path / "a"), str(tmp_path / "b"), method="theseus", device="cpu",
                                  calibration=CalibrationSpec(str(calibration))), tmp_path / "a.safetensors")
    messages = _messages(caplog)
    opened = [m for m in messages if m.startswith("maps: completing ") and "from the base weights" in m]
    assert opened, messages
    k, groups = (int(n) for n in re.match(r"maps: completing (\d+) .* in (\d+) independent group", opened[0]).groups())
    lines = [m for m in messages if m.startswith("maps: completion: space ")]
    assert lines[0].startswith("maps: completion: space ") and f"(group 1/{groups}, " in lines[0]
    assert lines[-1].startswith(f"maps: completion: space {k}/{k} (group {groups}/{groups}, ")
    # the summary, each group's line and each statistics line say how much memory the process holds
    summaries = [m for m in messages if re.match(rf"maps: completion: {k} space\(s\) in {groups} group\(s\); "
                                                 r"rounds re-estimated \d+(/\d+)* and moved \d+(/\d+)*, ", m)]
    statistics = [m for m in messages if m.startswith("statistics: ")]
    for line in summaries + lines + statistics:
        resident = re.search(r", (\d+\.\d) GiB resident$", line)
        assert resident and 0.05 < float(resident.group(1)) < 64, line
    assert summaries and statistics

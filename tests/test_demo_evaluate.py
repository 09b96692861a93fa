"""The evaluation harness: every metric on known inputs, bad input, the CLI, and the bench on micro."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from theseus_ops.cli import main
from theseus_ops.demo import evaluate as ev
from theseus_ops.demo import family
from theseus_ops.demo.bench import BenchConfig, _share, markdown_table, run_quality
from theseus_ops.demo.skills import load_split
from theseus_ops.demo.tokenizer import encode_bytes
from theseus_ops.errors import InputError


def test_exact_match_on_known_inputs():
    assert ev.exact_match([[1, 2], [3], [4, 5]], [[1, 2], [3, 0], [4, 5]]) == pytest.approx(2 / 3)
    assert ev.exact_match([[7]], [[7]]) == 1.0
    with pytest.raises(ValueError):
        ev.exact_match([], [])


def test_token_accuracy_on_known_logits():
    # position t predicts label t+1; labels -100 are ignored
    logits = torch.zeros(1, 4, 5)
    logits[0, 0, 3] = logits[0, 1, 1] = logits[0, 2, 4] = 1.0
    labels = torch.tensor([[-100, 3, 2, 4]])
    assert ev.token_accuracy(logits, labels) == (2, 3)


def test_lm_loss_from_logits_matches_manual_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen)
    ids = torch.randint(0, 7, (2, 5), generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    total, count = ev.lm_loss_from_logits(logits, ids, mask)
    manual = [-F.log_softmax(logits[b, t].double(), -1)[ids[b, t + 1]] for b in range(2) for t in range(4)
              if mask[b, t + 1]]
    assert count == 6 and total == pytest.approx(float(sum(manual)), rel=1e-12)


class Scripted(torch.nn.Module):
    """A 'model' whose next token is always (last real token + 1): known greedy output and losses."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        logits = torch.full((*input_ids.shape, 300), -10.0)
        logits.scatter_(-1, (input_ids + 1).clamp(max=299)[..., None], 10.0)
        return type("Out", (), {"logits": logits})()


def test_greedy_and_scores_with_a_scripted_model():
    model = Scripted()
    prompts = [encode_bytes("ab"), encode_bytes("x")]
    assert ev.greedy(model, prompts, 3) == [encode_bytes("cde"), encode_bytes("yz{")]
    rows = [("ab", "cd"), ("x", "yq"), ("m", "no")]
    score = ev.score_rows(model, rows)
    assert score.exact_match == pytest.approx(2 / 3) and score.examples == 3
    assert score.token_accuracy == pytest.approx(5 / 6)
    # the LM loss of the scripted model on text that always steps +1 is log(1 + 299 e^-20) per token
    expected = math.log(1 + 299 * math.exp(-20))
    assert ev.lm_loss(model, "abcdefgh", length=4) == pytest.approx(expected, rel=1e-6)


def test_lm_loss_of_a_real_model_matches_manual_computation(micro):
    model, _tok = ev.load_for_eval(micro.model("v1"))
    text = micro.heldout.read_text()[:300]
    ids = torch.tensor([encode_bytes(text)[:100]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    manual = F.cross_entropy(logits[0, :-1].double(), ids[0, 1:]).item()
    assert ev.lm_loss(model, text[:100], length=100) == pytest.approx(manual, rel=1e-6)


def test_recovered_share():
    assert _share(0.5, 0.1, 0.9) == pytest.approx(0.5)
    assert _share(0.5, 0.4, 0.4) is None


def test_recovered_share_averaged_per_target():
    from theseus_ops.demo.bench import recovered_by_target

    results = {"cells": [
        {"target": "t1", "selected": "pad", "methods": {"pad": {"recovered": 0.8}, "theseus": {"recovered": 0.4},
                                                         "naive": {"not_applicable": "shapes"}}},
        {"target": "t1", "selected": "theseus", "methods": {"pad": {"recovered": 0.2}, "theseus": {"recovered": 0.6}}},
        {"target": "t2", "selected": "base", "methods": {"base": {"recovered": 0.0}, "pad": {"recovered": None}}},
    ]}
    shares = recovered_by_target(results)
    assert shares["t1"] == pytest.approx({"pad": 0.5, "theseus": 0.5, "selected": 0.7})
    assert shares["t2"] == {"base": 0.0, "selected": 0.0}  # a task without a share is left out, not a zero


@pytest.mark.parametrize("content,message", [
    ('{"prompt": "a", "answer": "b"}\nnot json\n', "not valid JSON"),
    ('{"prompt": "a"}\n', "string 'prompt' and 'answer'"),
    ('["a", "b"]\n', "string 'prompt' and 'answer'"),
    ('{"prompt": "", "answer": "b"}\n', "non-empty"),
    ("\n\n", "empty"),
])
def test_malformed_task_jsonl_is_an_input_error(tmp_path, content, message):
    (tmp_path / "test.jsonl").write_text(content)
    with pytest.raises(InputError, match=message):
        load_split(tmp_path, "test")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    # one root per session: the second module finds this family in the cache instead of rebuilding it
    return family.build_family(family.family_config("micro"), tmp_path_factory.getbasetemp() / "families",
                               progress=lambda _m: None)


def test_evaluate_cli_prints_metrics(micro, capsys):
    args = ["-q", "evaluate", "--model", str(micro.model("v1")), "--task", str(micro.task("upper")), "--split", "val",
            "--heldout", str(micro.heldout)]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["examples"] == 8 and 0 <= first["exact_match"] <= 1 and first["lm_loss"] > 0
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in first.items() if k != "seconds"} == {k: v for k, v in second.items() if k != "seconds"}


def test_evaluate_cli_bad_input_exits_2(micro, tmp_path, capsys):
    no_tok = tmp_path / "model"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((micro.model("v1") / f).read_bytes())
    assert main(["-q", "evaluate", "--model", str(no_tok), "--task", str(micro.task("upper"))]) == 2
    assert "no tokenizer" in capsys.readouterr().err
    task = tmp_path / "task"
    task.mkdir()
    (task / "test.jsonl").write_text("")
    assert main(["-q", "evaluate", "--model", str(micro.model("v1")), "--task", str(task)]) == 2
    err = capsys.readouterr().err.strip()
    assert "empty" in err and len(err.splitlines()) == 1
    (task / "test.jsonl").write_text("{oops\n")
    assert main(["-q", "evaluate", "--model", str(micro.model("v1")), "--task", str(task)]) == 2


def test_bench_on_micro_is_reproducible(micro, tmp_path):
    cfg = BenchConfig(family="micro", alphas=(0.0, 1.0), cache=str(micro.root.parent), targets=("v2-wide-shuffled",
                      "v2-same"), plots=False)
    first = run_quality(cfg, tmp_path / "a", progress=lambda _m: None)
    second = run_quality(cfg, tmp_path / "b", progress=lambda _m: None)

    def numbers(results):
        return [(c["target"], c["task"], m, r.get("alpha"), r.get("test")) for c in results["cells"]
                for m, r in sorted(c["methods"].items())]

    assert numbers(first) == numbers(second)
    cell = next(c for c in first["cells"] if c["target"] == "v2-same" and c["task"] == "upper")
    assert {"base", "pad", "naive", "theseus", "theseus-data-free", "gradfix", "finetuned"} <= set(cell["methods"])
    shuffled = next(c for c in first["cells"] if c["target"] == "v2-wide-shuffled" and c["task"] == "upper")
    assert "not_applicable" in shuffled["methods"]["naive"] and "not_applicable" in shuffled["methods"]["gradfix"]
    assert any(c["task"] == "upper-lora" for c in first["cells"])
    table = markdown_table(first)
    assert "| v2-same | upper |" in table and (tmp_path / "a" / "table.md").is_file()
    assert "## Share of the direct fine-tune's gain recovered" in table and "\n| v2-same | " in table

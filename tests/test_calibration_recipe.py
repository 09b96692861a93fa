"""Calibration recipes: which inputs both bases see while maps are estimated, built, recorded and checked.

On the tiny trained models of ``tests/eval_models.py``: the task rows are the evaluator's own, the text
rows are windows of the held-out text in the model's tokenizer, probe rows are seeded ids of the shared
vocabulary, and the recipe travels with the file into the alignment's provenance.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file

from tests import eval_models as em
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, PrepareConfig
from theseus_ops.errors import InputError
from theseus_ops.evaluation import TaskConfig, evaluator_for
from theseus_ops.evaluation.calibration import build_calibration, shared_vocabulary
from theseus_ops.evaluation.recipe import CalibrationRecipe
from theseus_ops.io.calibration import load_calibration
from theseus_ops.workflow import WorkflowConfig


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("recipes")


@pytest.fixture(scope="module")
def lm_dir(root):
    return em.causal_lm(root / "lm", steps=20)


@pytest.fixture(scope="module")
def lm_task(root):
    task = root / "lm-task"
    for split in ("train", "val", "test"):
        em.write_jsonl(task / f"{split}.jsonl", [{"prompt": p, "answer": a} for p, a in em.LM_ROWS])
    (task / "heldout.txt").write_text(em.LM_TEXT * 4)
    return task


def _generation(task):
    return evaluator_for(TaskConfig(dataset=task, heldout=task / "heldout.txt"), report=lambda _m: None)


def test_a_recipe_mixes_task_rows_text_windows_and_probes(lm_dir, lm_task):
    recipe = CalibrationRecipe(task_rows=3, text_rows=4, probe_rows=2, max_length=12)
    evaluator = _generation(lm_task)
    vocab = shared_vocabulary(lm_dir, lm_dir)
    built = build_calibration(evaluator, lm_dir, recipe, vocab=vocab, heldout=lm_task / "heldout.txt")
    t = built.tensors
    assert built.used == {"task_rows": 3, "text_rows": 4, "probe_rows": 2}
    assert set(t) == {"input_ids", "attention_mask", "labels"} and t["input_ids"].shape == (9, 12)
    task = evaluator.calibration(lm_dir, 3)
    width = min(12, task["input_ids"].shape[1])
    assert torch.equal(t["input_ids"][:3, :width], task["input_ids"][:, :width])
    assert torch.equal(t["labels"][:3, :width], task["labels"][:, :width])
    tok = transformers.AutoTokenizer.from_pretrained(str(lm_dir))
    text = tok(em.LM_TEXT * 4, add_special_tokens=False)["input_ids"]
    for i in range(4):  # consecutive windows of the held-out text, unlabelled (GradFix's loss stays on answers)
        n = int(t["attention_mask"][3 + i].sum())
        assert t["input_ids"][3 + i, :n].tolist() == text[12 * i: 12 * i + n]
    assert bool((t["labels"][3:] == -100).all())
    probes = t["input_ids"][7:]
    assert bool((probes < vocab).all()) and bool((t["attention_mask"][7:] == 1).all())
    again = build_calibration(evaluator, lm_dir, recipe, vocab=vocab, heldout=lm_task / "heldout.txt")
    assert all(torch.equal(again.tensors[k], t[k]) for k in t)  # deterministic: reruns see the same rows


def test_without_answers_the_answer_tokens_leave_the_mask(lm_dir, lm_task):
    evaluator = _generation(lm_task)
    with_answers = evaluator.calibration(lm_dir, 3)
    recipe = CalibrationRecipe(task_rows=3, text_rows=0, probe_rows=0, answers=False)
    built = build_calibration(evaluator, lm_dir, recipe)
    answer = with_answers["labels"] != -100
    assert bool(answer.any())
    assert bool((built.tensors["attention_mask"][answer] == 0).all())
    assert torch.equal(built.tensors["attention_mask"][~answer], with_answers["attention_mask"][~answer])
    assert bool((built.tensors["labels"] == -100).all())


@pytest.fixture(scope="module")
def bert(root):
    return em.bert_classifier(root / "bert", steps=5)


def _topics(root, name: str, heldout_repeats: int):
    """A classification task of ``em.TEXT_ROWS`` with a held-out text of its texts repeated; (dir, evaluator)."""
    task = root / name
    for split in ("train", "val", "test"):
        em.write_jsonl(task / f"{split}.jsonl", [{"text": t, "label": y} for t, y in em.TEXT_ROWS])
    (task / "heldout.txt").write_text(" ".join(t for t, _ in em.TEXT_ROWS) * heldout_repeats)
    return task, evaluator_for(TaskConfig(task_kind="classification", dataset=task), report=lambda _m: None)


def test_a_classification_task_gets_text_rows_without_labels(root, bert):
    task, evaluator = _topics(root, "topics", 3)
    built = build_calibration(evaluator, bert, CalibrationRecipe(task_rows=4, text_rows=2, probe_rows=0, max_length=8),
                              heldout=task / "heldout.txt")
    assert set(built.tensors) == {"input_ids", "attention_mask"} and built.used["text_rows"] == 2
    assert built.tensors["input_ids"].shape[0] == 6


def test_the_recipe_travels_into_the_alignment_provenance(lm_dir, lm_task, tmp_path):
    recipe = CalibrationRecipe(task_rows=3, text_rows=2, probe_rows=0, max_length=12)
    built = build_calibration(_generation(lm_task), lm_dir, recipe, heldout=lm_task / "heldout.txt")
    path = tmp_path / "cal.safetensors"
    save_file(built.tensors, str(path), metadata=built.metadata(recipe))
    record = load_calibration(path, "tokens").recipe
    assert record == {"recipe": recipe.as_dict(), "used": built.used}
    alignment = api.prepare(PrepareConfig(str(lm_dir), str(lm_dir), CalibrationSpec(str(path))), tmp_path / "a.align")
    assert alignment.provenance["calibration"]["recipe"] == record
    assert alignment.provenance["calibration"]["rows"] == 5


@pytest.mark.parametrize("spec,message", [
    ("task=abc", "calibration task='abc' is not a whole number"),
    ("rows=3", "calibration recipe item 'rows=3': expected one of task=, text=, probes="),
    ("answers=maybe", "calibration answers='maybe': use yes or no"),
    ("task=-1", "calibration task_rows must be a whole number >= 0"),
    ("task=1,text=0,probes=0", "needs at least 2 rows in all"),
    ("max_length=1", "max_length must be at least 2"),
    ("text_file=/no/such/file.txt", "calibration text /no/such/file.txt is not a file"),
])
def test_bad_recipes_are_one_line_input_errors(spec, message):
    with pytest.raises(InputError, match=message) as err:
        CalibrationRecipe.parse(spec)
    assert "\n" not in str(err.value)


def test_the_workflow_reads_its_recipe_from_the_environment(monkeypatch):
    monkeypatch.setenv("THESEUS_CALIBRATION", "text=16,probes=8,answers=no,max_length=64")
    monkeypatch.setenv("THESEUS_CALIBRATION_ROWS", "32")
    cfg = WorkflowConfig.from_env()
    assert cfg.calibration == CalibrationRecipe(task_rows=32, text_rows=16, probe_rows=8, answers=False, max_length=64)
    assert cfg.fingerprint_options()["calibration"] == cfg.calibration.as_dict()
    assert json.dumps(cfg.fingerprint_options())  # plain JSON, part of the idempotency key
    monkeypatch.setenv("THESEUS_CALIBRATION", "probes=x")
    with pytest.raises(InputError, match="calibration probes='x' is not a whole number"):
        WorkflowConfig.from_env()
    assert WorkflowConfig().calibration == CalibrationRecipe()  # the default recipe
    assert CalibrationRecipe().as_dict() == {"task_rows": 128, "answers": True, "text_rows": 128, "text": None,
                                             "probe_rows": 128, "max_length": 128}


def test_rows_never_exceed_the_positions_the_model_has(root, bert):
    """A 64-position BERT gets rows of at most 62 tokens (text windows and probes too), whatever max_length says."""
    task, evaluator = _topics(root, "topics-positions", 40)
    positions = transformers.AutoConfig.from_pretrained(str(bert)).max_position_embeddings
    built = build_calibration(evaluator, bert, CalibrationRecipe(task_rows=2, text_rows=2, probe_rows=2,
                                                                 max_length=4 * positions),
                              vocab=shared_vocabulary(bert), heldout=task / "heldout.txt")
    assert built.tensors["input_ids"].shape[1] <= positions - 2
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(bert))
    model(**built.tensors)  # every row fits the model


def test_the_calibrate_command_writes_what_the_workflow_builds(lm_dir, lm_task, tmp_path, capsys):
    from theseus_ops.cli import main

    out = tmp_path / "cal.safetensors"
    argv = ["calibrate", "--base", str(lm_dir), "--dataset", str(lm_task),
            "--recipe", "task=3,text=2,probes=0,max_length=12", "--out", str(out)]
    assert main(argv) == 0
    assert f"{out}: 5 rows (task 3, text 2, probe 0)" in capsys.readouterr().err
    cal = load_calibration(out, "tokens")
    recipe = CalibrationRecipe(task_rows=3, text_rows=2, probe_rows=0, max_length=12)
    expected = build_calibration(_generation(lm_task), lm_dir, recipe, heldout=lm_task / "heldout.txt")
    assert all(torch.equal(cal.tensors[k], v) for k, v in expected.tensors.items())
    assert cal.recipe["recipe"] == recipe.as_dict()
    assert main(argv) == 0  # its own output is replaced on a re-run
    (tmp_path / "mine.safetensors").write_bytes(b"not ours")
    assert main([*argv[:-1], str(tmp_path / "mine.safetensors")]) == 2  # a file it did not write is never clobbered
    assert (tmp_path / "mine.safetensors").read_bytes() == b"not ours"
    assert main([*argv[:6], "task=3,probes=q", "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "calibration probes='q' is not a whole number" in err and not (tmp_path / "x.safetensors").exists()

"""The evaluation package: every task kind's metric on tiny real models whose answers are known.

The models are trained here until they memorise a few rows (``tests/eval_models.py``), so a split
with chosen labels or answers has a known score. Also: KV-cached generation against the naive
loop, a pad id that is a real token, the chat template, user evaluators by ``module:function``
and by entry point, the in-place α·δ, and sweep-and-select keeping the base when every α hurts.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

from tests import eval_models as em
from theseus_ops.catalog.schema import TaskVectorTags, evaluation_tags
from theseus_ops.errors import InputError
from theseus_ops.evaluation import (
    Candidate,
    DeltaApplier,
    NotApplicable,
    TaskConfig,
    eval_device,
    evaluator_for,
    score_at,
    sweep_and_select,
)
from theseus_ops.evaluation.decoding import greedy_generate, greedy_reference, special_ids
from theseus_ops.evaluation.generation import answer_token_accuracy, prompt_ids
from theseus_ops.evaluation.metrics import accuracy, exact_match, macro_f1, perplexity
from theseus_ops.evaluation.user import UserEvaluator
from theseus_ops.workflow.evaluation import task_config

EOS_ID = 256
# a block tag eats the newline after it (trim_blocks), so the generation prompt is a string expression
CHAT = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}{{ '\\nA: ' }}{% endif %}"


# -- fixtures: trained tiny models and their task directories ------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("evaluation")


@pytest.fixture(scope="module")
def lm_dir(root):
    path = em.causal_lm(root / "lm", steps=100)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path))
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    rows = [(tok(p, add_special_tokens=False)["input_ids"], tok(a, add_special_tokens=False)["input_ids"])
            for p, a in em.LM_ROWS]
    assert sum(a.count(0) for _, a in rows) >= 5, "the answers must contain token 0 ('!')"
    preds = greedy_reference(model, [p for p, _ in rows], 8, pad_id=EOS_ID, eos_ids=(EOS_ID,), batch_size=1)
    assert [pr[: len(a)] for pr, (_, a) in zip(preds, rows)] == [a for _, a in rows], "precondition: memorised"
    return path


@pytest.fixture(scope="module")
def lm_task(root):
    task = root / "lm-task"
    for split in ("train", "val", "test"):
        em.write_jsonl(task / f"{split}.jsonl", [{"prompt": p, "answer": a} for p, a in em.LM_ROWS])
    (task / "heldout.txt").write_text(em.LM_TEXT)
    return task


@pytest.fixture(scope="module")
def bert_dir(root):
    return em.bert_classifier(root / "bert", steps=80)


@pytest.fixture(scope="module")
def vit(root):
    images = em.write_images(root / "images" / "test")
    return em.vit_classifier(root / "vit", images, steps=80), root / "images"


def _generation(task, **kw):
    return evaluator_for(TaskConfig(dataset=task, heldout=task / "heldout.txt", **kw), report=lambda _m: None)


# -- metrics and config ------------------------------------------------------------------------------------
def test_metric_functions_on_known_inputs():
    preds, labels = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]
    assert accuracy(preds, labels) == pytest.approx(4 / 6)
    # per class F1: 0: tp1 fp1 fn1 -> 1/2; 1: tp2 fp0 fn1 -> 4/5; 2: tp1 fp1 fn0 -> 2/3
    assert macro_f1(preds, labels) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    from sklearn.metrics import f1_score

    assert macro_f1(preds, labels) == pytest.approx(f1_score(labels, preds, average="macro"))
    assert macro_f1([2, 2], [0, 0]) == 0.0 and macro_f1([1, 0], [1, 0]) == 1.0
    assert exact_match([[0, 5], [1]], [[0, 5], [2]]) == 0.5
    assert perplexity(math.log(2.0)) == pytest.approx(2.0) and perplexity(1e6) == math.inf
    with pytest.raises(ValueError):
        accuracy([], [])


def test_task_config_is_validated():
    assert TaskConfig(dataset="d").metric == "exact_match"
    assert TaskConfig(dataset="d", metric="accuracy").metric == "exact_match"  # what the workflow always meant
    assert TaskConfig(task_kind="classification", dataset="d").metric == "accuracy"
    assert TaskConfig(task_kind="perplexity", dataset="d").metric == "lm_loss"
    for kwargs, message in [({"task_kind": "regression"}, "unknown task kind"),
                            ({"task_kind": "classification", "metric": "bleu"}, "not one a classification task"),
                            ({"task_kind": "classification", "chat_template": True}, "chat_template applies"),
                            ({"task_kind": "custom", "metric": "m"}, "needs an evaluator"),
                            ({"task_kind": "custom", "metric": "m", "evaluator": "bad name!"},
                             "neither module:function"),
                            ({"evaluator": "a.b:c"}, "scores a custom task"),
                            ({"batch_size": 0}, "batch_size"), ({"max_new_tokens": True}, "max_new_tokens")]:
        with pytest.raises(InputError, match=message) as info:
            TaskConfig(**{"dataset": "d", **kwargs})
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="needs its dataset"):
        TaskConfig(task_kind="classification")


# -- generation ----------------------------------------------------------------------------------------------
def test_generation_scores_known_answers(lm_dir, lm_task, tmp_path):
    evaluator = _generation(lm_task)
    model = evaluator.load(lm_dir)
    assert evaluator.score(model, "val") == {"exact_match": 1.0, "token_accuracy": 1.0, "examples": 6}
    # two answers whose last token is wrong: exact match 4/6, one wrong token each of the 25 answer tokens
    task = shutil.copytree(lm_task, tmp_path / "task")
    rows = [{"prompt": p, "answer": a[:-1] + ("X" if k in (1, 4) else a[-1])} for k, (p, a) in enumerate(em.LM_ROWS)]
    em.write_jsonl(task / "test.jsonl", rows)
    other = _generation(task)
    other.attach(model, evaluator.processor(model))
    scores = other.score(model, "test")
    assert scores["exact_match"] == pytest.approx(4 / 6)
    assert scores["token_accuracy"] == pytest.approx(23 / 25)
    general = evaluator.general(model)
    assert general.name == "lm_loss" and general.loss == general.value > 0


def test_kv_cached_batched_generation_equals_the_naive_loop(lm_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(lm_dir)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(lm_dir))
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p, _ in em.LM_ROWS]
    prompts += [tok(t, add_special_tokens=False)["input_ids"] for t in ("Q: ba\nA: ", "the quick", "Q: ")]
    config_before = model.generation_config.to_dict()
    stopped = greedy_generate(model, prompts, 12, pad_id=EOS_ID, eos_ids=(EOS_ID,), batch_size=4)
    assert stopped == greedy_reference(model, prompts, 12, pad_id=EOS_ID, eos_ids=(EOS_ID,), batch_size=4) \
        == greedy_reference(model, prompts, 12, pad_id=EOS_ID, eos_ids=(EOS_ID,), batch_size=1)  # no padding
    assert greedy_generate(model, prompts, 12, pad_id=EOS_ID, eos_ids=(), batch_size=4) \
        == greedy_reference(model, prompts, 12, pad_id=EOS_ID, eos_ids=(), batch_size=4)  # no stop: past the end
    assert any(row[-1] == EOS_ID and len(row) < 12 for row in stopped)  # the end-of-sequence stop was exercised
    assert all(EOS_ID not in row[:-1] for row in stopped)  # nothing after the end reaches a comparison
    assert model.generation_config.to_dict() == config_before  # the model's own config is put back
    budgets = [2, 5, 1, 3, 4, 6, 2, 2, 2]
    assert [len(r) for r in greedy_generate(model, prompts, budgets, pad_id=EOS_ID, batch_size=4, eos_ids=())] \
        == budgets


def test_a_pad_id_that_is_a_real_token(lm_dir, lm_task):
    """Pad = id 0 = '!', which the prompts and answers contain: masks come from lengths, not from ids."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(lm_dir)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(lm_dir))
    tok.pad_token = "!"
    assert special_ids(model, tok) == (0, (EOS_ID,))
    batched = _generation(lm_task, batch_size=6)
    batched.attach(model, tok)
    alone = _generation(lm_task, batch_size=1)  # no padding at all
    alone.attach(model, tok)
    assert batched.score(model, "val") == alone.score(model, "val") == {"exact_match": 1.0, "token_accuracy": 1.0,
                                                                        "examples": 6}
    # the old masking (ids != pad) would have hidden every real '!' from the model: different logits
    rows = batched.encode(tok, "val")
    from theseus_ops.evaluation.batches import prompt_answer_batch

    batch = prompt_answer_batch(rows, 0)
    with torch.no_grad():
        by_length = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        by_id = model(input_ids=batch["input_ids"], attention_mask=(batch["input_ids"] != 0).long()).logits
    real = batch["attention_mask"].bool()
    assert not torch.allclose(by_length[real], by_id[real])
    assert answer_token_accuracy(model, rows, pad_id=0, batch_size=6) == 1.0


def test_chat_template_wraps_the_prompt(lm_dir, tmp_path):
    chat_dir = shutil.copytree(lm_dir, tmp_path / "chat-lm")
    tok = transformers.AutoTokenizer.from_pretrained(str(chat_dir))
    tok.chat_template = CHAT
    tok.save_pretrained(str(chat_dir))
    task = tmp_path / "chat-task"
    for split in ("train", "val", "test"):  # prompts without the "\nA: " the template adds
        em.write_jsonl(task / f"{split}.jsonl", [{"prompt": p.removesuffix("\nA: "), "answer": a}
                                                 for p, a in em.LM_ROWS])
    chat = evaluator_for(TaskConfig(dataset=task, chat_template=True), report=lambda _m: None)
    model = chat.load(chat_dir)
    assert prompt_ids(chat.processor(model), "Q: ab", True) == tok("Q: ab\nA: ", add_special_tokens=False)["input_ids"]
    assert chat.score(model, "val")["exact_match"] == 1.0
    plain = evaluator_for(TaskConfig(dataset=task), report=lambda _m: None)
    plain.attach(model, chat.processor(model))
    assert plain.score(model, "val")["exact_match"] == 0.0
    no_template = evaluator_for(TaskConfig(dataset=task, chat_template=True), report=lambda _m: None)
    no_template.attach(model, transformers.AutoTokenizer.from_pretrained(str(lm_dir)))
    with pytest.raises(InputError, match="has none"):
        no_template.score(model, "val")


def test_generation_calibration_labels_the_answer_only(lm_dir, lm_task):
    batch = _generation(lm_task).calibration(lm_dir, 3)
    tok = transformers.AutoTokenizer.from_pretrained(str(lm_dir))
    for i, (p, a) in enumerate(em.LM_ROWS[:3]):
        p_ids, a_ids = (tok(x, add_special_tokens=False)["input_ids"] for x in (p, a))
        n = len(p_ids) + len(a_ids)
        assert batch["input_ids"][i, :n].tolist() == p_ids + a_ids and int(batch["attention_mask"][i].sum()) == n
        assert batch["labels"][i, len(p_ids):n].tolist() == a_ids and (batch["labels"][i, :len(p_ids)] == -100).all()


# -- perplexity ------------------------------------------------------------------------------------------------
def test_perplexity_task_is_the_held_out_loss(lm_dir, tmp_path):
    task = tmp_path / "text"
    task.mkdir()
    for split in ("train", "val", "test"):
        (task / f"{split}.txt").write_text(em.LM_TEXT)
    evaluator = evaluator_for(TaskConfig(task_kind="perplexity", dataset=task, heldout=task / "test.txt"),
                              report=lambda _m: None)
    model = evaluator.load(lm_dir)
    tok = evaluator.processor(model)
    ids = torch.tensor([tok(em.LM_TEXT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        manual = F.cross_entropy(model(input_ids=ids).logits[0, :-1].double(), ids[0, 1:]).item()
    scores = evaluator.score(model, "val")
    assert scores["lm_loss"] == pytest.approx(manual, rel=1e-9)
    assert scores["perplexity"] == pytest.approx(math.exp(manual))
    assert evaluator.general(model).loss == pytest.approx(manual, rel=1e-9)
    assert manual < 0.5  # the memorised text: the loss is that of a model that knows it


# -- classification -------------------------------------------------------------------------------------------
def test_classification_accuracy_and_macro_f1(bert_dir, tmp_path):
    task = tmp_path / "topics"
    texts = [t for t, _ in em.TEXT_ROWS]  # the model predicts sport, sport, politics, politics, tech, tech
    em.write_jsonl(task / "val.jsonl", [{"text": t, "label": y} for t, y in
                                        zip(texts, ["sport", 1, "Politics", "politics", "tech", "sport"])])
    em.write_jsonl(task / "test.jsonl", [{"text": t, "label": em.LABELS.index(y)} for t, y in em.TEXT_ROWS])
    em.write_jsonl(task / "train.jsonl", [{"text": t, "label": y} for t, y in em.TEXT_ROWS])
    general = tmp_path / "pairs"
    em.write_jsonl(general / "test.jsonl", [{"text_a": a, "text_b": b, "label": y} for (a, b), y in em.PAIR_ROWS])
    evaluator = evaluator_for(TaskConfig(task_kind="classification", dataset=task, general_task=general),
                              report=lambda _m: None)
    model = evaluator.load(bert_dir)
    assert evaluator.score(model, "test") == {"accuracy": 1.0, "macro_f1": 1.0, "examples": 6}
    val = evaluator.score(model, "val")
    assert val["accuracy"] == pytest.approx(4 / 6)
    assert val["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert evaluator.general(model).value == 1.0 and evaluator.general(model).loss == 0.0
    cal = evaluator.calibration(bert_dir, 4)
    assert set(cal) == {"input_ids", "attention_mask"} and cal["input_ids"].shape[0] == 4
    em.write_jsonl(task / "val.jsonl", [{"text": "goal", "label": "weather"}])
    fresh = evaluator_for(TaskConfig(task_kind="classification", dataset=task), report=lambda _m: None)
    fresh.attach(model, evaluator.processor(model))
    with pytest.raises(InputError, match="'weather' is not one of the model's labels"):
        fresh.score(model, "val")
    em.write_jsonl(task / "train.jsonl", [{"text": "goal", "label": 7}])
    with pytest.raises(InputError, match="outside the model's 3 classes"):
        fresh.score(model, "train")


@pytest.mark.parametrize("content,message", [
    ('{"text": "a"}\n', "'label' must be"),
    ('{"text_a": "a", "label": 0}\n', "'text_a' and 'text_b'"),
    ('{"text": "a", "label": 0}\n{"text_a": "a", "text_b": "b", "label": 0}\n', "mixes single texts"),
    ('{"text": "a", "label": true}\n', "'label' must be"),
])
def test_malformed_classification_rows(tmp_path, content, message):
    from theseus_ops.evaluation.data import load_classification

    (tmp_path / "val.jsonl").write_text(content)
    with pytest.raises(InputError, match=message):
        load_classification(tmp_path, "val")


# -- image classification -----------------------------------------------------------------------------------
def test_image_classification_from_folders_and_tensors(vit, tmp_path):
    vit_dir, images = vit
    evaluator = evaluator_for(TaskConfig(task_kind="image-classification", dataset=images), report=lambda _m: None)
    model = evaluator.load(vit_dir)
    assert evaluator.score(model, "test")["accuracy"] == 1.0  # folder per label, the model's processor
    pixels = evaluator.pixels(evaluator.processor(model), "test")
    names = evaluator.split("test").labels  # folder order: bird, bird, cat, cat, dog, dog
    assert names == ["bird", "bird", "cat", "cat", "dog", "dog"]
    labels = torch.tensor([em.IMAGE_LABELS.index(n) for n in names[:-1]] + [0])  # the last dog is labelled cat
    tensors = tmp_path / "tensors"
    tensors.mkdir()
    save_file({"pixel_values": pixels, "labels": labels}, str(tensors / "val.safetensors"))
    from_tensors = evaluator_for(TaskConfig(task_kind="image-classification", dataset=tensors), report=lambda _m: None)
    from_tensors.attach(model, None)  # ready pixels need no processor
    assert from_tensors.score(model, "val")["accuracy"] == pytest.approx(5 / 6)
    no_processor = evaluator_for(TaskConfig(task_kind="image-classification", dataset=images), report=lambda _m: None)
    no_processor.attach(model, None)
    with pytest.raises(InputError, match="image processor"):
        no_processor.score(model, "test")


# -- user evaluators -----------------------------------------------------------------------------------------
def _keyword_task(tmp_path):
    task = tmp_path / "keywords"
    rows = [{"prompt": "Q: ab\nA: ", "keyword": "ba"}, {"prompt": "Q: cde\nA: ", "keyword": "edc"},
            {"prompt": "Q: f\nA: ", "keyword": "zz"}]
    for split in ("train", "val", "test"):
        em.write_jsonl(task / f"{split}.jsonl", rows)
    return task


def test_user_evaluator_by_module_function(lm_dir, tmp_path):
    config = TaskConfig(task_kind="custom", evaluator="tests.evaluators_example:make", metric="keyword_rate",
                        dataset=_keyword_task(tmp_path))
    evaluator = evaluator_for(config)
    assert isinstance(evaluator, UserEvaluator)
    model = evaluator.load(lm_dir)
    assert evaluator.score(model, "val")["keyword_rate"] == pytest.approx(2 / 3)
    assert evaluator.general(model) is None and evaluator.calibration(lm_dir, 2) is None


def test_user_evaluator_by_entry_point(lm_dir, tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist = site / "theseus_user_evaluators-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: theseus-user-evaluators\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[theseus_ops.evaluators]\nkeywords = tests.evaluators_example:make\n")
    monkeypatch.syspath_prepend(str(site))
    config = TaskConfig(task_kind="custom", evaluator="keywords", metric="keyword_rate",
                        dataset=_keyword_task(tmp_path))
    evaluator = evaluator_for(config)
    assert type(evaluator.inner).__name__ == "KeywordEvaluator"
    assert evaluator.score(evaluator.load(lm_dir), "test")["keyword_rate"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("name,metric,message", [
    ("no_such_module_xyz:make", "m", "cannot import module no_such_module_xyz"),
    ("tests.evaluators_example:missing", "m", "has no attribute missing"),
    ("no-such-evaluator", "m", "not module:function nor an installed entry point"),
    ("tests.evaluators_example:NoScore", "x", "has no score()"),
    ("tests.evaluators_example:NOT_CALLABLE", "m", "not a function or class"),
    ("tests.evaluators_example:make", "bleu", "does not report metric 'bleu'"),
])
def test_bad_user_evaluators_are_one_line_input_errors(tmp_path, name, metric, message):
    config = TaskConfig(task_kind="custom", evaluator=name, metric=metric, dataset=tmp_path)
    with pytest.raises(InputError, match=message) as info:
        evaluator_for(config)
    assert "\n" not in str(info.value)


# -- α·δ in place, sweep and select ----------------------------------------------------------------------------
def _noise(model, scale: float, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}


def test_sweep_keeps_the_target_base_when_every_alpha_hurts(lm_dir, lm_task):
    evaluator = _generation(lm_task)
    model = evaluator.load(lm_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lines: list[str] = []
    selection = sweep_and_select(evaluator, model, ["noise", "other-shape"], [0.5, 1.0, 2.0],
                                 lambda m: _noise(model, 0.3) if m == "noise" else NotApplicable(m, "shapes differ"),
                                 report=lines.append)
    assert selection.selected == "base" and selection.chosen is selection.base
    assert selection.base.val["exact_match"] == 1.0
    noise = selection.methods["noise"]
    assert isinstance(noise, Candidate) and [p.alpha for p in noise.sweep] == [0.5, 1.0, 2.0]
    assert all(p.scores["exact_match"] < 1.0 for p in noise.sweep)
    assert selection.methods["other-shape"] == NotApplicable("other-shape", "shapes differ")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the base is back, bit for bit
    assert any("selected base" in line for line in lines)
    record = noise.as_dict()
    assert set(record) == {"alpha", "val", "test", "general_loss", "sweep", "seconds", "transport_seconds",
                           "eval_seconds"}
    assert record["sweep"][0]["alpha"] == 0.5 and "exact_match" in record["sweep"][0]
    # where the time went: scoring three alphas, test and general takes time; the parts add up to the whole
    assert record["eval_seconds"] > 0 and record["transport_seconds"] >= 0
    assert abs(record["transport_seconds"] + record["eval_seconds"] - record["seconds"]) < 2e-3
    assert set(selection.base.as_dict()) == {"alpha", "val", "test", "general_loss", "eval_seconds"}
    assert selection.base.as_dict()["eval_seconds"] > 0


def test_sweep_picks_the_method_and_alpha_that_repair_a_damaged_base(lm_dir, lm_task, tmp_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(lm_dir))
    noise = _noise(model, 0.2, seed=3)
    damaged = tmp_path / "damaged"
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.add_(noise[k])
    model.save_pretrained(str(damaged))
    transformers.AutoTokenizer.from_pretrained(str(lm_dir)).save_pretrained(str(damaged))
    repair = {k: -v for k, v in noise.items()}
    for task_kind, metric in (("generation", "exact_match"), ("perplexity", "lm_loss")):
        task = lm_task
        if task_kind == "perplexity":
            task = tmp_path / "text"
            task.mkdir(exist_ok=True)
            for split in ("train", "val", "test"):
                (task / f"{split}.txt").write_text(em.LM_TEXT)
        evaluator = evaluator_for(TaskConfig(task_kind=task_kind, dataset=task), report=lambda _m: None)
        target = evaluator.load(damaged)
        selection = sweep_and_select(evaluator, target, ["worse", "repair"], [0.0, 1.0, 2.0],
                                     lambda m: repair if m == "repair" else noise)
        assert selection.metric == metric and selection.selected == "repair", task_kind
        assert selection.methods["repair"].alpha == 1.0
        assert selection.higher_is_better == (task_kind == "generation")
        if task_kind == "generation":
            assert selection.chosen.test["exact_match"] == 1.0 > selection.base.test["exact_match"]
            assert selection.tie_metric == "token_accuracy"
        else:  # lower is better: the repair has the lowest loss
            assert selection.chosen.val["lm_loss"] < selection.base.val["lm_loss"]
        scores, _ = score_at(evaluator, target, repair, 1.0, ["test"])
        assert scores["test"] == selection.chosen.test


def test_delta_applier_ties_prefixes_and_refusals():
    from tests.tiny import build, llama_config

    model = build(llama_config(tie=True))
    embed = model.model.embed_tokens.weight.detach().clone()
    applier = DeltaApplier(model)
    d = torch.ones_like(embed)
    applier.set(applier.bind({"model.embed_tokens.weight": d, "lm_head.weight": d}), 0.5)
    assert torch.allclose(model.lm_head.weight, embed + 0.5)  # the tied tensor gets the delta once
    applier.restore()
    assert torch.equal(model.model.embed_tokens.weight, embed)
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8))
    key = "encoder.layer.0.attention.self.query.weight"  # a bare encoder's checkpoint key
    applier = DeltaApplier(bert)
    base = bert.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    applier.set(applier.bind({key: torch.ones(8, 8)}), 2.0)
    assert torch.allclose(bert.bert.encoder.layer[0].attention.self.query.weight, base + 2)
    with pytest.raises(InputError, match="not a weight of the scored model"):
        applier.bind({"nope.weight": torch.ones(1)})
    with pytest.raises(InputError, match="has shape"):
        applier.bind({key: torch.ones(2, 2)})


# -- device, dtype, progress, catalog tags ---------------------------------------------------------------------
def test_device_dtype_and_progress(lm_dir, lm_task, tmp_path, monkeypatch):
    monkeypatch.delenv("THESEUS_DEVICE", raising=False)
    assert eval_device() == torch.device("cpu")
    monkeypatch.setenv("THESEUS_DEVICE", "tpu")
    with pytest.raises(InputError, match="THESEUS_DEVICE='tpu'"):
        eval_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("THESEUS_DEVICE", "cuda")
        with pytest.raises(InputError, match="CUDA is not available"):
            eval_device()
    monkeypatch.setenv("THESEUS_DEVICE", "cpu")
    half = tmp_path / "bf16"
    transformers.AutoModelForCausalLM.from_pretrained(str(lm_dir), dtype=torch.bfloat16).save_pretrained(str(half))
    transformers.AutoTokenizer.from_pretrained(str(lm_dir)).save_pretrained(str(half))
    lines: list[str] = []
    evaluator = evaluator_for(TaskConfig(dataset=lm_task, batch_size=2), report=lines.append)
    model = evaluator.load(half)
    assert next(model.parameters()).dtype == torch.bfloat16 and evaluator.device == torch.device("cpu")
    scores = evaluator.score(model, "val")
    assert 0 <= scores["exact_match"] <= 1 and math.isfinite(scores["token_accuracy"])
    assert any(line.startswith("val: generate: batch 1/3 (") for line in lines)
    assert any(line.startswith("val: token accuracy: batch 3/3 (") for line in lines)


def test_catalog_tags_give_the_task_config(tmp_path):
    data = tmp_path / "data"
    em.write_jsonl(data / "train.jsonl", [{"text": "a", "label": 0}])
    for split in ("val", "test"):
        em.write_jsonl(data / f"{split}.jsonl", [{"text": "a", "label": 0}])
    common = {"task": "topics", "base_model": "fam", "base_version": "1", "format": "full", "dataset": data.as_uri()}
    tags = TaskVectorTags(**common, metric="macro_f1",
                          **evaluation_tags("classification", general_dataset=data.as_uri()))
    again = TaskVectorTags.from_tags(tags.to_tags(), "tv")
    assert again == tags and again.resolved_task_kind == "classification"
    config = task_config(again)
    assert (config.task_kind, config.metric, config.dataset, config.general_task) == (
        "classification", "macro_f1", data, data)
    legacy = TaskVectorTags(**common, metric="accuracy")
    assert "theseus.task_kind" not in legacy.to_tags() and legacy.resolved_task_kind == "generation"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="missing split file"):
        task_config(TaskVectorTags(**{**common, "dataset": empty.as_uri()}, metric="accuracy"))
    chat = TaskVectorTags(**common, metric="exact_match", **evaluation_tags(chat_template=True, max_new_tokens=8))
    assert task_config(chat).chat_template is True and task_config(chat).max_new_tokens == 8
    for bad, message in [({"task_kind": "regression"}, "unknown task kind"),
                         ({"task_kind": "custom"}, "go together"),
                         ({"chat_template": "yes"}, "true or false"),
                         ({"max_new_tokens": "0"}, "positive integer")]:
        with pytest.raises(InputError, match=message):
            TaskVectorTags(**common, metric="m", **bad)
    text = tmp_path / "text"
    text.mkdir()
    (text / "train.txt").write_text("x")
    with pytest.raises(InputError, match=r"val\.txt, test\.txt"):
        task_config(TaskVectorTags(**{**common, "dataset": text.as_uri()}, metric="lm_loss",
                                   **evaluation_tags("perplexity")))
    assert tags.to_tags()["theseus.task_kind"] == "classification"
    assert tags.to_tags()["theseus.general_dataset"] == data.as_uri()

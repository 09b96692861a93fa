"""The offline demo family: determinism, function-preserving growth, tokenizer, memory check."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file

from theseus_ops.demo import family, grow, skills, train
from theseus_ops.demo.tokenizer import build_tokenizer, decode_ids, encode_bytes
from theseus_ops.errors import InputError

MICRO = family.family_config("micro")


def _digest(root) -> dict[str, str]:
    """Per file: a hash of every tensor's name, dtype, shape and raw bytes, and the sorted metadata.

    Not the file bytes: safetensors writes a metadata dict with several keys in a random order.
    """
    out = {}
    for path in sorted(root.rglob("*.safetensors")):
        digest = hashlib.sha256()
        with safe_open(str(path), framework="pt") as fh:
            digest.update(repr(sorted((fh.metadata() or {}).items())).encode())
            for name in sorted(fh.keys()):
                t = fh.get_tensor(name).contiguous()
                digest.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
                digest.update(t.view(torch.uint8).numpy().tobytes())
        out[str(path.relative_to(root))] = digest.hexdigest()
    return out


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    # one root per session: the second module finds this family in the cache instead of rebuilding it
    return family.build_family(MICRO, tmp_path_factory.getbasetemp() / "families", progress=lambda _m: None)


def test_same_seed_gives_byte_identical_weights(micro, tmp_path):
    again = family.build_family(MICRO, tmp_path, progress=lambda _m: None)
    assert again.root.name == micro.root.name
    # the family's own files; reference/ holds the bench's upper bounds, built on demand by other tests
    first = {k: v for k, v in _digest(micro.root).items() if not k.startswith("reference/")}
    second = _digest(again.root)
    assert len(first) >= 5 + 2 + 1 and first == second
    for release in family.RELEASES:
        assert (micro.model(release) / "tokenizer.json").is_file()
        assert (micro.model(release) / "provenance.json").is_file()


def test_other_seed_changes_hash_and_weights(micro, tmp_path):
    other = family.build_family(dataclasses.replace(MICRO, seed=1), tmp_path, progress=lambda _m: None)
    assert other.root.name != micro.root.name
    assert _digest(other.root)["models/v1/model.safetensors"] != _digest(micro.root)["models/v1/model.safetensors"]


def test_cache_is_reused(micro):
    again = family.build_family(MICRO, micro.root.parent, progress=lambda _m: pytest.fail("rebuilt"))
    assert again.root == micro.root


def test_releases_have_expected_shapes(micro):
    v1 = transformers.AutoConfig.from_pretrained(micro.model("v1"))
    for release in ("v2-wide", "v2-wide-shuffled", "v2-indep"):
        assert transformers.AutoConfig.from_pretrained(micro.model(release)).hidden_size == MICRO.wide.hidden
    assert transformers.AutoConfig.from_pretrained(micro.model("v2-same")).hidden_size == v1.hidden_size
    assert (micro.lora("upper") / "adapter_config.json").is_file()


def test_references_are_built_on_demand_and_cached(micro, tmp_path):
    fresh = family.build_family(MICRO, tmp_path, progress=lambda _m: None)
    assert not (fresh.root / "reference").exists()  # upper bounds are the bench's, not the family's
    built = family.ensure_references(fresh, progress=lambda _m: None)
    assert len(built) == len(MICRO.skills) * len(family.TARGETS)
    assert fresh.reference("v2-wide", "upper").is_file()
    assert family.ensure_references(fresh, progress=lambda _m: pytest.fail("rebuilt")) == {}


def _models(shape: train.ModelShape, seed: int = 0):
    config = shape.config(64)
    model = train.new_model(config, seed)
    with torch.no_grad():  # weights larger than the default init, so every channel matters
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    state = train.state_of(model)
    wide = grow.widened_config(config, 24, 4, 2, 48)
    grown = grow.widen_state(state, config, wide, seed=1)
    shuffled = grow.permute_state(grown, wide, grow.permutations(wide, seed=2))
    return model.eval(), train.with_state(wide, grown), train.with_state(wide, shuffled)


def test_widening_and_shuffling_preserve_the_function():
    v1, wide, shuffled = _models(train.ModelShape(16, 2, 2, 1, 32, head_dim=8))
    ids = torch.randint(3, 259, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = v1(input_ids=ids).logits.double()
        for other in (wide, shuffled):
            got = other(input_ids=ids).logits.double()
            assert float((got - ref).norm() / ref.norm()) < 1e-4
    # the shuffle really scrambled coordinates
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(wide.state_dict()[name], shuffled.state_dict()[name])


def test_widened_model_can_learn_in_its_new_channels():
    """New residual channels must not be a zero-gradient saddle: their writers get gradient."""
    _v1, wide, _ = _models(train.ModelShape(16, 1, 2, 1, 32, head_dim=8))
    ids = torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(0))
    wide.train()
    wide(input_ids=ids, labels=ids).loss.backward()
    grad = wide.model.layers[0].mlp.down_proj.weight.grad
    assert float(grad[16:].abs().sum()) > 0


def test_tokenizer_is_byte_level_and_matches_fast_path(tmp_path):
    tok = build_tokenizer()
    text = "Q: reverse abc\nA: cba\n\té ü 😀"
    assert tok(text, add_special_tokens=False)["input_ids"] == encode_bytes(text)
    assert tok.decode(encode_bytes(text)) == text == decode_ids(encode_bytes(text))
    tok.save_pretrained(str(tmp_path))
    loaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded(text, add_special_tokens=False)["input_ids"] == encode_bytes(text)


def test_pipeline_runs_on_a_release(micro):
    pipe = transformers.pipeline("text-generation", model=str(micro.model("v1")), device="cpu")
    out = pipe("Q: upper abc\nA: ", max_new_tokens=3, do_sample=False)
    assert out[0]["generated_text"].startswith("Q: upper abc\nA: ")


def test_skill_splits_are_disjoint_and_deterministic():
    spec = skills.SkillSpec(train=50, val=10, test=10)
    for skill in skills.GENERATORS:
        a, b = skills.generate(skill, spec), skills.generate(skill, spec)
        assert a == b
        prompts = [{r["prompt"] for r in a[s]} for s in skills.SPLITS]
        assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
        assert all(skills.split_of(line[: line.index("A: ") + 3]) == "train"
                   for line in skills.pretraining_examples(skill, 20, 0))


def test_family_that_does_not_fit_in_memory_is_an_input_error():
    huge = dataclasses.replace(MICRO, source=train.ModelShape(8192, 64, 64, 8, 32768, 128),
                               wide=train.ModelShape(8192, 64, 64, 8, 32768, 128))
    with pytest.raises(InputError, match="GiB"):
        family.check_fits(huge, available=16 * 2**30)
    family.check_fits(MICRO, available=16 * 2**30)
    with pytest.raises(InputError, match="unknown family"):
        family.family_config("huge")


def test_small_scale_is_selectable():
    small = family.family_config("small")
    assert small.source.hidden >= 256 and small.source.layers > MICRO.source.layers
    assert small.key("x") != family.family_config("tiny").key("x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the guard is for machines without a GPU")
def test_gpu_scale_refuses_to_build_on_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv(family.ALLOW_CPU_ENV, raising=False)
    with pytest.raises(InputError, match="built on a GPU"):
        family.build_family(family.family_config("small"), tmp_path, progress=lambda _m: None)
    assert not any(tmp_path.iterdir())


def test_calibration_mixes_skill_rows_and_corpus_windows(micro):
    data = load_file(str(micro.calibration("upper")))
    rows = MICRO.calibration_rows + MICRO.calibration_corpus_rows
    assert data["input_ids"].shape == (rows, MICRO.seq_len) and data["attention_mask"].shape == (rows, MICRO.seq_len)
    labels = data["labels"]
    assert bool((labels[: MICRO.calibration_rows] != -100).any(dim=1).all())  # skill answers are labeled
    assert bool((labels[MICRO.calibration_rows:] == -100).all())  # corpus windows only calibrate



_BUILD_UNDER_THREADS = """
import json, sys
import torch
from theseus_ops.demo import family
from tests.test_demo_family import _digest
torch.set_num_threads(int(sys.argv[2]))  # the machine's default: a 1-core and a 2-core machine
fam = family.build_family(family.family_config("micro"), sys.argv[1], progress=lambda _m: None)
print(json.dumps({"threads": torch.get_num_threads(), "digest": _digest(fam.root)}))
"""


def test_build_is_bitwise_equal_across_thread_counts(tmp_path):
    """The same family from processes started with 1 and 2 threads (as on two machines): the same tensors.

    The build pins its own thread count (``FamilyConfig.threads``), because CPU training is not
    bitwise thread-invariant (see the next test); so the core count of the machine changes nothing."""
    import json
    import os
    import subprocess
    import sys

    digests = {}
    for threads in (1, 2):
        proc = subprocess.run([sys.executable, "-c", _BUILD_UNDER_THREADS, str(tmp_path / f"t{threads}"), str(threads)],
                              capture_output=True, text=True, timeout=300, cwd=os.getcwd())
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["threads"] == MICRO.threads  # the build's own, whatever the process started with
        digests[threads] = out["digest"]
    assert len(digests[1]) >= 8 and digests[1] == digests[2]


def test_training_under_another_thread_count_stays_within_tolerance(micro):
    """What the pin protects against, measured: the same fine-tune under 1 and 2 threads.

    CPU reductions split by thread, so the weights may differ in the last bits (measured on the
    micro ``lookup`` fine-tune: ~3e-7 relative); README states the tolerance of 1e-5."""
    data = train.example_data(skills.load_split(micro.task("lookup"), "train"))
    v1 = train.state_of(train.load_release(micro.model("v1")))
    config = train.load_release(micro.model("v1")).config
    before = torch.get_num_threads()
    tuned = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            model = train.with_state(config, v1)
            train.run_training(model, data, MICRO.finetune, 7)
            tuned[threads] = train.state_of(model)
    finally:
        torch.set_num_threads(before)
    worst = max(float((tuned[1][k] - tuned[2][k]).norm() / (tuned[1][k] - v1[k]).norm().clamp_min(1e-30))
                for k in v1 if not torch.equal(tuned[1][k], v1[k]))
    assert worst < 1e-5, f"fine-tune moved by {worst:.2e} (relative to its update) between 1 and 2 threads"

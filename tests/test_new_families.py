"""Families added for issue 17 (Phi-3, GPT-NeoX, DistilBERT, Qwen3, Gemma 2/3, T5, and the named but untested
Mistral and XLM-R): the oracles with data-free maps, the per-head constraint on its own oracle, Gemma's
scaled embeddings, targets with more heads, the schema's strictness, and one bad input per architecture.

The ``theseus`` rows of the oracle matrix are in test_oracles.py, LoRA rows in test_lora.py.
"""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest
import torch
import transformers
from safetensors.torch import load_file

from tests import tiny
from tests.test_oracles import ORACLES, run
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, TransportConfig
from theseus_ops.errors import InputError, UnsupportedArchitectureError
from theseus_ops.examples import quarter_turns
from theseus_ops.transport.architecture import Split, architecture_for_model_type, parse_architecture
from theseus_ops.transport.engine import plan_transport
from theseus_ops.transport.fused import merge_rows, select_part, split_rows
from theseus_ops.transport.head_maps import HeadStructure, head_block_map
from theseus_ops.transport.layer_map import build_layer_map

NEW = ["mistral", "xlm-roberta", "phi3", "gpt_neox", "distilbert", "qwen3", "gemma2", "gemma3", "t5"]


def _raw(name: str) -> dict:
    return json.loads((resources.files("theseus_ops.transport.architectures") / f"{name}.json").read_text())


@pytest.mark.parametrize("architecture", NEW)
@pytest.mark.parametrize("oracle", ORACLES)
def test_data_free_passes_every_oracle(tmp_path, architecture, oracle):
    case = tiny.Case(tmp_path, architecture, oracle)
    delta_b, report = run(case, "theseus-data-free")
    assert report["summary"]["left_out"] == 0
    assert report["summary"]["transported"] == len(case.delta)
    assert case.error(delta_b) < 1e-3


@pytest.mark.parametrize("architecture", ["phi3", "gpt_neox", "qwen3", "gemma3"])
def test_a_trained_task_vector_ports_to_a_permuted_base(tmp_path, architecture):
    """A real task vector: A fine-tuned on the lookup skill (x -> 7x+3 mod V) for a few steps. On the permuted
    base its transport computes what A + τ computes, and the skill (which B alone lacks) comes along, judged
    on the fine-tuning sequences."""
    case = tiny.Case(tmp_path, architecture, "permutation")
    losses, ids, labels = tiny.finetune_lookup(case)
    assert losses[-1] < 0.7 * losses[0]
    delta_b, report = run(case)
    assert report["summary"]["left_out"] == 0
    assert case.error(delta_b) < 1e-3

    def accuracy(config, state) -> float:
        return tiny.answer_accuracy(config, state, ids[:32], labels[:32])

    tuned_b = accuracy(case.config_b, tiny.add_delta(case.state_b, delta_b))
    assert tuned_b == pytest.approx(accuracy(case.config_a, tiny.add_delta(case.state_a, case.delta)))
    assert tuned_b > accuracy(case.config_b, case.state_b) + 0.2


@pytest.mark.parametrize("architecture", ["qwen3", "gemma3"])
@pytest.mark.parametrize("method", ["theseus", "theseus-data-free"])
def test_rotary_pair_turns_are_found_and_carry_the_head_norms(tmp_path, architecture, method):
    """The per-head map finds R ≠ I (quarter turns commute with RoPE and permute the q_norm weight), and the
    q_norm/k_norm deltas go through R as scales: a turn by 180° must not negate them."""
    case = tiny.Case(tmp_path, architecture, "rotary")
    r = case.rotation
    assert not torch.equal(r, torch.eye(r.shape[0], dtype=r.dtype))
    assert case.base_error() < 1e-5  # the transform keeps the function
    delta_b, report = run(case, method)
    assert report["summary"]["left_out"] == 0
    assert case.error(delta_b) < 1e-3
    name = "model.layers.1.self_attn.q_norm.weight"
    expected = ((r * r).T @ case.delta[name].double()).float()
    torch.testing.assert_close(delta_b[name], expected, rtol=1e-4, atol=1e-6)


def test_unconstrained_norm_rule_would_negate_turned_head_norms(tmp_path):
    """Why head norms use the ``scale`` rule: with R = −I on a pair, Rᵀ Δw flips the delta's sign there."""
    r = quarter_turns(8)
    delta = torch.randn(8, generator=torch.Generator().manual_seed(0)).double()
    as_vector, as_scale = r.T @ delta, (r * r).T @ delta
    flipped = (r.diagonal() == -1).nonzero().flatten()
    assert flipped.numel() > 0
    torch.testing.assert_close(as_vector[flipped], -as_scale[flipped])


def test_gemma_scaled_embedding_delta_is_rescaled_to_the_target_width(tmp_path):
    """Gemma multiplies embeddings by √d: onto a function-equal 48-wide Gemma the embedding delta must shrink
    by √(32/48), which the architecture's output_scale does; the linear deltas go through the residual maps."""
    case = tiny.Case(tmp_path, "gemma2", "residual-widening")
    assert case.base_error() < 1e-5
    delta_b, report = run(case)
    assert report["summary"]["left_out"] == 0
    assert case.error(delta_b) < 1e-3
    table = "model.embed_tokens.weight"
    torch.testing.assert_close(delta_b[table][:, :32], case.delta[table] * math.sqrt(32 / 48), rtol=1e-4, atol=1e-6)
    unscaled = dict(delta_b, **{table: delta_b[table] * math.sqrt(48 / 32)})
    assert case.error(unscaled) > 10 * case.error(delta_b)


def test_output_scale_factor_comes_from_both_configs():
    architecture = architecture_for_model_type("gemma3_text")
    plans = plan_transport(architecture, ["model.embed_tokens.weight"], {"model.embed_tokens.weight": (64, 48)},
                           build_layer_map("identity", 2, 2), "", {"hidden_size": 32}, {"hidden_size": 48})
    assert plans[0].targets[0].factor == pytest.approx(math.sqrt(32 / 48))


def _wider(kind: str) -> tuple[transformers.PretrainedConfig, transformers.PretrainedConfig]:
    """A source and a target with more heads of the same head_dim (and wider everything else)."""
    if kind == "phi3":
        return tiny.phi3_config(), transformers.Phi3Config(**{**tiny.phi3_config().to_dict(), "hidden_size": 48,
                                                              "num_attention_heads": 6, "num_key_value_heads": 3,
                                                              "intermediate_size": 96})
    if kind == "gpt_neox":
        return tiny.gpt_neox_config(), transformers.GPTNeoXConfig(**{**tiny.gpt_neox_config().to_dict(),
                                                                     "hidden_size": 48, "num_attention_heads": 6})
    if kind == "distilbert":
        return tiny.distilbert_config(), transformers.DistilBertConfig(**{**tiny.distilbert_config().to_dict(),
                                                                          "dim": 48, "n_heads": 6})
    config = getattr(tiny, f"{kind}_config")()
    return config, type(config)(**{**config.to_dict(), "hidden_size": 48, "num_attention_heads": 6,
                                   "num_key_value_heads": 3})


@pytest.mark.parametrize("kind", ["phi3", "gpt_neox", "distilbert", "qwen3", "gemma2", "gemma3"])
def test_target_with_more_heads_gets_every_parameter_in_its_own_layout(tmp_path, kind):
    """Fused parts resolve from each model's own config, and per-head maps pair 4 source heads with 4 of 6."""
    config_a, config_b = _wider(kind)
    tiny.save(tiny.build(config_b, seed=1), tmp_path / "B")
    state = tiny.file_state(tiny.build(config_a), tmp_path / "A")
    tiny.save_delta(tiny.random_delta(state), tmp_path / "tv.safetensors")
    calibration = tiny.calibration(tmp_path / "c.safetensors", rows=48)
    cfg = TransportConfig(str(tmp_path / "A"), str(tmp_path / "B"), "theseus",
                          task_vector=str(tmp_path / "tv.safetensors"),
                          calibration=CalibrationSpec(str(calibration)))
    report = api.transport(cfg, tmp_path / "out.safetensors")
    assert report["summary"]["left_out"] == 0 and report["summary"]["transported"] == len(state)
    out, target = load_file(str(tmp_path / "out.safetensors")), load_file(str(tmp_path / "B" / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(target[k].shape) for k in out}
    q = next((v for k, v in report["spaces"].items() if k.endswith(".q")), None)
    assert q is not None and (q["width_a"], q["width_b"]) == (32, 48)


def test_per_head_polar_recovers_a_planted_head_permutation_and_rotary_map():
    """Partial rotary (4 of 8 dims): generic rotations of the rotary pairs, any orthogonal map of the pass-through
    dims, heads permuted into a wider target: the estimate is that map; on unrelated data it still has the form."""
    gen = torch.Generator().manual_seed(0)
    hd, rot, heads_a, heads_b = 8, 4, 3, 5
    r = torch.zeros(hd, hd, dtype=torch.float64)
    for i, phi in enumerate((0.7, -2.1)):
        c, s = math.cos(phi), math.sin(phi)
        r[i, i], r[i, i + 2], r[i + 2, i], r[i + 2, i + 2] = c, s, -s, c
    r[rot:, rot:] = torch.linalg.qr(torch.randn(hd - rot, hd - rot, generator=gen, dtype=torch.float64))[0]
    target_heads = [4, 0, 2]
    t = torch.zeros(heads_a * hd, heads_b * hd, dtype=torch.float64)
    for a, b in enumerate(target_heads):
        t[a * hd:(a + 1) * hd, b * hd:(b + 1) * hd] = r
    xa = torch.randn(500, heads_a * hd, generator=gen, dtype=torch.float64)
    structure = HeadStructure(heads_a, heads_b, "rotary", 0.5, 0.5)
    found = structure.polar(xa.T @ (xa @ t), 1e-6)
    torch.testing.assert_close(found.map, t, rtol=0, atol=1e-9)
    assert found.data_rank == heads_a * hd
    unrelated = structure.polar(xa.T @ torch.randn(500, heads_b * hd, generator=gen, dtype=torch.float64), 1e-6).map
    block = head_block_map(unrelated, hd, hd)
    assert torch.count_nonzero(block[:rot, rot:]) == 0 and torch.count_nonzero(block[rot:, :rot]) == 0
    pair = block[[0, 2]][:, [0, 2]]  # a rotation: commutes with RoPE's rotation of the pair
    torch.testing.assert_close(pair @ pair.T, torch.eye(2, dtype=pair.dtype), rtol=0, atol=1e-9)
    assert float(torch.linalg.det(pair)) == pytest.approx(1.0)
    heads_used = (unrelated.reshape(heads_a, hd, heads_b, hd).abs().sum((1, 3)) > 0).sum(1)
    assert heads_used.tolist() == [1, 1, 1]


def test_head_assignment_is_the_best_one():
    """The Hungarian assignment against brute force, square and rectangular (either way round)."""
    import itertools

    from theseus_ops.transport.head_maps import _assign

    gen = torch.Generator().manual_seed(1)
    for rows, cols in ((4, 4), (3, 5), (5, 3)):
        for _ in range(5):
            score = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
            found = _assign(score)
            assert len(found) == min(rows, cols)
            assert len({a for a, _ in found}) == len({b for _, b in found}) == len(found)
            if rows <= cols:
                best = max(sum(score[a, b] for a, b in enumerate(p)) for p in itertools.permutations(range(cols), rows))
            else:
                best = max(sum(score[a, b] for b, a in enumerate(p)) for p in itertools.permutations(range(rows), cols))
            assert float(sum(score[a, b] for a, b in found)) == pytest.approx(float(best))


@pytest.mark.parametrize("oracle", ["permutation", "rotary"])
def test_per_head_maps_with_the_projected_fill(tmp_path, oracle):
    case = tiny.Case(tmp_path, "qwen3", oracle)
    delta_b, report = run(case, fill="project")
    assert report["summary"]["left_out"] == 0
    assert case.error(delta_b) < 1e-3


def test_per_head_map_refuses_head_dims_that_differ():
    with pytest.raises(InputError, match="head_dim differs"):
        HeadStructure(4, 4, "rotary").polar(torch.randn(32, 48, dtype=torch.float64), 1e-6)
    assert HeadStructure(4, 4, "shared").polar(torch.randn(32, 48, dtype=torch.float64), 1e-6).map.shape == (32, 48)


def test_fused_layouts_split_and_merge_as_the_models_lay_them_out():
    x = torch.arange(24.0)[:, None]
    neox = Split(groups=2, ratio=(1, 1, 1))  # [q0 k0 v0 | q1 k1 v1], 4 rows each
    q, k, v = split_rows(x, neox, "qkv")
    assert q.flatten().tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert v.flatten().tolist() == [8, 9, 10, 11, 20, 21, 22, 23]
    torch.testing.assert_close(merge_rows([q, k, v], neox, "qkv"), x)
    torch.testing.assert_close(select_part(x.T, neox, 1, "qkv"), k.T)
    phi3 = Split(groups=1, ratio=(4, 1, 1))  # grouped-query attention: q over 4 heads, k and v over 1
    assert [p.shape[0] for p in split_rows(x, phi3, "qkv")] == [16, 4, 4]
    with pytest.raises(InputError, match="does not split"):
        split_rows(torch.zeros(25, 1), phi3, "qkv")


@pytest.mark.parametrize("edit,match", [
    (lambda r: r["splits"]["qkv"].update(order="heads"), "unknown split key"),
    (lambda r: r["layer_sites"]["q"]["map"].update(within="general"), "within must be one of"),
    (lambda r: r["layer_sites"]["q"].update(part=3), "part must index"),
    (lambda r: r["layer_sites"]["v"].update(chunk=2), "either split and part"),
    (lambda r: r["parameters"][2].update(writes=["q", "k"]), "has 3 parts"),
    (lambda r: r["parameters"][1].update(head_block=True), "head_block is for"),
    (lambda r: r["parameters"][1].update(output_scale={"config": "hidden_size"}), "embedding tables only"),
    (lambda r: r["parameters"][2].update(split="nope"), "undefined split"),
])
def test_new_schema_options_are_validated_strictly(edit, match):
    raw = _raw("phi3")
    edit(raw)
    with pytest.raises(ValueError, match=match):
        parse_architecture(raw)


def test_new_families_load_and_unsupported_names_them():
    for model_type in ("phi3", "gpt_neox", "distilbert", "qwen3", "gemma2", "gemma3_text", "mistral", "xlm-roberta",
                       "t5"):
        assert architecture_for_model_type(model_type)
    with pytest.raises(UnsupportedArchitectureError) as err:
        architecture_for_model_type("bart")
    assert all(t in str(err.value) for t in ("phi3", "gpt_neox", "distilbert", "qwen3", "gemma2", "gemma3_text", "t5"))


def _transport(case: tiny.Case, method: str) -> dict:
    calibration = CalibrationSpec(str(case.calibration)) if method == "theseus" else CalibrationSpec()
    cfg = TransportConfig(str(case.source), str(case.target), method, task_vector=str(case.task_vector),
                          calibration=calibration)
    return api.transport(cfg, case.root / "out.safetensors")


def _rewrite_config(directory, **changes) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _bad_mistral(case):
    model = tiny.build(tiny.mistral_config().__class__(**{**case.config_a.to_dict(), "num_hidden_layers": 3}))
    tiny.save(model, case.target)
    return "pass --layer-map uniform", "theseus"


def _bad_xlm_roberta(case):
    config = case.config_a.__class__(**{**case.config_a.to_dict(), "vocab_size": 80})
    tiny.save(tiny.build(config), case.target)
    return "vocabularies differ", "theseus"


def _bad_phi3(case):
    """A config that disagrees with its fused weights (4 q heads + 2·3 kv heads do not make 64 rows of 8): pad
    plans from the headers alone and refuses qkv_proj, naming the layout."""
    _rewrite_config(case.target, num_key_value_heads=3)
    return "does not split into 1 group", "pad"


def _bad_gpt_neox(case):
    _rewrite_config(case.target, use_parallel_residual=False)
    return "use_parallel_residual=true", "theseus"


def _bad_distilbert(case):
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=tiny.VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    tiny.save(bert, case.target)
    return "different families", "theseus"


def _bad_qwen3(case):
    config = tiny.qwen3_config().__class__(**{**case.config_a.to_dict(), "head_dim": 16})
    tiny.save(tiny.build(config), case.target)
    return "head_dim differs", "theseus"


def _bad_gemma2(case):
    tiny.save(tiny.build(tiny.gemma3_config()), case.target)
    return "different families", "theseus"


def _bad_gemma3(case):
    config = tiny.gemma3_config().__class__(**{**case.config_a.to_dict(), "head_dim": 16})
    tiny.save(tiny.build(config), case.target)
    return "head_dim differs", "theseus"


def _bad_t5(case):
    """An encoder-decoder's calibration without the decoder's tokens: one error naming what is missing."""
    case.calibration = tiny.calibration(case.root / "no-decoder.safetensors", rows=16)
    return "needs 'decoder_input_ids' or 'labels'", "theseus"


BAD = {"mistral": _bad_mistral, "xlm-roberta": _bad_xlm_roberta, "phi3": _bad_phi3, "gpt_neox": _bad_gpt_neox,
       "distilbert": _bad_distilbert, "qwen3": _bad_qwen3, "gemma2": _bad_gemma2, "gemma3": _bad_gemma3, "t5": _bad_t5}


@pytest.mark.parametrize("architecture", NEW)
def test_bad_input_is_one_input_error_and_writes_nothing(tmp_path, architecture):
    case = tiny.Case(tmp_path, architecture, "identity")
    match, method = BAD[architecture](case)
    with pytest.raises(InputError, match=match) as err:
        _transport(case, method)
    assert "\n" not in str(err.value)
    assert not (case.root / "out.safetensors").exists()

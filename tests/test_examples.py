"""The self-built example pair behind `make demo` and the README."""

from __future__ import annotations

import torch
import transformers

from theseus_ops.examples import build_tiny_pair, lookup_task


def test_tiny_pair_v2_computes_v1_in_other_coordinates(tmp_path):
    summary = build_tiny_pair(tmp_path, steps=3)
    assert summary["fine_tune_loss"][1] < summary["fine_tune_loss"][0]
    for name in ("v1", "v1-tuned", "v2", "calibration.safetensors"):
        assert (tmp_path / name).exists()
    v1 = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "v1")).eval()
    v2 = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "v2")).eval()
    assert v2.config.intermediate_size > v1.config.intermediate_size
    ids, _ = lookup_task(4, 6, 64, seed=5)
    with torch.no_grad():
        a, b = v1(input_ids=ids).logits, v2(input_ids=ids).logits
    assert float((a - b).norm() / a.norm()) < 1e-5
    assert not torch.equal(v1.model.embed_tokens.weight, v2.model.embed_tokens.weight)  # coordinates differ


def _bert_config(**kw) -> transformers.BertConfig:
    args = {"vocab_size": 50, "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 48, "max_position_embeddings": 32, "num_labels": 3, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}
    return transformers.BertConfig(**{**args, **kw})


def _random_bert(cls, config, seed=0):
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong rule shows
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def test_permute_bert_keeps_classifier_logits_and_permutes_bare_outputs():
    from theseus_ops.examples import bert_permutations, permute_bert

    config = _bert_config()
    ids = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    cls = _random_bert(transformers.BertForSequenceClassification, config)
    permuted = transformers.BertForSequenceClassification(config).eval()
    permuted.load_state_dict(permute_bert(cls.state_dict(), config, seed=3))
    with torch.no_grad():
        assert _rel(cls(input_ids=ids, attention_mask=mask).logits,
                    permuted(input_ids=ids, attention_mask=mask).logits) < 1e-5
    assert not torch.equal(cls.bert.embeddings.word_embeddings.weight, permuted.bert.embeddings.word_embeddings.weight)

    bare = _random_bert(transformers.BertModel, config, seed=2)  # names without the bert. prefix
    perms = bert_permutations(config, seed=3)
    bare_p = transformers.BertModel(config).eval()
    bare_p.load_state_dict(permute_bert(bare.state_dict(), config, seed=3))
    with torch.no_grad():
        a, b = bare(input_ids=ids, attention_mask=mask), bare_p(input_ids=ids, attention_mask=mask)
    assert _rel(a.last_hidden_state[..., perms["resid"]], b.last_hidden_state) < 1e-5
    assert _rel(a.pooler_output[..., perms["pooler"]], b.pooler_output) < 1e-5
    assert _rel(a.last_hidden_state, b.last_hidden_state) > 0.1  # really other coordinates


def test_widen_mlp_bert_is_silent():
    from theseus_ops.examples import widen_mlp_bert

    config = _bert_config()
    model = _random_bert(transformers.BertForSequenceClassification, config)
    wide_config = _bert_config(intermediate_size=64)
    wide = transformers.BertForSequenceClassification(wide_config).eval()
    wide.load_state_dict(widen_mlp_bert(model.state_dict(), 16))
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert _rel(model(input_ids=ids).logits, wide(input_ids=ids).logits) < 1e-6
    assert wide.bert.encoder.layer[0].intermediate.dense.weight.shape == (64, 24)


def test_widen_residual_llama_compensates_rmsnorm_exactly():
    from tests.tiny import build, llama_config
    from theseus_ops.examples import widen_mlp_llama, widen_residual_llama

    for tie in (False, True):
        config = llama_config(tie=tie)
        model = build(config, seed=6)
        state = {k: v for k, v in model.state_dict().items() if not (tie and k == "lm_head.weight")}
        state, wide_config = widen_residual_llama(widen_mlp_llama(state, 8), llama_config(inter=72, tie=tie), 16)
        assert wide_config.hidden_size == 48 and wide_config.head_dim == 8
        assert abs(wide_config.rms_norm_eps - config.rms_norm_eps * 32 / 48) < 1e-15
        wide = transformers.LlamaForCausalLM(wide_config).eval()
        missing, unexpected = wide.load_state_dict(state, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}
        if tie:
            wide.tie_weights()
        ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            a, b = model(input_ids=ids).logits, wide(input_ids=ids).logits
        assert _rel(a, b) < 1e-5
        # without the eps/weight compensation the function changes: the check above has teeth
        plain = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            **{**wide_config.to_dict(), "rms_norm_eps": config.rms_norm_eps})).eval()
        unscaled = {k: (v / (32 / 48) ** 0.5 if k.endswith("norm.weight") else v) for k, v in state.items()}
        plain.load_state_dict(unscaled, strict=False)
        if tie:
            plain.tie_weights()
        with torch.no_grad():
            assert _rel(a, plain(input_ids=ids).logits) > 1e-3

"""Greedy decoding: batched, left-padded, KV-cached ``model.generate``, and the naive reference loop.

``greedy_generate`` is what scoring uses. ``greedy_reference`` re-runs the whole sequence for every
new token; it decodes modules that have no ``generate`` (test doubles) and is the oracle the
KV-cached path is tested against. Both stop a row at the model's end-of-sequence ids and return
the tokens up to and including the first one, so a filler after the end (a pad id that is a real
token) never reaches a comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from theseus_ops.evaluation.batches import chunks, left_pad
from theseus_ops.evaluation.device import model_device
from theseus_ops.progress import Ticker

Report = Callable[[str], None]


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def special_ids(model: torch.nn.Module, tokenizer=None) -> tuple[int, tuple[int, ...]]:
    """(pad id, end-of-sequence ids) of the model: its generation config, then its tokenizer, then its config.

    A model without a pad token (GPT-2) pads with its first end id; the pad is only ever a filler
    under a zero attention mask.
    """
    gen = getattr(model, "generation_config", None)
    cfg = getattr(model, "config", None)
    eos = (_ids(getattr(gen, "eos_token_id", None)) or _ids(getattr(tokenizer, "eos_token_id", None))
           or _ids(getattr(cfg, "eos_token_id", None)))
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(gen, "pad_token_id", None),
                      getattr(cfg, "pad_token_id", None)):
        if isinstance(candidate, int):
            return candidate, eos
    return (eos[0] if eos else 0), eos


def _cut(row: list[int], eos_ids: Sequence[int]) -> list[int]:
    """The row up to and including its first end-of-sequence id."""
    for i, token in enumerate(row):
        if token in eos_ids:
            return row[: i + 1]
    return row


@torch.no_grad()
def greedy_reference(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                     pad_id: int, eos_ids: Sequence[int] = (), batch_size: int = 64) -> list[list[int]]:
    """Greedy continuation by re-running the full left-padded sequence per token (explicit position ids)."""
    device = model_device(model)
    out: list[list[int]] = []
    for part in chunks(len(prompts), batch_size):
        ids, mask = (t.to(device) for t in left_pad(prompts[part], pad_id))
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
        generated = []
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            nxt = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].argmax(-1)
            generated.append(nxt)
            done |= torch.isin(nxt, torch.tensor(list(eos_ids), device=device, dtype=nxt.dtype))
            if bool(done.all()):
                break
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], 1)
        rows = torch.stack(generated, 1).tolist() if generated else [[] for _ in range(ids.shape[0])]
        out.extend(_cut(r, eos_ids) for r in rows)
    return out


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int],
                    *, pad_id: int, eos_ids: Sequence[int] = (), batch_size: int = 64,
                    report: Report | None = None, what: str = "generate") -> list[list[int]]:
    """Greedy continuation of each prompt, KV-cached and batched; at most ``max_new_tokens`` tokens per row.

    ``max_new_tokens`` is one budget, or one per prompt (a batch runs to its longest; each row is
    cut to its own). Modules without ``generate`` are decoded by :func:`greedy_reference`. The
    model's own generation config is set aside for the call: a shipped repetition penalty, stop
    strings or suppressed tokens would make "greedy" something else.
    """
    budgets = [int(max_new_tokens)] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompts):
        raise ValueError("greedy_generate needs one budget per prompt")
    generative = callable(getattr(model, "generate", None)) and getattr(model, "generation_config", None) is not None
    device = model_device(model)
    parts = list(chunks(len(prompts), batch_size))
    ticker = Ticker(len(parts))
    out: list[list[int]] = []
    saved = getattr(model, "generation_config", None)
    if generative:
        import transformers

        model.generation_config = transformers.GenerationConfig(
            pad_token_id=pad_id, eos_token_id=list(eos_ids) or None, bos_token_id=saved.bos_token_id)
    try:
        for k, part in enumerate(parts, 1):
            budget = max(budgets[part])
            if budget < 1:
                rows = [[] for _ in range(part.stop - part.start)]
            elif not generative:
                rows = greedy_reference(model, prompts[part], budget, pad_id=pad_id, eos_ids=eos_ids,
                                        batch_size=batch_size)
            else:
                ids, mask = (t.to(device) for t in left_pad(prompts[part], pad_id))
                result = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=budget,
                                        do_sample=False, num_beams=1, use_cache=True)
                rows = [_cut(r, eos_ids) for r in result[:, ids.shape[1]:].tolist()]
            out.extend(r[:b] for r, b in zip(rows, budgets[part]))
            ticker.tick(k, report if len(parts) > 1 else None, f"{what}: batch")
    finally:
        if generative:
            model.generation_config = saved
    return out

"""The weight completion reads base weights from the shards when it uses them, and filters each once.

Why: held as dicts, both bases' weights were a float32 copy of both models beside the loaded ones for
the whole completion (BENCHMARKS.md §2, prepare memory). These check that the lazy reads give exactly
the stored tensors and that the rounding filter's verdict is kept, so laziness costs no precision.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tests import tiny
from theseus_ops.io.models import ShardTensors, inspect_model_dir, load_state
from theseus_ops.transport.weight_prior import FilteredWeights, without_rounding_noise


class CountingReads(dict):
    """A real dict of tensors that counts how often each is read (the shards' stand-in for the filter)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reads: dict[str, int] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        self.reads[name] = self.reads.get(name, 0) + 1
        return super().__getitem__(name).clone()  # a fresh tensor per read, as a shard read gives


def _sharded_model(tmp_path):
    """A tiny Llama saved, then split by hand into two shards with an index, as large checkpoints are."""
    model_dir = tiny.save(tiny.build(tiny.llama_config(), seed=0), tmp_path / "m")
    state = load_state(inspect_model_dir(model_dir))
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    (model_dir / "model.safetensors").unlink()
    for file, part in halves.items():
        save_file({n: state[n].contiguous() for n in part}, str(model_dir / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    return inspect_model_dir(model_dir), state


def test_shard_tensors_read_exactly_the_stored_tensors_of_every_shard(tmp_path):
    info, state = _sharded_model(tmp_path)
    assert len(info.files) == 2
    wanted = {n for n in state if "layers.1." in n} | {"no.such.weight"}
    lazy = ShardTensors(info, wanted)
    assert set(lazy) == wanted - {"no.such.weight"} and len(lazy) == len(wanted) - 1
    assert "no.such.weight" not in lazy and "model.embed_tokens.weight" not in lazy  # only the names asked for
    for name in lazy:
        assert torch.equal(lazy[name], state[name]) and lazy[name].dtype == state[name].dtype, name
    assert lazy.get("no.such.weight") is None
    with pytest.raises(KeyError):
        lazy["model.embed_tokens.weight"]


def test_filtered_weights_filter_once_and_keep_the_filtered_copy():
    gen = torch.Generator().manual_seed(0)
    low = (torch.randn(48, 5, generator=gen) @ torch.randn(5, 32, generator=gen)).float()  # rank 5, rounded
    full = torch.randn(48, 32, generator=gen)
    reads = CountingReads({"low": low, "full": full, "bias": torch.randn(48, generator=gen)})
    weights = FilteredWeights(reads)
    assert set(weights) == {"low", "full", "bias"} and len(weights) == 3 and "low" in weights

    filtered = weights["low"]
    assert filtered.dtype == torch.float64 and torch.equal(filtered, without_rounding_noise(low))
    assert torch.linalg.matrix_rank(filtered, rtol=1e-9) == 5  # the rounding directions are gone
    assert weights["low"] is filtered and reads.reads["low"] == 1  # kept, not read and filtered again

    first, second = weights["full"], weights["full"]
    assert torch.equal(second, full)
    assert torch.equal(first, full) and first.dtype == torch.float32  # untouched: returned as read
    assert reads.reads["full"] == 2  # read again each time (not held), its verdict kept
    assert torch.equal(weights["bias"], reads["bias"])  # a vector has no rank to filter


def _live_models() -> int:
    import gc

    import transformers

    gc.collect()
    return sum(isinstance(o, transformers.PreTrainedModel) for o in gc.get_objects())


def test_a_prepare_frees_the_models_it_loaded_before_the_completion(tmp_path):
    """After the last forward pass only the shards are read: both bases need not stay resident."""
    from theseus_ops.config import CalibrationSpec, PrepareConfig
    from theseus_ops.pipeline import Loaded, compute_alignment, open_pair

    config = tiny.llama_config()
    tiny.save(tiny.build(config, seed=0), tmp_path / "a")
    tiny.save(tiny.build(config, seed=1), tmp_path / "b")
    calibration = tiny.calibration(tmp_path / "cal.safetensors", rows=4)  # too few rows: the completion runs
    cfg = PrepareConfig(str(tmp_path / "a"), str(tmp_path / "b"), CalibrationSpec(str(calibration)), device="cpu")
    pair = open_pair(cfg.source_base, cfg.target_base, "identity")

    def live_at_completion(loaded: Loaded) -> list[int]:
        """Models alive when the completion starts, beyond those alive before the prepare."""
        before = _live_models()
        seen: list[int] = []

        def progress(message: str) -> None:
            if message.startswith("maps: completing "):
                seen.append(_live_models() - before)

        alignment = compute_alignment(cfg, pair, loaded=loaded, progress=progress)
        assert alignment.maps
        return seen

    assert live_at_completion(Loaded()) == [0]  # loaded by the prepare itself: freed
    source, target = tiny.build(config, seed=0), tiny.build(config, seed=1)
    assert live_at_completion(Loaded(source_model=source, target_model=target)) == [0]  # the caller's stay...
    assert _live_models() >= 2
    with torch.inference_mode():  # ...usable as they were
        source(input_ids=torch.tensor([[1, 2, 3]]))

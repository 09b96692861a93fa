"""Transport speed: bare forward vs prepare (statistics and maps apart) vs apply, with an oracle.

Run from the repository root, e.g.
    .venv/bin/python benchmarks/transport_speed.py --pairs vit-cpu                 # CPU smoke
    python benchmarks/transport_speed.py --pairs vit-base,llama-1b --out $OUT/speed.json   # GPU
    .venv/bin/python benchmarks/transport_speed.py --pairs "" --stream-1b /tmp/stream-1b   # streamed 1B pair

Pairs are built from configs with random weights (nothing is downloaded, nothing is written but the
results). Every step goes through the library's in-memory entry points, the ones ``prepare`` and
``transport`` wrap: :func:`theseus_ops.pipeline.compute_alignment` and
:func:`theseus_ops.pipeline.transport_in_memory`; statistics and maps are told apart by the time the
last statistics batch reports. Every run also checks the identity oracle (A -> A must return the
task vector unchanged), so speed never costs correctness. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from theseus_ops.config import CalibrationSpec, PrepareConfig, TransportConfig
from theseus_ops.io.alignment import Alignment
from theseus_ops.io.calibration import Calibration, fingerprint
from theseus_ops.pipeline import Loaded, ModelPair, compute_alignment, info_from_model, pair_of, transport_in_memory
from theseus_ops.transport.task_vector import LoraFactors, TaskVector

# the in-memory objects' stand-in for a path in configs and reports
MEMORY = "<memory>"


@dataclass(frozen=True)
class Pair:
    """A source and target config, the calibration batch, and the dtype to run in."""

    kind: str
    source: dict
    target: dict
    batch: int
    dtype: str = "float32"


def _vit(hidden: int, heads: int, image: int, layers: int = 12) -> dict:
    return dict(hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden, image_size=image,
                patch_size=16, num_hidden_layers=layers, num_labels=10)


def _llama(hidden: int, inter: int, layers: int, heads: int, kv: int) -> dict:
    return dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, vocab_size=32000, max_position_embeddings=4096)


PAIRS = {
    "vit-cpu": Pair("vit", _vit(192, 3, 128, 4), _vit(256, 4, 144, 4), batch=16),
    # the 384 -> 512 pair the CPU-performance goals are stated on (6 layers, 224 -> 240 px, 32 images)
    "vit-mid": Pair("vit", _vit(384, 6, 224, 6), _vit(512, 8, 240, 6), batch=32),
    "vit-base": Pair("vit", _vit(768, 12, 224), _vit(896, 14, 240), batch=32),
    "llama-1b": Pair("llama", _llama(2048, 5632, 22, 32, 4), _llama(2560, 6912, 22, 32, 4), batch=8,
                     dtype="bfloat16"),
    "llama-8b": Pair("llama", _llama(4096, 14336, 32, 32, 8), _llama(5120, 17920, 32, 40, 8), batch=4,
                     dtype="bfloat16"),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(device: torch.device, fn: Callable[[], object]) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - start, result


def _build(pair: Pair, config: dict, device: torch.device, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if pair.kind == "vit":
        model = transformers.ViTForImageClassification(transformers.ViTConfig(**config))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    return model.to(device=device, dtype=getattr(torch, pair.dtype)).eval()


def _inputs(pair: Pair, config: dict, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if pair.kind == "vit":
        size = config["image_size"]
        return {"pixel_values": torch.randn(pair.batch, 3, size, size, generator=gen)}
    ids = torch.randint(0, config["vocab_size"], (pair.batch, 512), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _task_vectors(model: torch.nn.Module, rank: int = 16, seed: int = 1) -> tuple[TaskVector, TaskVector]:
    gen = torch.Generator().manual_seed(seed)
    state = {n: p.detach() for n, p in model.named_parameters()}
    full = TaskVector("full", deltas={n: 1e-3 * torch.randn(p.shape, generator=gen).to(p) for n, p in state.items()})
    lora = TaskVector("lora")
    for n, p in state.items():
        if p.dim() == 2 and "embed" not in n and n != "lm_head.weight" and "position" not in n:
            lora.lora[n] = LoraFactors(torch.randn(rank, p.shape[1], generator=gen).to(p),
                                       torch.randn(p.shape[0], rank, generator=gen).to(p), 0.5)
    return full, lora


class _StageClock:
    """Progress callback that notes when the statistics pass ends (its last batch's line), synchronised."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.statistics_done = device, None

    def __call__(self, message: str) -> None:
        if message.startswith("statistics: "):
            done, total = message.removeprefix("statistics: ").split(" ", 1)[0].split("/")
            if done == total:
                _sync(self.device)
                self.statistics_done = time.perf_counter()


def _calibration(tensors: dict[str, torch.Tensor]) -> Calibration:
    return Calibration(tensors, fingerprint(tensors), MEMORY)


def _prepare(pair: ModelPair, loaded: Loaded, bench: Pair, device: torch.device,
             solver: str = "eigh") -> tuple[float, float, Alignment]:
    """(statistics s, maps s, alignment) of the architecture's every space, as ``prepare`` estimates them."""
    cfg = PrepareConfig(MEMORY, MEMORY, CalibrationSpec(MEMORY), batch_size=bench.batch, device=device.type,
                        solver=solver)
    t_stats, t_maps, alignment = _timed_alignment(cfg, pair, loaded, device)
    # the pipeline hands maps back on the CPU (as an alignment file holds them); apply on the device, as the
    # task vectors are there
    on_device = Alignment({k: v.to(device) for k, v in alignment.maps.items()}, alignment.quality,
                          alignment.provenance)
    return t_stats, t_maps, on_device


def _timed_alignment(cfg: PrepareConfig, pair: ModelPair, loaded: Loaded,
                     device: torch.device) -> tuple[float, float, Alignment]:
    """(statistics s, maps s, alignment) of ``compute_alignment``, split where the last statistics batch reports."""
    clock = _StageClock(device)
    _sync(device)
    start = time.perf_counter()
    alignment = compute_alignment(cfg, pair, loaded=loaded, progress=clock)
    _sync(device)
    end = time.perf_counter()
    split = clock.statistics_done or start
    return split - start, end - split, alignment


def _speed_row(name: str, device: torch.device, dtype: str, spaces: int, t_forward: float, t_stats: float,
               t_maps: float, t_apply_full: float, t_apply_lora: float, **extra) -> dict:
    """One pair's result row: the times and their ratios to the bare forward, plus what ``extra`` adds."""
    return {"pair": name, "device": str(device), "dtype": dtype, "spaces": spaces,
            "forward_s": t_forward, "statistics_s": t_stats, "maps_s": t_maps,
            "maps_over_forward": t_maps / t_forward, "statistics_over_forward": t_stats / t_forward,
            "prepare_over_forward": (t_stats + t_maps) / t_forward, "apply_full_s": t_apply_full,
            "apply_full_over_forward": t_apply_full / t_forward, "apply_lora16_over_forward": t_apply_lora / t_forward,
            "apply_lora16_s": t_apply_lora, **extra}


def _transport(pair: ModelPair, tv: TaskVector, alignment: Alignment, bench: Pair,
               device: torch.device) -> tuple[TaskVector, dict]:
    """The prepared maps applied to ``tv``, as ``transport --alignment`` applies them."""
    cfg = TransportConfig(MEMORY, MEMORY, "theseus", task_vector=MEMORY, alignment=MEMORY, allow_partial=True,
                          batch_size=bench.batch, device=device.type)
    result, report = transport_in_memory(cfg, pair, tv, Loaded(alignment=alignment))
    return result, report.summary


def _pair_task_vectors(pair: ModelPair, bench: Pair, source: torch.nn.Module,
                       seed: int = 1) -> tuple[TaskVector, TaskVector]:
    """``_task_vectors`` of the source, restricted for a ViT to the parameters its architecture covers."""
    full, lora = _task_vectors(source, seed=seed)
    if bench.kind == "vit":
        full = TaskVector("full", deltas={k: v for k, v in full.deltas.items() if pair.architecture.match(k)})
        lora = TaskVector("lora", lora={k: v for k, v in lora.lora.items() if pair.architecture.match(k)})
    return full, lora


def vector_curve(pair: ModelPair, source: torch.nn.Module, alignment: Alignment, bench: Pair, device: torch.device,
                 prepare_s: float, counts: tuple[int, ...]) -> list[dict]:
    """N task vectors on one pair: one prepare plus N applies, each vector distinct (seeded), measured per N.

    ``separate_s`` is what N independent transports would cost (N prepares and N applies) at this run's
    prepare time: the saving the cached alignment buys."""
    rows = []
    for n in counts:
        vectors = [_pair_task_vectors(pair, bench, source, seed=100 + k)[0] for k in range(n)]
        applies = [_timed(device, lambda tv=tv: _transport(pair, tv, alignment, bench, device))[0] for tv in vectors]
        rows.append({"n": n, "prepare_s": prepare_s, "apply_total_s": sum(applies), "apply_mean_s": sum(applies) / n,
                     "total_s": prepare_s + sum(applies), "separate_s": n * prepare_s + sum(applies)})
    return rows


def run_pair(name: str, device: torch.device, curve: tuple[int, ...] = ()) -> dict:
    bench = PAIRS[name]
    source, target = _build(bench, bench.source, device, 0), _build(bench, bench.target, device, 1)
    data_a, data_b = _inputs(bench, bench.source, 2), _inputs(bench, bench.target, 2)
    if bench.kind == "vit":  # the same images at each model's resolution
        data_b = {"pixel_values": torch.nn.functional.interpolate(data_a["pixel_values"],
                                                                  size=bench.target["image_size"], mode="bilinear")}
    else:
        data_b = data_a
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def forward():
        with torch.inference_mode():
            for model, data in ((source, data_a), (target, data_b)):
                model(**{k: v.to(device).to(getattr(torch, bench.dtype)) if v.is_floating_point() else v.to(device)
                         for k, v in data.items()})

    forward()  # warm-up
    t_forward, _ = _timed(device, forward)
    info_a, info_b = info_from_model(source, f"{MEMORY}/source"), info_from_model(target, f"{MEMORY}/target")
    pair = pair_of(info_a, info_b, "identity")
    full, lora = _pair_task_vectors(pair, bench, source)
    loaded = Loaded(source_model=source, target_model=target, calibration=(_calibration(data_a), _calibration(data_b)))

    # the SVD route, side by side in the same run (the speed-up of the eigh route is this ratio); its
    # statistics pass is the warm-up (kernels, allocator) of the timed one
    _, t_maps_svd, _ = _prepare(pair, loaded, bench, device, solver="svd")
    t_stats, t_maps, alignment = _prepare(pair, loaded, bench, device)
    t_apply_full, (full_b, summary) = _timed(device, lambda: _transport(pair, full, alignment, bench, device))
    t_apply_lora, _ = _timed(device, lambda: _transport(pair, lora, alignment, bench, device))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None

    # identity oracle at this scale: A -> A must give tau back
    id_pair = pair_of(info_a, info_a, "identity")
    same = _calibration(data_a)
    id_loaded = Loaded(source_model=source, target_model=source, calibration=(same, same))

    def identity_error(solver: str) -> float:
        id_maps = _prepare(id_pair, id_loaded, bench, device, solver=solver)[2]
        id_out, _ = _transport(id_pair, full, id_maps, bench, device)
        return max(float((id_out.deltas[k].float() - v.float()).norm() / v.float().norm())
                   for k, v in full.deltas.items())

    curve_rows = vector_curve(pair, source, alignment, bench, device, t_stats + t_maps, curve) if curve else []
    return _speed_row(name, device, bench.dtype, len(alignment.maps), t_forward, t_stats, t_maps, t_apply_full,
                      t_apply_lora, vector_curve=curve_rows, maps_svd_s=t_maps_svd, peak_gib=peak,
                      identity_oracle_rel_err=identity_error("eigh"), identity_oracle_rel_err_svd=identity_error("svd"),
                      left_out=summary["left_out"], transported=len(full_b.names()))


# Real pretrained pairs from the offline fixtures (``python -m theseus_ops.demo.real``): a fixture name and
# its function-preserving release, so the oracle is exact (v2 + tau' must compute what v1 + tau does).
REAL_PAIRS = {"minilm-real": ("minilm", "v2-perm"), "smollm2-real": ("smollm2", "v2-perm")}
REAL_MAX_ROWS = 48  # the calibration rows BENCHMARKS.md's real-model figures use


def _peak_gib(device: torch.device) -> float:
    """The device's peak allocation, or on the CPU the process's peak resident set (so far)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def run_real_pair(name: str, device: torch.device) -> dict:
    """A real pair through the file-based entry points, timed as ``run_pair`` times a random one.

    The bare forward is both models on the same calibration rows the prepare sees; the oracle is
    ``demo.real.oracle`` on the transported full fine-tune, and the LoRA apply ports the fixture's adapter.
    """
    import tempfile

    from safetensors.torch import load_file

    from theseus_ops import api
    from theseus_ops.demo.real import build_real
    from theseus_ops.demo.real.oracle import oracle
    from theseus_ops.io.models import load_model
    from theseus_ops.io.task_vectors import read_task_vector
    from theseus_ops.pipeline import open_pair

    fixture, release = REAL_PAIRS[name]
    fx = build_real()
    src, tgt = fx.model(fixture), fx.model(fixture, release)
    pair = open_pair(str(src), str(tgt), "identity")
    models = [load_model(pair.source, device), load_model(pair.target, device)]
    cal = fx.calibration(fixture)
    rows = {k: v[:REAL_MAX_ROWS] for k, v in load_file(str(cal)).items() if k in ("input_ids", "attention_mask")}
    batch = PrepareConfig(str(src), str(tgt), CalibrationSpec(str(cal))).batch_size

    def forward():
        with torch.inference_mode():
            for model in models:
                for start in range(0, REAL_MAX_ROWS, batch):
                    model(**{k: v[start:start + batch].to(device) for k, v in rows.items()})

    forward()  # warm-up
    t_forward, _ = _timed(device, forward)
    cfg = PrepareConfig(str(src), str(tgt), CalibrationSpec(str(cal)), max_rows=REAL_MAX_ROWS, device=device.type)
    t_stats, t_maps, alignment = _timed_alignment(cfg, pair, Loaded(source_model=models[0], target_model=models[1]),
                                                  device)
    models.clear()  # the oracle loads its own models
    loaded = Loaded(alignment=alignment)
    tcfg = TransportConfig(str(src), str(tgt), "theseus", task_vector=str(fx.task_vector(fixture)),
                           alignment=MEMORY, device=device.type)
    full = read_task_vector(fx.task_vector(fixture), pair.source)
    lora = read_task_vector(fx.lora(fixture), pair.source)
    t_apply_full, (result, report) = _timed(device, lambda: transport_in_memory(tcfg, pair, full, loaded))
    t_apply_lora, _ = _timed(device, lambda: transport_in_memory(tcfg, pair, lora, loaded))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "transported.safetensors"
        api.publish_transport(result, report, pair, "theseus", out)
        error = oracle(fx, fixture, release, fx.task_vector(fixture), out)["error"]
    return _speed_row(name, device, str(next(iter(alignment.maps.values())).dtype), len(alignment.maps), t_forward,
                      t_stats, t_maps, t_apply_full, t_apply_lora, vector_curve=[], maps_svd_s=None,
                      peak_gib=_peak_gib(device), identity_oracle_rel_err=None, identity_oracle_rel_err_svd=None,
                      real_oracle_rel_err=error, left_out=report.summary["left_out"], transported=len(result.names()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="vit-cpu",
                        help=f"comma-separated, of {sorted(PAIRS)} (random init) and {sorted(REAL_PAIRS)} (the real "
                             "fixtures, `make real`)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", default="benchmarks/results/transport_speed.json")
    parser.add_argument("--curve", default="", metavar="N,N",
                        help="also time N distinct task vectors on one prepared pair, e.g. 1,4,16")
    parser.add_argument("--stream-1b", metavar="DIR", type=Path,
                        help="also measure prepare --stream on the 1B-class Llama pair built (once) under DIR, "
                             "against the streaming bound (benchmarks/stream_memory.py); about 20 minutes on 2 cores")
    args = parser.parse_args()
    curve = tuple(int(n) for n in args.curve.split(",") if n.strip())
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    rows = [run_real_pair(name, device) if name in REAL_PAIRS else run_pair(name, device, curve)
            for name in args.pairs.split(",") if name]
    streamed = None
    if args.stream_1b is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from stream_memory import run as run_streamed

        streamed = run_streamed(args.stream_1b)
    cols = ["pair", "forward_s", "statistics_s", "maps_s", "maps_svd_s", "prepare_over_forward",
            "maps_over_forward", "apply_full_over_forward", "apply_lora16_over_forward", "peak_gib",
            "identity_oracle_rel_err", "identity_oracle_rel_err_svd", "real_oracle_rel_err"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r.get(c):.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols)
              + " |")
    for r in rows:
        for c in r["vector_curve"]:
            print(f"{r['pair']}: N={c['n']:>3}  one prepare + N applies {c['total_s']:.2f}s "
                  f"(applies {c['apply_total_s']:.2f}s)  N separate transports {c['separate_s']:.2f}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "machine": platform.machine(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d")}
    out.write_text(json.dumps({**meta, "rows": rows, "stream_1b": streamed}, indent=2))


if __name__ == "__main__":
    main()

"""Peak memory of ``prepare --stream`` on a 1B-class random-init Llama pair, against the streaming bound.

The bound (the performance issue's): the larger model, plus one block of each model, plus the hidden
states of the calibration tokens at a block boundary. A streamed prepare holds, beyond those, one
block's statistics and the workspace of its largest map (docs/memory.md); this measures how the whole
compares. Run from the repository root:

    .venv/bin/python benchmarks/stream_memory.py --work /tmp/stream-1b

It builds (once, cached under ``--work``) a source Llama of width 2048 (MLP 5632) and a target of
width 2560 (MLP 6912), 16 layers each, random-init in bfloat16, about 0.85 B and 1.28 B parameters,
then runs ``theseus-ops prepare --stream`` in a subprocess with its resident set sampled
(``prepare_memory.measure``). ``--fill pad`` by default: on random weights with fewer calibration tokens
than the MLP width, the default ``weights`` fill runs three completion rounds of two 5632-wide float64
eigendecompositions per MLP space, an hour on 2 cores, and changes the memory only by one block's
priors (8·M_block, given below). The whole-model prepare is not run: by docs/memory.md it needs about
23 GB, this machine's size.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_memory import measure, print_phases

SOURCE = dict(hidden_size=2048, intermediate_size=5632, head_dim=128)
TARGET = dict(hidden_size=2560, intermediate_size=6912, head_dim=160)
COMMON = dict(num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=4, vocab_size=32000,
              max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def build(path: Path, widths: dict, seed: int, layers: int = 16) -> Path:
    """A random-init Llama in bfloat16 at ``path`` (skipped when it is there)."""
    import transformers

    if (path / "config.json").is_file():
        return path
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**COMMON, "num_hidden_layers": layers}, **widths)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bfloat16: no float32 copy of 1.3 B parameters
    try:
        model = transformers.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.config.dtype = "bfloat16"
    model.save_pretrained(str(path))
    return path


def calibration(path: Path, rows: int, length: int) -> Path:
    from safetensors.torch import save_file

    if not path.is_file():
        ids = torch.randint(3, COMMON["vocab_size"], (rows, length), generator=torch.Generator().manual_seed(0))
        save_file({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, str(path))
    return path


def _bytes(model_dir: Path) -> int:
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))


def bound(source: Path, target: Path, tokens: int) -> dict:
    """The streaming bound's terms, in bytes, from the weight files and the shapes."""
    from theseus_ops.io.models import inspect_model_dir

    terms = {}
    for name, path in (("source", source), ("target", target)):
        info = inspect_model_dir(path)
        block = [n for n in info.shapes if n.startswith("model.layers.0.")]
        terms[f"{name}_model"] = _bytes(path)
        terms[f"{name}_block"] = sum(math.prod(info.shapes[n]) * 2 for n in block)  # bfloat16
    terms["hidden_states"] = tokens * (SOURCE["hidden_size"] + TARGET["hidden_size"]) * 2
    terms["bound"] = max(terms["source_model"], terms["target_model"]) + terms["source_block"] + \
        terms["target_block"] + terms["hidden_states"]
    return terms


def run(work: Path, rows: int = 16, length: int = 128, fill: str = "pad", layers: int = 16) -> dict:
    """Build (or reuse) the pair under ``work``, run the streamed prepare, print and return the figures."""
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    suffix = "" if layers == 16 else f"-{layers}"
    source = build(work / f"source{suffix}", SOURCE, 0, layers)
    target = build(work / f"target{suffix}", TARGET, 1, layers)
    cal = calibration(work / f"calibration-{rows}x{length}.safetensors", rows, length)
    print(f"pair ready in {time.perf_counter() - t0:.0f} s", flush=True)
    terms = bound(source, target, rows * length)
    result = measure(["--source-base", str(source), "--target-base", str(target), "--calibration", str(cal),
                      "--device", "cpu", "--fill", fill, "--stream"], interval=0.5)
    print_phases(result)
    gib = {k: round(v / 2**30, 3) for k, v in terms.items()}
    print(f"wall {result['wall_s']} s, peak {result['peak_gib']} GiB; bound {gib['bound']} GiB = larger model "
          f"{max(gib['source_model'], gib['target_model'])} + blocks {gib['source_block']} + {gib['target_block']} "
          f"+ hidden states {gib['hidden_states']}; maps {result['maps_bytes'] / 2**30:.2f} GiB on disk")
    return {"date": time.strftime("%Y-%m-%d"), "fill": fill, "layers": layers, "tokens": rows * length,
            "bound_gib": gib, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stream-1b"), help="where the pair is built (cached)")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--fill", default="pad", choices=("pad", "weights"))
    parser.add_argument("--layers", type=int, default=16, help="depth of both models (fewer: a quicker check)")
    parser.add_argument("--out", default="benchmarks/results/stream_memory.json")
    args = parser.parse_args()
    result = run(args.work, args.rows, args.length, args.fill, args.layers)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The README's engine example, end to end: build a tiny pair, then prepare, transport, apply, inspect.
set -euo pipefail
BIN="${BIN:-.venv/bin}"
DIR="${1:-.theseus/engine-demo}"
"$BIN/python" -m theseus_ops.examples tiny-pair --out "$DIR"
T="$BIN/theseus-ops"
"$T" prepare --source-base "$DIR/v1" --target-base "$DIR/v2" --calibration "$DIR/calibration.safetensors" \
    --out "$DIR/v1-v2.alignment"
for method in theseus pad; do
  "$T" transport --source-base "$DIR/v1" --target-base "$DIR/v2" --source-tuned "$DIR/v1-tuned" \
      $([ "$method" = theseus ] && echo --alignment "$DIR/v1-v2.alignment") \
      --method "$method" --out "$DIR/task-v2-$method.safetensors" --report "$DIR/report-$method.json"
  "$T" apply --base "$DIR/v2" --task-vector "$DIR/task-v2-$method.safetensors" --alpha 1.0 --out "$DIR/v2-tuned-$method"
done
"$BIN/python" - "$DIR" <<'PY'
import sys, torch, transformers
from pathlib import Path
from theseus_ops.examples import lookup_task
d = Path(sys.argv[1])
ids, labels = lookup_task(64, 8, 64, seed=123)  # held-out sequences
load = lambda p: transformers.AutoModelForCausalLM.from_pretrained(str(d / p)).eval()
with torch.no_grad():
    ref = load("v1-tuned")(input_ids=ids).logits
    for name in ("v1", "v1-tuned", "v2", "v2-tuned-pad", "v2-tuned-theseus"):
        out = load(name)(input_ids=ids).logits
        pred, gold = out[:, :-1].argmax(-1), labels[:, 1:]
        acc = (pred == gold)[gold != -100].float().mean()
        print(f"{name:18s} skill accuracy {float(acc):.2f}   logits error vs v1-tuned "
              f"{float((out - ref).norm() / ref.norm()):.1e}")
PY

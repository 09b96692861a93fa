"""Fill comparison: what each way of handling undetermined directions does to equivariance and the oracles.

Run from the repository root:  .venv/bin/python benchmarks/fills.py --out benchmarks/results/fills.json

Rows, for the ``pad``, ``project`` and ``weights`` fills:
- equivariance on a rank-deficient pair (low-rank q/k, a grown and moved wider target, the pair of
  tests/test_equivariance.py): the largest relative gap, over parameters, between perm(τ_B) and
  τ_perm(B);
- the identity and permutation oracles of a tiny Llama calibrated on 2 examples (48 rows for 64 MLP
  units), as a logits error and as the largest relative weight error on identity;
- the identity oracle of a tiny BERT at init, whose LayerNorm outputs never move along their mean
  direction (structurally rank-deficient): the largest relative weight error;
- the random-init identity oracles of CLIP (a pooled norm space no weight reads) and a bare RoBERTa
  (tests/test_families.py), as the largest relative weight error.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import platform
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import test_equivariance as eq
from tests import tiny
from theseus_ops import api
from theseus_ops.config import CalibrationSpec, TransportConfig

FILLS = ("pad", "project", "weights")


class _Factory:
    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def _worst_weight_error(out: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    return max(float((out[k] - v).norm() / v.norm().clamp_min(1e-30)) for k, v in expected.items())


def equivariance(root: Path) -> dict[str, float]:
    pair = eq.pair.__wrapped__(_Factory(root))
    return {fill: eq._worst_relative_gap(pair, fill)[0] for fill in FILLS}


def short_calibration(root: Path, oracle: str) -> dict[str, dict[str, float]]:
    case = tiny.Case(root / f"short-{oracle}", "llama", oracle)
    short = tiny.calibration(case.root / "short.safetensors", rows=2)
    rows = {}
    for fill in FILLS:
        cfg = TransportConfig(str(case.source), str(case.target), "theseus", task_vector=str(case.task_vector),
                              calibration=CalibrationSpec(str(short)), fill=fill, device="cpu")
        out = case.root / f"out-{fill}.safetensors"
        api.transport(cfg, out)
        delta_b = load_file(str(out))
        row = {"logits_error": case.error(delta_b)}
        if oracle == "identity":
            row["max_weight_error"] = _worst_weight_error(delta_b, case.delta)
        rows[fill] = row
    return rows


def bert_identity(root: Path) -> dict[str, float]:
    model_dir, tv, calibration, delta = eq.bert_at_init(root)
    errors = {}
    for fill in FILLS:
        cfg = TransportConfig(str(model_dir), str(model_dir), "theseus", task_vector=str(tv),
                              calibration=CalibrationSpec(str(calibration)), fill=fill, device="cpu")
        api.transport(cfg, root / f"bert-{fill}.safetensors")
        errors[fill] = _worst_weight_error(load_file(str(root / f"bert-{fill}.safetensors")), delta)
    return errors


def family_identity(root: Path, kind: str) -> dict[str, float]:
    """The random-init identity oracle of ``tests/test_families.py`` for one family (16 examples, width 32):
    the largest relative weight error. ``clip``: a pooled norm space no weight reads (``post_ln``);
    ``roberta-bare``: attention sums whose neighbours' data maps are noisy on weak directions."""
    from tests.test_families import identity_case

    folder = root / f"family-{kind}"
    delta, calibration, _paired = identity_case(folder, kind)
    errors = {}
    for fill in FILLS:
        cfg = TransportConfig(str(folder / "A"), str(folder / "A"), "theseus",
                              task_vector=str(folder / "tv.safetensors"), calibration=calibration, fill=fill,
                              device="cpu")
        api.transport(cfg, folder / f"out-{fill}.safetensors")
        errors[fill] = _worst_weight_error(load_file(str(folder / f"out-{fill}.safetensors")), delta)
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/fills.json")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result = {
            "date": _dt.date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__,
            "equivariance_low_rank_qk": equivariance(root),
            "llama_short_calibration_identity": short_calibration(root, "identity"),
            "llama_short_calibration_permutation": short_calibration(root, "permutation"),
            "bert_identity_at_init_max_weight_error": bert_identity(root),
            "clip_identity_at_init_max_weight_error": family_identity(root, "clip"),
            "bare_roberta_identity_at_init_max_weight_error": family_identity(root, "roberta-bare"),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""A trained task vector on a permuted base, per architecture: the permutation oracle with a real update.

Run from the repository root:  PYTHONPATH=$PWD .venv/bin/python benchmarks/trained_oracle.py phi3 qwen3

A (each architecture's tiny random model) is fine-tuned for 40 AdamW steps on the lookup skill
(x -> 7x+3 mod V, ``theseus_ops.examples.lookup_task``); τ is what the fine-tune changed. B is A with
residual channels, heads and MLP units permuted. Printed per method: the logits error of B + τ_B
against A + τ_A, and the answer-token accuracy of B + τ_B on 32 of the fine-tuning sequences.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import tiny
from tests.test_oracles import run

METHODS = ("theseus", "theseus-data-free", "pad")
accuracy = tiny.answer_accuracy


def measure(root: Path, architecture: str) -> str:
    case = tiny.Case(root / architecture, architecture, "permutation")
    losses, ids, labels = tiny.finetune_lookup(case)
    ids, labels = ids[:32], labels[:32]
    cells = [f"{losses[0]:.2f} → {losses[-1]:.2f}",
             f"{accuracy(case.config_a, tiny.add_delta(case.state_a, case.delta), ids, labels):.2f}",
             f"{accuracy(case.config_b, case.state_b, ids, labels):.2f}"]
    for method in METHODS:
        delta_b, _ = run(case, method)
        cells.append(f"{case.error(delta_b):.1e} / "
                     f"{accuracy(case.config_b, tiny.add_delta(case.state_b, delta_b), ids, labels):.2f}")
    return f"| {architecture} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("architectures", metavar="families", nargs="+",
                        choices=[a for a in tiny.KITS if a not in ("xlm-roberta", "distilbert")])
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("theseus_ops").setLevel(logging.ERROR)
    torch.set_num_threads(2)
    print("| family | fine-tune loss | A + τ accuracy | B accuracy | " + " | ".join(METHODS) + " |")
    print("|---|---|---|---|" + "---|" * len(METHODS))
    with tempfile.TemporaryDirectory() as tmp:
        for architecture in args.architectures:
            print(measure(Path(tmp), architecture), flush=True)


if __name__ == "__main__":
    main()

"""Calibration sets built from a recipe: which inputs both bases see while their maps are estimated.

The maps are only as good as the directions the calibration inputs excite. A task's own train rows
are short and alike (the tiny family's prompts leave many residual directions weakly determined), so
a recipe mixes sources, each a documented, recorded choice:

- ``task_rows`` train rows of the task, encoded by the evaluator, with their answers or without
  (``answers``: without, the answer tokens are masked out; GradFix then has no labels);
- ``text_rows`` windows of generic text: ``text`` if given, else the task's held-out text
  (``TaskConfig.heldout``, a dataset's ``heldout.txt``);
- ``probe_rows`` seeded token sequences drawn from the vocabulary both bases share;
- every row cut to ``max_length`` tokens.

Text and probe rows apply to token models whose task rows carry only ids, mask and labels; an image
task, or an encoder-decoder, calibrates on its task rows alone. What was used is recorded with the
set (``io.calibration.RECIPE_METADATA_KEY`` in the file, then the alignment's provenance and the registered tags).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from theseus_ops.errors import InputError
from theseus_ops.evaluation.recipe import CalibrationRecipe
from theseus_ops.io.calibration import RECIPE_METADATA_KEY

PROBE_SEED = 0
_TOKEN_KEYS = {"input_ids", "attention_mask", "labels"}


@dataclass(frozen=True)
class BuiltCalibration:
    """One side's calibration tensors and the rows each source gave (the record)."""

    tensors: dict[str, torch.Tensor]
    used: dict[str, int]

    def metadata(self, recipe: CalibrationRecipe) -> dict[str, str]:
        return {RECIPE_METADATA_KEY: json.dumps({"recipe": recipe.as_dict(), "used": self.used}, sort_keys=True)}


def shared_vocabulary(*model_dirs: str | Path) -> int:
    """The vocabulary size both bases share (probe rows draw their ids below it)."""
    from theseus_ops.io.models import read_config

    sizes = [read_config(Path(d)).get("vocab_size") for d in model_dirs]
    if not all(isinstance(s, int) and s > 0 for s in sizes):
        raise InputError("probe rows need vocab_size in both bases' configs")
    return min(sizes)


def build_calibration(evaluator, model_dir: str | Path, recipe: CalibrationRecipe, *,
                      vocab: int | None = None, heldout: Path | None = None) -> BuiltCalibration | None:
    """The recipe's rows for one base, in its own tokenizer; None if the task gives no calibration inputs.

    ``evaluator``: the task's evaluator (its ``calibration`` encodes the task rows). ``vocab``: the
    shared vocabulary for probe rows (:func:`shared_vocabulary`). ``heldout``: the task's held-out text,
    used for text rows when the recipe names no ``text``.
    """
    task = evaluator.calibration(model_dir, recipe.task_rows) if recipe.task_rows else None
    if task is None and recipe.task_rows:
        return None
    length = usable_length(model_dir, recipe.max_length)
    parts: list[dict[str, torch.Tensor]] = []
    used = {"task_rows": 0, "text_rows": 0, "probe_rows": 0}
    if task is not None:
        task = _cut(task, length)
        if not recipe.answers and "labels" in task:
            task = _without_answers(task)
        parts.append(task)
        used["task_rows"] = _rows(task)
    tokens = task is None or (set(task) <= _TOKEN_KEYS and "input_ids" in task)
    labelled = task is not None and "labels" in task
    if tokens and (recipe.text_rows or recipe.probe_rows):
        from theseus_ops.evaluation.lm import text_ids, windows_of
        from theseus_ops.evaluation.loading import load_tokenizer

        tokenizer = load_tokenizer(model_dir)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        source = recipe.text or heldout
        if recipe.text_rows and source is not None and Path(source).is_file():
            ids = text_ids(tokenizer, Path(source).read_text(encoding="utf-8"), length, recipe.text_rows)
            windows = windows_of(ids, length, recipe.text_rows)
            if windows:
                parts.append(_token_rows(windows, pad, labelled))
                used["text_rows"] = len(windows)
        if recipe.probe_rows:
            if vocab is None:
                raise InputError("probe rows need the vocabulary both bases share")
            gen = torch.Generator().manual_seed(PROBE_SEED)
            probes = torch.randint(0, vocab, (recipe.probe_rows, length), generator=gen)
            parts.append(_token_rows(probes.tolist(), pad, labelled))
            used["probe_rows"] = recipe.probe_rows
        parts = _same_width(parts, pad)
    if not parts or sum(used.values()) < 2:
        raise InputError(f"the calibration recipe gave {sum(used.values())} row(s) for {model_dir} "
                         f"({', '.join(f'{k} {v}' for k, v in used.items())}); at least 2 are needed")
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise InputError(f"calibration sources disagree on their tensors: {[sorted(p) for p in parts]}")
    return BuiltCalibration({k: torch.cat([p[k] for p in parts]).contiguous() for k in sorted(keys)}, used)


def usable_length(model_dir: str | Path, max_length: int) -> int:
    """``max_length``, cut to the positions the model has (less two, for RoBERTa's padding offset)."""
    from theseus_ops.io.models import read_config

    config = read_config(Path(model_dir))
    sections = [config, *(v for v in config.values() if isinstance(v, dict))]  # a text_config nests its own
    limits = [c[k] for c in sections for k in ("n_positions", "max_position_embeddings")
              if isinstance(c.get(k), int) and c[k] > 2]
    return max(2, min([max_length, *(limit - 2 for limit in limits)]))


def _rows(tensors: dict[str, torch.Tensor]) -> int:
    return next(iter(tensors.values())).shape[0]


def _cut(tensors: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    """Token tensors cut to ``length`` columns (images and other tensors unchanged)."""
    return {k: (v[:, :length] if k in _TOKEN_KEYS and v.dim() == 2 else v) for k, v in tensors.items()}


def _without_answers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Prompts only: the labelled (answer) positions leave the mask; no labels remain."""
    answer = tensors["labels"] != -100
    out = dict(tensors)
    if "attention_mask" in out:
        out["attention_mask"] = out["attention_mask"].masked_fill(answer, 0)
    out["labels"] = torch.full_like(tensors["labels"], -100)
    return out


def _token_rows(rows: list[list[int]], pad: int, labelled: bool) -> dict[str, torch.Tensor]:
    from theseus_ops.evaluation.batches import right_pad

    ids, mask = right_pad(rows, pad)
    out = {"input_ids": ids, "attention_mask": mask}
    if labelled:  # GradFix's loss stays on the task's answers
        out["labels"] = torch.full_like(ids, -100)
    return out


def _same_width(parts: list[dict[str, torch.Tensor]], pad: int) -> list[dict[str, torch.Tensor]]:
    """Right-pad every part's token tensors to the widest part's length."""
    width = max((p["input_ids"].shape[1] for p in parts if "input_ids" in p), default=0)
    fill = {"input_ids": pad, "attention_mask": 0, "labels": -100}
    out = []
    for part in parts:
        grown = {}
        for key, value in part.items():
            missing = width - value.shape[1] if key in fill and value.dim() == 2 else 0
            grown[key] = (torch.cat([value, torch.full((value.shape[0], missing), fill[key], dtype=value.dtype)], 1)
                          if missing > 0 else value)
        out.append(grown)
    return out



def write_calibration(base: str | Path, dataset: str | Path, out: str | Path, recipe: CalibrationRecipe, *,
                      task_kind: str = "generation", other_base: str | Path | None = None,
                      overwrite: bool = False) -> BuiltCalibration:
    """``theseus-ops calibrate``: the recipe's calibration file for ``base``, as the workflow builds it.

    ``dataset``: a task directory (its train split, and ``heldout.txt`` for text rows when the recipe
    names no text). ``other_base``: the pair's other base, whose vocabulary bounds the probe ids. The
    file is written atomically, with the recipe and the rows used in its metadata.
    """
    from safetensors.torch import save_file

    from theseus_ops.evaluation.config import TaskConfig
    from theseus_ops.evaluation.registry import evaluator_for
    from theseus_ops.io.atomic import atomic_path, check_output, overwriting

    check_output(out, overwrite=overwrite, what="--out")
    dataset = Path(dataset)
    heldout = dataset / "heldout.txt"
    config = TaskConfig(task_kind=task_kind, dataset=dataset, heldout=heldout if heldout.is_file() else None)
    evaluator = evaluator_for(config, report=lambda _m: None)
    vocab = shared_vocabulary(base, *([other_base] if other_base else [])) if recipe.probe_rows else None
    built = build_calibration(evaluator, base, recipe, vocab=vocab, heldout=config.heldout)
    if built is None:
        raise InputError(f"a {task_kind} task gives no calibration inputs")
    with overwriting([out] if overwrite else []), atomic_path(out) as tmp:
        save_file(built.tensors, str(tmp), metadata=built.metadata(recipe))
    return built

"""Reading and validating task splits, one reader per row format.

* prompt/answer JSONL (``generation``): ``{"prompt", "answer"}`` per line;
* classification JSONL: ``{"text", "label"}`` or ``{"text_a", "text_b", "label"}`` per line, the
  label a name from the model's ``id2label`` or an integer id;
* plain text (``perplexity`` splits, the held-out text);
* images (``image-classification``): ``<split>.safetensors`` with ``pixel_values`` [N, C, H, W] and
  ``labels`` [N], or a folder ``<split>/<label>/<image file>``.

Lines end at ``\\n`` only (JSON strings may hold U+2028 and the like). Every problem is an
InputError naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from theseus_ops.errors import InputError
from theseus_ops.evaluation.config import SPLITS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _objects(data: bytes, where: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON value) of every non-blank line."""
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{where}:{number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                             f"{exc.start + 1})") from None
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except RecursionError:
            raise InputError(f"{where}:{number}: not valid JSON (nested too deeply)") from None
        except ValueError as exc:
            raise InputError(f"{where}:{number}: not valid JSON ({exc})") from exc


def split_file(task_dir: str | Path, split: str, suffix: str = ".jsonl") -> Path:
    """``<task_dir>/<split><suffix>``, which must exist."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    path = Path(task_dir) / f"{split}{suffix}"
    if not path.is_file():
        raise InputError(f"task split {path} does not exist")
    return path


# -- prompt/answer -----------------------------------------------------------------------------------
def parse_prompt_answer(data: bytes, where: str) -> list[tuple[str, str]]:
    """The ``(prompt, answer)`` rows of a JSONL split."""
    rows: list[tuple[str, str]] = []
    for number, row in _objects(data, where):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(
                row.get("answer"), str):
            raise InputError(f"{where}:{number}: each line must be an object with string 'prompt' and 'answer'")
        if not row["prompt"] or not row["answer"]:
            raise InputError(f"{where}:{number}: 'prompt' and 'answer' must be non-empty")
        rows.append((row["prompt"], row["answer"]))
    if not rows:
        raise InputError(f"{where}: the split is empty")
    return rows


def load_prompt_answer(task_dir: str | Path, split: str) -> list[tuple[str, str]]:
    path = split_file(task_dir, split)
    return parse_prompt_answer(path.read_bytes(), str(path))


# -- classification ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextExample:
    """One classification row: a text (or a text pair) and its label, a name or an id."""

    text: str
    label: str | int
    text_pair: str | None = None


def parse_classification(data: bytes, where: str) -> list[TextExample]:
    """The rows of a classification JSONL split; all rows single texts, or all text pairs."""
    rows: list[TextExample] = []
    pairs: bool | None = None
    for number, row in _objects(data, where):
        if not isinstance(row, dict):
            raise InputError(f"{where}:{number}: each line must be an object with 'text' (or 'text_a' and "
                             "'text_b') and 'label'")
        is_pair = "text_a" in row or "text_b" in row
        keys = ("text_a", "text_b") if is_pair else ("text",)
        if not all(isinstance(row.get(k), str) and row[k] for k in keys):
            raise InputError(f"{where}:{number}: {' and '.join(repr(k) for k in keys)} must be non-empty strings")
        label = row.get("label")
        if isinstance(label, bool) or not isinstance(label, str | int) or label == "":
            raise InputError(f"{where}:{number}: 'label' must be a label name or an integer id, got {label!r}")
        if pairs is not None and pairs != is_pair:
            raise InputError(f"{where}:{number}: mixes single texts and text pairs; use one format per split")
        pairs = is_pair
        rows.append(TextExample(row["text_a"], label, row["text_b"]) if is_pair else TextExample(row["text"], label))
    if not rows:
        raise InputError(f"{where}: the split is empty")
    return rows


def load_classification(task_dir: str | Path, split: str) -> list[TextExample]:
    path = split_file(task_dir, split)
    return parse_classification(path.read_bytes(), str(path))


# -- text ----------------------------------------------------------------------------------------------
def read_text(path: str | Path, what: str = "text file") -> str:
    """A UTF-8 text file (undecodable bytes replaced: a corpus is data, not a config)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise InputError(f"{what} {path} is empty")
    return text


# -- images --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageSplit:
    """Either ready ``pixel_values`` with integer ``labels``, or image files with their label folder names."""

    labels: list[str | int]
    pixel_values: object | None = None  # torch.Tensor [N, C, H, W]
    files: list[Path] | None = None


def load_images(task_dir: str | Path, split: str) -> ImageSplit:
    """``<split>.safetensors`` if present, else the folder ``<split>/<label>/*``."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    tensors = Path(task_dir) / f"{split}.safetensors"
    if tensors.is_file():
        return _image_tensors(tensors)
    folder = Path(task_dir) / split
    if not folder.is_dir():
        raise InputError(f"task split {tensors} does not exist, nor a folder {folder} of one folder per label")
    files: list[Path] = []
    labels: list[str | int] = []
    for label_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for image in sorted(p for p in label_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            files.append(image)
            labels.append(label_dir.name)
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in its label folders")
    return ImageSplit(labels, files=files)


def _image_tensors(path: Path) -> ImageSplit:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
    if set(tensors) != {"pixel_values", "labels"}:
        raise InputError(f"{path}: an image split holds exactly 'pixel_values' and 'labels', found {sorted(tensors)}")
    pixels, labels = tensors["pixel_values"], tensors["labels"]
    if pixels.dim() != 4 or not pixels.is_floating_point() or pixels.shape[0] == 0:
        raise InputError(f"{path}: 'pixel_values' must be floating point [N, C, H, W] with N >= 1, got "
                         f"{str(pixels.dtype).removeprefix('torch.')} {list(pixels.shape)}")
    if not bool(torch.isfinite(pixels).all()):
        raise InputError(f"{path}: 'pixel_values' contains NaN or Inf")
    if labels.dim() != 1 or labels.shape[0] != pixels.shape[0] or labels.is_floating_point():
        raise InputError(f"{path}: 'labels' must be {pixels.shape[0]} integer class ids, got "
                         f"{str(labels.dtype).removeprefix('torch.')} {list(labels.shape)}")
    return ImageSplit([int(x) for x in labels.tolist()], pixel_values=pixels)

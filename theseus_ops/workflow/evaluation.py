"""The workflow's side of evaluation: a task vector's catalog tags to a task config and a local dataset.

Scoring itself is :mod:`theseus_ops.evaluation`; this module only resolves what the catalog says
(through :class:`~theseus_ops.catalog.schema.TaskVectorTags`, never raw tag strings) into a
validated :class:`~theseus_ops.evaluation.TaskConfig` whose files are on this worker.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from theseus_ops.catalog.schema import TaskVectorTags
from theseus_ops.errors import InputError
from theseus_ops.evaluation.config import (
    CLASSIFICATION,
    GENERATION,
    IMAGE_CLASSIFICATION,
    PERPLEXITY,
    SPLITS,
    TaskConfig,
)
from theseus_ops.evaluation.loading import load_tokenizer

__all__ = ["HELDOUT_FILE", "dataset_dir", "load_tokenizer", "task_config"]

HELDOUT_FILE = "heldout.txt"  # the general-capability text of LM tasks, beside the splits


def _split_present(path: Path, task_kind: str, split: str) -> bool:
    if task_kind in (GENERATION, CLASSIFICATION):
        return (path / f"{split}.jsonl").is_file()
    if task_kind == PERPLEXITY:
        return (path / f"{split}.txt").is_file()
    if task_kind == IMAGE_CLASSIFICATION:
        return (path / f"{split}.safetensors").is_file() or (path / split).is_dir()
    return True  # a custom evaluator reads its own files


def _split_name(task_kind: str, split: str) -> str:
    return {PERPLEXITY: f"{split}.txt", IMAGE_CLASSIFICATION: f"{split}.safetensors or {split}/"}.get(
        task_kind, f"{split}.jsonl")


def dataset_dir(uri: str, task_kind: str = GENERATION) -> Path:
    """The local task directory a dataset URI names, with every split a ``task_kind`` task needs.

    Only ``file://DIR`` is supported so far.
    """
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise InputError(f"dataset {uri}: only file://DIR task directories are supported by the workflow")
    path = Path(unquote(parsed.netloc + parsed.path))
    if not path.is_dir():
        raise InputError(f"dataset {uri}: directory {path} does not exist")
    missing = [s for s in SPLITS if not _split_present(path, task_kind, s)]
    if missing:
        names = ", ".join(_split_name(task_kind, s) for s in missing)
        raise InputError(f"dataset {uri}: missing split file(s) {names}")
    return path


def task_config(tags: TaskVectorTags, batch_size: int | None = None) -> TaskConfig:
    """How the workflow scores a task vector's task, its datasets checked on this worker.

    The held-out text of LM tasks is ``heldout.txt`` in the dataset directory, when there is one; a
    general dataset (``theseus.general_dataset``) is a second task of the same kind, scored on test.
    """
    data = dataset_dir(tags.dataset, tags.resolved_task_kind)
    heldout = data / HELDOUT_FILE
    general = None if tags.general_dataset is None else dataset_dir(tags.general_dataset, tags.resolved_task_kind)
    extra = {} if batch_size is None else {"batch_size": batch_size}
    return TaskConfig(task_kind=tags.resolved_task_kind, metric=tags.metric, dataset=data,
                      heldout=heldout if heldout.is_file() else None, general_task=general,
                      chat_template=tags.uses_chat_template, max_new_tokens=tags.new_tokens,
                      evaluator=tags.evaluator, **extra)

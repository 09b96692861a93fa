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
from theseus_ops.workflow.dataset_sources import HELDOUT_FILE, fetch_s3, from_save_to_disk, is_save_to_disk

__all__ = ["HELDOUT_FILE", "dataset_dir", "load_tokenizer", "task_config"]


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

    ``file://DIR`` is used in place; ``s3://BUCKET/PREFIX`` is downloaded and verified into the cache
    (:func:`~theseus_ops.workflow.dataset_sources.fetch_s3`). Either may be a ``datasets.save_to_disk``
    DatasetDict, converted to split files in the cache
    (:func:`~theseus_ops.workflow.dataset_sources.from_save_to_disk`).
    """
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        path = fetch_s3(uri)
    elif parsed.scheme == "file":
        path = Path(unquote(parsed.netloc + parsed.path))
        if not path.is_dir():
            raise InputError(f"dataset {uri}: directory {path} does not exist")
    else:
        raise InputError(f"dataset {uri}: only file://DIR and s3://BUCKET/PREFIX datasets are supported by the "
                         "workflow")
    if is_save_to_disk(path):
        path = from_save_to_disk(uri, path, task_kind)
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

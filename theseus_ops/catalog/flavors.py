"""Which MLflow transformers pipeline a transported model is logged as, and the logging of the non-generation ones.

A consumer loads a registered model with ``mlflow.transformers.load_model`` or
``mlflow.pyfunc.load_model`` and gets the pipeline of its task: a classifier must come back as a
``text-classification`` pipeline, not as a text generator, or registration fails on its head.
The pipeline follows the task kind the task vector is cataloged with; a model without a task head
(a bare ``BertModel``, ``ViTModel``) is logged as ``feature-extraction`` whatever the kind, since
no other pipeline can run it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from theseus_ops.errors import InputError
from theseus_ops.evaluation.config import CLASSIFICATION, CUSTOM, GENERATION, IMAGE_CLASSIFICATION, PERPLEXITY
from theseus_ops.io.loading_lock import MODEL_BUILDING

TEXT_GENERATION = "text-generation"
TEXT_CLASSIFICATION = "text-classification"
IMAGE_CLASSIFICATION_TASK = "image-classification"
FEATURE_EXTRACTION = "feature-extraction"

_BY_TASK_KIND = {GENERATION: TEXT_GENERATION, PERPLEXITY: TEXT_GENERATION, CLASSIFICATION: TEXT_CLASSIFICATION,
            IMAGE_CLASSIFICATION: IMAGE_CLASSIFICATION_TASK}
# the head an architecture name ends in -> the pipeline that runs it (for user-scored tasks)
_BY_HEAD = {"ForCausalLM": TEXT_GENERATION, "LMHeadModel": TEXT_GENERATION,
            "ForSequenceClassification": TEXT_CLASSIFICATION,
            "ForImageClassification": IMAGE_CLASSIFICATION_TASK}
TEXT_EXAMPLE = ["theseus ports task vectors to a new base release"]


def _architectures(model_dir: Path) -> list[str]:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{model_dir}: no readable config.json ({exc})") from exc
    return [a for a in config.get("architectures") or [] if isinstance(a, str)]


def is_bare(architectures: list[str]) -> bool:
    """A model with no task head: every architecture is ``<Name>Model`` (``BertModel``, ``ViTModel``)."""
    return bool(architectures) and all(a.endswith("Model") and "For" not in a and "Head" not in a
                                       for a in architectures)


def pipeline_task(task_kind: str, model_dir: Path) -> str:
    """The transformers pipeline task a model of ``task_kind`` in ``model_dir`` is logged as."""
    architectures = _architectures(model_dir)
    if is_bare(architectures):
        return FEATURE_EXTRACTION
    if task_kind in _BY_TASK_KIND:
        return _BY_TASK_KIND[task_kind]
    if task_kind == CUSTOM:
        for arch in architectures:
            for head, task in _BY_HEAD.items():
                if arch.endswith(head):
                    return task
        raise InputError(f"{model_dir}: architecture {', '.join(architectures) or 'unknown'} has no MLflow "
                         f"pipeline for a custom-scored task (a causal LM, a sequence or image classifier, or a "
                         f"bare encoder is needed)")
    raise InputError(f"no MLflow pipeline for task kind {task_kind!r}")


def _example_image():
    """A small RGB image as MLflow's image pipelines take it: base64 of its PNG bytes."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 200)).save(buf, format="PNG")
    return [base64.b64encode(buf.getvalue()).decode()]


def build_pipeline(task: str, model_dir: Path):
    """The pipeline of ``task`` from ``model_dir``: model plus tokenizer, or plus image processor for images."""
    import transformers

    if task == FEATURE_EXTRACTION and not (model_dir / "tokenizer_config.json").is_file():
        raise InputError(f"{model_dir}: a bare encoder is logged as a text feature-extraction pipeline and needs "
                         f"its tokenizer in the directory (bare image encoders are not registered yet)")
    try:
        with MODEL_BUILDING:
            if task == IMAGE_CLASSIFICATION_TASK:
                return transformers.pipeline(task, model=str(model_dir), image_processor=str(model_dir))
            return transformers.pipeline(task, model=str(model_dir), tokenizer=str(model_dir))
    except (OSError, ValueError, KeyError) as exc:
        need = "image processor" if task == IMAGE_CLASSIFICATION_TASK else "tokenizer"
        raise InputError(f"{model_dir}: cannot build a {task} pipeline (model and {need} are needed in the "
                         f"directory): {str(exc).splitlines()[0] if str(exc) else exc}") from exc


class _QuietPeftPipeline(logging.Filter):
    """Drops transformers' "The model 'PeftModel' is not supported for <task>" line: a PEFT model runs in any
    pipeline its base runs in (MLflow hides the same line when it loads an adapter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is not supported for" not in record.getMessage()


def scale_lora(model, alpha: float) -> int:
    """Multiply every LoRA ``B`` factor of a PEFT model by ``alpha``, so the adapter adds α·ΔW; returns how many."""
    import torch

    scaled = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name or ".lora_embedding_B." in name:
                param.mul_(alpha)
                scaled += 1
    return scaled


def build_adapter_pipeline(task: str, base_dir: Path, adapter_dir: Path, alpha: float = 1.0):
    """The pipeline of ``task`` with the base model of ``base_dir`` wrapped in the PEFT adapter of ``adapter_dir``.

    The adapter's LoRA ``B`` factors are scaled by ``alpha`` here, so the wrapped model computes
    base + α·ΔW, the model a merge at α would give; the base's own weights are not touched.
    """
    import transformers
    from peft import PeftModel

    from theseus_ops.io.task_vectors import ADAPTER_CONFIG

    config = _adapter_config(adapter_dir / ADAPTER_CONFIG)
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("modules_to_save"):
        raise InputError(f"{adapter_dir}: only plain LoRA adapters (no DoRA, no modules_to_save) are registered "
                         f"as adapters")
    base = build_pipeline(task, base_dir)
    try:
        with MODEL_BUILDING:
            model = PeftModel.from_pretrained(base.model, str(adapter_dir)).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"{adapter_dir}: not a PEFT adapter for {base_dir}: "
                         f"{str(exc).splitlines()[0] if str(exc) else exc}") from exc
    if not scale_lora(model, alpha):
        raise InputError(f"{adapter_dir}: the adapter has no LoRA factors")
    parts = ({"image_processor": base.image_processor} if task == IMAGE_CLASSIFICATION_TASK
             else {"tokenizer": base.tokenizer})
    quiet = _QuietPeftPipeline()
    pipeline_log = logging.getLogger("transformers.pipelines.base")
    pipeline_log.addFilter(quiet)
    try:
        return transformers.pipeline(task, model=model, **parts)
    finally:
        pipeline_log.removeFilter(quiet)


def _adapter_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: no readable adapter config ({exc})") from exc
    if not isinstance(config, dict):
        raise InputError(f"{path}: the adapter config is not a JSON object")
    return config


def signature_and_example(pipe, task: str):
    """An input example for ``task`` and the signature MLflow infers from the pipeline's output on it.

    ``generate_signature_output`` runs the pipeline as its pyfunc would, offline, so the logged
    signature is what a consumer's ``predict`` returns.
    """
    import mlflow
    from mlflow.models import infer_signature

    example = _example_image() if task == IMAGE_CLASSIFICATION_TASK else TEXT_EXAMPLE
    output = mlflow.transformers.generate_signature_output(pipe, example)
    return infer_signature(example, output), example

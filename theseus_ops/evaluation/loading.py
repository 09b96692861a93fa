"""Loading a model directory's model, tokenizer or image processor, with one-line errors.

Everything loads from local files only (``local_files_only``): a worker never reaches a hub, and a
directory that lacks a file fails here with the directory's name, not later in a forward pass.
"""

from __future__ import annotations

from pathlib import Path

import torch

from theseus_ops.errors import InputError
from theseus_ops.io.loading_lock import MODEL_BUILDING


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _quiet() -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()


def load_tokenizer(model_dir: str | Path):
    """The model directory's own tokenizer, checked to fit the model's vocabulary."""
    import transformers

    from theseus_ops.io.models import check_tokenizer_fits, read_config

    _quiet()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds; the user gets one line
        raise InputError(f"{model_dir}: cannot load its tokenizer ({_why(exc)})") from exc
    check_tokenizer_fits(tokenizer, read_config(Path(model_dir)), model_dir)
    return tokenizer


def load_image_processor(model_dir: str | Path):
    """The model directory's image processor (``preprocessor_config.json``), for images from files."""
    import transformers

    _quiet()
    if not (Path(model_dir) / "preprocessor_config.json").is_file():
        raise InputError(f"{model_dir}: no preprocessor_config.json; images from files need the model's image "
                         "processor saved with it (or give pixel_values in a safetensors file)")
    try:
        return transformers.AutoImageProcessor.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:
        raise InputError(f"{model_dir}: cannot load its image processor ({_why(exc)})") from exc


def load_model(model_dir: str | Path, auto_class: str, device: torch.device) -> torch.nn.Module:
    """``transformers.<auto_class>.from_pretrained`` in the checkpoint's own dtype, on ``device``, in eval mode."""
    import transformers

    _quiet()
    if not (Path(model_dir) / "config.json").is_file():
        raise InputError(f"{model_dir}: not a model directory (no config.json)")
    cls = getattr(transformers, auto_class)
    try:
        with MODEL_BUILDING:
            model = cls.from_pretrained(str(model_dir), local_files_only=True, dtype="auto")
    except Exception as exc:
        raise InputError(f"{model_dir}: cannot load as {auto_class} ({_why(exc)})") from exc
    return model.to(device).eval()

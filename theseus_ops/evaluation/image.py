"""``image-classification`` tasks: ViT or CLIP-vision with a classification head; accuracy (and macro-F1).

A split is ``<split>.safetensors`` (``pixel_values`` [N, C, H, W], ``labels`` [N] class ids), or
a folder ``<split>/<label>/<image>``, turned into pixels by the model directory's own image
processor. Folder names are label names of the model config (or integer ids).
"""

from __future__ import annotations

from pathlib import Path

import torch

from theseus_ops.errors import InputError
from theseus_ops.evaluation.batches import chunks
from theseus_ops.evaluation.config import IMAGE_CLASSIFICATION, TASK_KIND_METRICS
from theseus_ops.evaluation.data import ImageSplit, load_images
from theseus_ops.evaluation.device import float_dtype, model_device
from theseus_ops.evaluation.labelled import LabelPredictionEvaluator
from theseus_ops.evaluation.labels import to_ids
from theseus_ops.evaluation.loading import load_image_processor
from theseus_ops.progress import Ticker


def pixels_of(split: ImageSplit, processor, where: str) -> torch.Tensor:
    """The split's pixel values: as given, or the processor's output for its image files."""
    if split.pixel_values is not None:
        return split.pixel_values
    if processor is None:
        raise InputError(f"{where}: images from files need the model's image processor "
                         "(preprocessor_config.json in the model directory)")
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in split.files or []:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise InputError(f"{path}: not a readable image ({exc})") from exc
    return processor(images=images, return_tensors="pt")["pixel_values"]


@torch.no_grad()
def predict_pixels(model: torch.nn.Module, pixels: torch.Tensor, *, batch_size: int, report=None,
                   what: str = "classify") -> list[int]:
    device, dtype = model_device(model), float_dtype(model)
    parts = list(chunks(pixels.shape[0], batch_size))
    ticker = Ticker(len(parts))
    out: list[int] = []
    for k, part in enumerate(parts, 1):
        out.extend(model(pixel_values=pixels[part].to(device, dtype)).logits.argmax(-1).tolist())
        ticker.tick(k, report if len(parts) > 1 else None, f"{what}: batch")
    return out


class ImageClassificationEvaluator(LabelPredictionEvaluator):
    auto_class = "AutoModelForImageClassification"
    metrics = TASK_KIND_METRICS[IMAGE_CLASSIFICATION]

    def __init__(self, config, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self._splits: dict[tuple[Path, str], ImageSplit] = {}
        self._pixels: dict[tuple[int, Path, str], tuple[object, torch.Tensor]] = {}

    def load_processor(self, model_dir: str | Path):
        """The image processor when the directory has one; only image files need it."""
        return load_image_processor(model_dir) if (Path(model_dir) / "preprocessor_config.json").is_file() else None

    def split(self, name: str, task_dir: Path | None = None) -> ImageSplit:
        task_dir = task_dir or self.config.data_dir
        if (task_dir, name) not in self._splits:
            loaded = load_images(task_dir, name)
            if self.config.limit is not None:
                n = self.config.limit
                loaded = ImageSplit(loaded.labels[:n], None if loaded.pixel_values is None else loaded.pixel_values[:n],
                                    None if loaded.files is None else loaded.files[:n])
            self._splits[(task_dir, name)] = loaded
        return self._splits[(task_dir, name)]

    def pixels(self, processor, name: str, task_dir: Path | None = None) -> torch.Tensor:
        task_dir = task_dir or self.config.data_dir
        key = (id(processor), task_dir, name)
        if key not in self._pixels:
            self._pixels[key] = (processor, pixels_of(self.split(name, task_dir), processor, f"{task_dir}/{name}"))
        return self._pixels[key][1]

    def _predict(self, model: torch.nn.Module, name: str, task_dir: Path | None) -> tuple[list[int], list[int]]:
        split = self.split(name, task_dir)
        labels = to_ids(split.labels, model.config, f"{task_dir or self.config.data_dir}/{name}")
        preds = predict_pixels(model, self.pixels(self.processor(model), name, task_dir),
                               batch_size=self.config.batch_size, report=self.report, what=name)
        return preds, labels

    def calibration(self, model_dir: str | Path, limit: int) -> dict[str, torch.Tensor]:
        """Train pixels as this directory's processor makes them (or as given), float32."""
        split = self.split("train")
        processor = self.load_processor(model_dir) if split.pixel_values is None else None
        pixels = pixels_of(split, processor, f"{self.config.data_dir}/train")[:limit]
        return {"pixel_values": pixels.float().contiguous()}

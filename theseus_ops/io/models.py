"""Local Hugging Face model directories: config, safetensors headers, content hash, loading.

Shapes come from safetensors headers, so validation and planning never load weights. Loading goes
through the transformers class named in ``config.architectures``, from a local directory only.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from theseus_ops.errors import InputError
from theseus_ops.transport.family import FamilySpec, family_for_model_type

WEIGHT_SUFFIXES = (".safetensors",)
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class ModelInfo:
    """What we know about a model directory without loading it."""

    path: Path
    config: dict
    family: FamilySpec
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    files: tuple[Path, ...]

    @property
    def model_type(self) -> str:
        return self.config.get("model_type", "")

    @property
    def num_layers(self) -> int:
        config = self.config
        if self.family.num_layers_key not in config and "vision_config" in config:
            config = config["vision_config"]
        return int(config[self.family.num_layers_key])

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", self.model_type == "gpt2"))

    def sha256(self) -> str:
        return weights_sha256(self.files)


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file; a clear error if the file is not one."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than a safetensors header")
            (size,) = struct.unpack("<Q", raw)
            if size > 100_000_000:
                raise ValueError("header length is implausible")
            header = json.loads(fh.read(size))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        end = 0
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            if not (isinstance(entry, dict) and isinstance(entry.get("shape"), list)
                    and isinstance(entry.get("dtype"), str) and len(entry.get("data_offsets", ())) == 2):
                raise ValueError(f"malformed header entry {name!r}")
            end = max(end, int(entry["data_offsets"][1]))
        if 8 + size + end != path.stat().st_size:
            raise ValueError(f"truncated or padded: header promises {8 + size + end} bytes, "
                             f"file has {path.stat().st_size}")
        return header
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc


def weight_files(directory: Path) -> tuple[Path, ...]:
    """The safetensors shards of a model directory, through the index when there is one."""
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            mapping = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise InputError(f"{index}: corrupt shard index ({exc})") from exc
        files = tuple(sorted({directory / f for f in mapping.values()}))
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise InputError(f"{directory}: shard(s) named in the index are missing: {', '.join(missing)}")
        return files
    files = tuple(sorted(directory.glob("*.safetensors")))
    if not files:
        raise InputError(f"{directory}: no *.safetensors weights (only safetensors model directories are supported)")
    return files


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise InputError(f"{directory}: not a model directory (no config.json)")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: corrupt config.json ({exc})") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise InputError(f"{path}: config.json has no model_type")
    return config


def inspect_model_dir(path: str | Path) -> ModelInfo:
    """Read config and every shard header; nothing is loaded."""
    directory = Path(path)
    if not directory.is_dir():
        raise InputError(f"model directory {directory} does not exist")
    config = read_config(directory)
    family = family_for_model_type(config["model_type"])
    files = weight_files(directory)
    shapes, dtypes = {}, {}
    for file in files:
        for name, entry in read_safetensors_header(file).items():
            if name == "__metadata__":
                continue
            shapes[name] = tuple(entry["shape"])
            dtypes[name] = entry["dtype"]
    info = ModelInfo(directory, config, family, shapes, dtypes, files)
    try:
        if info.num_layers < 1:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{directory}: config.json has no valid {family.num_layers_key} (layer count)") from None
    return info


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@cache
def _cached_file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    return _file_sha256(path)


def weights_sha256(files: tuple[Path, ...]) -> str:
    """Content hash of the weights: sha256 over the files' own sha256 sums, in name order."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.name):
        stat = file.stat()
        digest.update(file.name.encode() + b"\0" + _cached_file_sha256(file, stat.st_size, stat.st_mtime_ns).encode())
    return digest.hexdigest()


def load_state(info: ModelInfo, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors straight from the shards (all, or the named ones), without building a model."""
    from safetensors import safe_open

    wanted = set(names) if names is not None else None
    out = {}
    for file in info.files:
        with safe_open(file, framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                if wanted is None or name in wanted:
                    out[name] = fh.get_tensor(name)
    return out


def load_model(info: ModelInfo, device: torch.device, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Build the model with its own transformers class, from the local directory only."""
    import transformers

    architectures = info.config.get("architectures") or []
    cls = next((getattr(transformers, a) for a in architectures if hasattr(transformers, a)), None)
    if cls is None:
        cls = transformers.AutoModel
    try:
        kwargs = {"local_files_only": True}
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = cls.from_pretrained(str(info.path), **kwargs)
    except Exception as exc:  # transformers raises many types; one line for the user
        raise InputError(f"{info.path}: cannot load model ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    return model.to(device).eval()


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was given but CUDA is not available")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)

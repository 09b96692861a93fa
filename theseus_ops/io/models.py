"""Local Hugging Face model directories: config, safetensors headers, content hash, loading.

Shapes come from safetensors headers, so validation and planning never load weights. Loading goes
through the transformers class named in ``config.architectures``, from a local directory only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from theseus_ops.errors import InputError
from theseus_ops.io.display import shown
from theseus_ops.io.loading_lock import MODEL_BUILDING
from theseus_ops.io.paths import check_regular_file, iter_model_files, open_regular, safe_path
from theseus_ops.io.safetensors_header import read_header
from theseus_ops.transport.architecture import ArchitectureSpec, architecture_for_model_type, config_int

WEIGHT_SUFFIXES = (".safetensors",)
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class ModelInfo:
    """What we know about a model directory without loading it."""

    path: Path
    config: dict
    architecture: ArchitectureSpec
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    files: tuple[Path, ...]

    @property
    def model_type(self) -> str:
        return self.config.get("model_type", "")

    @property
    def num_layers(self) -> int:
        """The main stack's depth (an encoder-decoder's encoder)."""
        value = self.architecture.settings(self.config)[self.architecture.num_layers_key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{self.architecture.num_layers_key} is not an integer")
        return value

    @property
    def depths(self) -> dict[str, int]:
        """Every stack's depth, the main one (``layers``) first: T5's decoder reads num_decoder_layers."""
        return {"layers": self.num_layers, **self.further_depths}

    @property
    def further_depths(self) -> dict[str, int]:
        """The depths of the stacks beside the main one (an encoder-decoder's decoder); empty for most models."""
        return {name: config_int(self.config, stack.num_layers_key, f"{self.path}/config.json ({name} depth)")
                for name, stack in self.architecture.stacks.items() if name != "layers"}

    @property
    def tied_embeddings(self) -> bool:
        """Whether the head shares the embedding: the config's say, else the architecture's default."""
        return bool(self.config.get("tie_word_embeddings", self.architecture.tie_default))

    def sha256(self) -> str:
        return weights_sha256(self.files)


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, validated (dtypes, shapes, offsets); a clear error if not one."""
    header = read_header(path)
    return {name: {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [e.begin, e.end]}
            for name, e in header.tensors.items()}


def read_shard_index(directory: Path) -> dict[str, str] | None:
    """The index's tensor -> shard map (None without an index); each shard must be a name inside ``directory``."""
    index = safe_path(directory, INDEX_NAME)
    if not index.exists():
        return None
    check_regular_file(index, str(directory))
    try:
        body = json.loads(index.read_bytes().decode("utf-8"))
    except RecursionError:
        raise InputError(f"{index}: corrupt shard index (nested too deeply)") from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{index}: corrupt shard index ({_first_line(exc)})") from exc
    mapping = body.get("weight_map") if isinstance(body, dict) else None
    if not isinstance(mapping, dict) or not mapping:
        raise InputError(f"{index}: corrupt shard index ('weight_map' must be a non-empty object of "
                         "tensor name -> shard file)")
    for name in mapping.values():
        if not isinstance(name, str) or not name.endswith(WEIGHT_SUFFIXES):
            raise InputError(f"{index}: corrupt shard index (shard {repr(name)[:80]} is not a .safetensors "
                             "file name)")
    for name in set(mapping.values()):
        safe_path(directory, name, str(index))
    return mapping


def weight_files(directory: Path) -> tuple[Path, ...]:
    """The safetensors shards of a model directory, through the index when there is one."""
    mapping = read_shard_index(directory)
    if mapping is not None:
        names = sorted(set(mapping.values()))
        files = tuple(directory / n for n in names)
        missing = [n for n, f in zip(names, files) if not f.exists()]
        if missing:
            raise InputError(f"{directory}: shard(s) named in the index are missing: {', '.join(missing)}")
        for f in files:
            check_regular_file(f, str(directory))
        return files
    files = tuple(path for rel, path in iter_model_files(directory)
                  if "/" not in rel and rel.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise InputError(f"{directory}: no *.safetensors weights (only safetensors model directories are supported)")
    return files


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def read_config(directory: Path) -> dict:
    path = safe_path(directory, "config.json")
    if not path.exists():
        raise InputError(f"{directory}: not a model directory (no config.json)")
    check_regular_file(path, str(directory))
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except RecursionError:
        raise InputError(f"{path}: corrupt config.json (nested too deeply)") from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: corrupt config.json ({_first_line(exc)})") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise InputError(f"{path}: config.json has no model_type")
    if not isinstance(config["model_type"], str):
        raise InputError(f"{path}: config.json model_type must be a string")
    return config


def inspect_model_dir(path: str | Path) -> ModelInfo:
    """Read config and every shard header; nothing is loaded."""
    directory = Path(path)
    if not directory.is_dir():
        raise InputError(f"model directory {directory} does not exist")
    iter_model_files(directory)  # refuses symlinks and special files anywhere in the directory
    config = read_config(directory)
    architecture = architecture_for_model_type(config["model_type"])
    files = weight_files(directory)
    shapes, dtypes, where = {}, {}, {}
    for file in files:
        for name, entry in read_safetensors_header(file).items():
            if name in where:
                raise InputError(f"{directory}: tensor {shown(name)} is in two shards, {where[name]} and {file.name}")
            shapes[name] = tuple(entry["shape"])
            dtypes[name] = entry["dtype"]
            where[name] = file.name
    index = read_shard_index(directory) if (directory / INDEX_NAME).is_file() else None
    for name, shard in (index or {}).items():
        if where.get(name) != shard:
            raise InputError(f"{directory / INDEX_NAME}: tensor {shown(name)} is not in its shard {shown(shard)}")
    info = ModelInfo(directory, config, architecture, shapes, dtypes, files)
    try:
        if info.num_layers < 1:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{directory}: config.json has no valid {architecture.num_layers_key} (layer count)") from None
    info.depths  # noqa: B018 - a further stack's depth is checked here too, before any work
    return info


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path, str(path.parent)) as fh:
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
        stat = os.lstat(check_regular_file(file, str(file.parent)))
        digest.update(file.name.encode() + b"\0" + _cached_file_sha256(file, stat.st_size, stat.st_mtime_ns).encode())
    return digest.hexdigest()


class ShardTensors(Mapping[str, torch.Tensor]):
    """The named tensors of a model's shards, each read when asked for and not kept.

    Why: the weight completion reads every base weight of both models once per round. Held as a dict,
    they are a float32 copy of both models beside the loaded ones (a gigabyte on a 135M-parameter pair,
    tens on an 8B one); read on access, memory holds the one being used. Names and shapes come from
    the headers, so membership costs nothing.
    """

    def __init__(self, info: ModelInfo, names: Iterable[str]) -> None:
        wanted = set(names)
        self._file_of: dict[str, Path] = {}
        for file in info.files:  # a name in two shards is read from the later one, as ``load_state`` reads it
            for name in read_safetensors_header(file):
                if name in wanted:
                    self._file_of[name] = file

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        file = self._file_of[name]
        with safe_open(str(file), framework="pt") as fh:
            return fh.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._file_of))

    def __len__(self) -> int:
        return len(self._file_of)

    def __contains__(self, name: object) -> bool:
        return name in self._file_of


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
        with MODEL_BUILDING:
            model = cls.from_pretrained(str(info.path), **kwargs)
    except Exception as exc:  # transformers raises many types; one line for the user
        raise InputError(f"{info.path}: cannot load model ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    return model.to(device).eval()


def check_tokenizer_fits(tokenizer, config: dict, where: str | Path) -> None:
    """A tokenizer must not produce ids past the model's embedding (``vocab_size``).

    A larger tokenizer (added tokens without resized embeddings, or another model's tokenizer)
    would otherwise fail with an IndexError deep inside the forward pass, on the first rare token.
    """
    vocab = config.get("vocab_size")
    if not isinstance(vocab, int) and isinstance(config.get("text_config"), dict):
        vocab = config["text_config"].get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        return
    size = len(tokenizer)
    if size > vocab:
        raise InputError(f"{where}: the tokenizer has {size} tokens but the model's vocab_size is {vocab}; "
                         "its ids would index past the embedding (a tokenizer of another model?)")


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was given but CUDA is not available")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)

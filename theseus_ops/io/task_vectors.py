"""Task vectors on disk, in three forms: a safetensors delta file, a PEFT LoRA adapter directory,
or a fine-tuned model directory (whose delta against the source base is computed).

Every form is validated against the source base before any work: keys must exist, shapes must
match, and values must be finite. Output keeps the input's form.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from theseus_ops.errors import InputError
from theseus_ops.io.atomic import atomic_path
from theseus_ops.io.display import shown
from theseus_ops.io.lora_config import LoraAdapterConfig
from theseus_ops.io.models import ModelInfo, inspect_model_dir, load_state
from theseus_ops.io.paths import check_regular_file, safe_path
from theseus_ops.io.safetensors_header import read_header
from theseus_ops.transport.architecture import ArchitectureSpec
from theseus_ops.transport.task_vector import LoraFactors, TaskVector

FORMAT_VERSION = "1"
META_FORMAT = "theseus.format_version"
META_VECTOR_FORMAT = "theseus.kind"  # the file's vector format: FULL_DELTA or LORA_FORMAT (wire values, kept)
FULL_DELTA = "full_delta"
LORA_FORMAT = "lora"
META_BASE_SHA = "theseus.base_sha256"
META_BASE_TYPE = "theseus.base_model_type"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_BASE_LAYER_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.base_layer\.weight$")
_PEFT_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                       r"(?:\.weight)?$")


def _load_safetensors(path: Path, follow_symlink: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    read_header(path, follow_symlink=follow_symlink)
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
    return tensors, metadata


def read_delta_file(path: Path) -> TaskVector:
    tensors, metadata = _load_safetensors(path)
    if not tensors:
        raise InputError(f"{path}: the task vector holds no tensors")
    vector_format = metadata.get(META_VECTOR_FORMAT, FULL_DELTA)
    if vector_format != FULL_DELTA:
        raise InputError(f"{path}: task-vector format {vector_format!r} is not supported (expected {FULL_DELTA})")
    return TaskVector("full", deltas=tensors, metadata=metadata)


def read_lora_adapter(directory: Path) -> TaskVector:
    """A PEFT LoRA adapter directory as factors keyed by the adapted weight's parameter name."""
    config_path = check_regular_file(safe_path(directory, ADAPTER_CONFIG), str(directory))
    try:
        config = json.loads(config_path.read_bytes().decode("utf-8"))
    except RecursionError:
        raise InputError(f"{config_path}: corrupt adapter config (nested too deeply)") from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{config_path}: corrupt adapter config ({str(exc).splitlines()[0][:200]})") from exc
    lora_config = LoraAdapterConfig(config, str(config_path))
    weights = safe_path(directory, ADAPTER_WEIGHTS)
    if not weights.exists():
        raise InputError(f"{directory}: no {ADAPTER_WEIGHTS} (only safetensors adapters are supported)")
    tensors, metadata = _load_safetensors(check_regular_file(weights, str(directory)), follow_symlink=False)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    copies = {}
    for key, value in tensors.items():
        copy = _BASE_LAYER_KEY.match(key)
        if copy:
            copies[f"{copy.group('module')}.weight"] = value
            continue
        found = _PEFT_KEY.match(key)
        if not found:
            raise InputError(f"{weights}: entry {key!r} is not a LoRA factor (modules_to_save and biases "
                             "are not supported)")
        parts.setdefault(found.group("module"), {})[found.group("part")] = value
    factors = {}
    for module, p in parts.items():
        embedding = "lora_embedding_A" in p
        a = p.get("lora_embedding_A" if embedding else "lora_A")
        b = p.get("lora_embedding_B" if embedding else "lora_B")
        if a is None or b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise InputError(f"{weights}: module {shown(module)} lacks a matching pair of 2-D LoRA factors")
        if not (a.is_floating_point() and b.is_floating_point()):
            raise InputError(f"{weights}: module {shown(module)} has non-floating-point LoRA factors")
        rank = a.shape[0]
        if rank != lora_config.rank_of(module):
            raise InputError(f"{weights}: module {shown(module)} has rank {rank} but {ADAPTER_CONFIG} says "
                             f"{lora_config.rank_of(module)} (r / rank_pattern)")
        factors[f"{module}.weight"] = LoraFactors(a, b, lora_config.scaling(module, rank), embedding)
    if not factors:
        raise InputError(f"{weights}: the adapter holds no LoRA factors")
    config.pop("save_embedding_layers", None)
    return TaskVector("lora", lora=factors, adapter_config=config, metadata=metadata, base_layer_copies=copies)


def delta_from_tuned(tuned_dir: Path, source: ModelInfo) -> TaskVector:
    """tuned − base for every tensor that changed; shapes and names must match the base."""
    tuned = inspect_model_dir(tuned_dir)
    if tuned.architecture.name != source.architecture.name:
        raise InputError(f"{tuned_dir} is a {tuned.architecture.name} model but the source base is "
                         f"{source.architecture.name}")
    unknown = sorted(set(tuned.shapes) - set(source.shapes))
    if unknown:
        raise InputError(f"{tuned_dir}: parameter {shown(unknown[0])} does not exist in the source base "
                         f"({len(unknown)} such)")
    for name, shape in tuned.shapes.items():
        if source.shapes[name] != shape:
            raise InputError(f"{tuned_dir}: {shown(name)} has shape {list(shape)} but the source base has "
                             f"{list(source.shapes[name])}")
    tuned_state, base_state = load_state(tuned), load_state(source)
    deltas = {}
    for name, value in tuned_state.items():
        delta = value.float() - base_state[name].float()
        if bool(delta.any()):
            deltas[name] = delta.to(value.dtype) if value.is_floating_point() else delta
    if not deltas:
        raise InputError(f"{tuned_dir}: identical to the source base; the task vector would be empty")
    return TaskVector("full", deltas=deltas, metadata={META_VECTOR_FORMAT: FULL_DELTA})


def read_task_vector(path: str | Path, source: ModelInfo | None = None, tuned: bool = False) -> TaskVector:
    """Read any task-vector form; ``tuned`` marks a fine-tuned model directory (needs ``source``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"task vector {path} does not exist")
    if tuned or (path.is_dir() and (path / "config.json").is_file() and not (path / ADAPTER_CONFIG).is_file()):
        if source is None:
            raise InputError(f"{path} is a fine-tuned model directory; the source base is needed to compute its delta")
        return delta_from_tuned(path, source)
    if path.is_dir():
        if not (path / ADAPTER_CONFIG).is_file():
            raise InputError(f"{path}: neither a PEFT adapter ({ADAPTER_CONFIG}) nor a model directory (config.json)")
        return read_lora_adapter(path)
    return read_delta_file(path)


def validate_against_base(tv: TaskVector, source: ModelInfo, where: str) -> None:
    """Keys must exist in the source base with matching shapes; values must be finite."""
    base_sha = tv.metadata.get(META_BASE_SHA)
    if base_sha and base_sha != source.sha256():
        raise InputError(f"{where} was made on base {base_sha[:12]} but the source base {source.path} "
                         f"is {source.sha256()[:12]}")
    if tv.base_layer_copies:
        base = load_state(source, list(tv.base_layer_copies))
        for name, value in tv.base_layer_copies.items():
            if name not in base or not torch.equal(base[name], value.to(base[name].dtype)):
                raise InputError(f"{where}: the adapter carries a modified copy of {shown(name)} "
                                 "(resized vocabulary?); only adapters on the unchanged source base can be transported")
    for name in tv.names():
        if name not in source.shapes:
            raise InputError(f"{where}: parameter {shown(name)} does not exist in the source base")
        shape = source.shapes[name]
        if tv.vector_format == "full":
            tensors = {"delta": tv.deltas[name]}
            got = tuple(tv.deltas[name].shape)
            ok = got == shape
            base_float = source.dtypes.get(name, "F32").startswith(("F", "BF"))
            delta = tv.deltas[name]
            if delta.dtype == torch.bool or delta.is_floating_point() != base_float:
                raise InputError(f"{where}: {shown(name)} is a {str(delta.dtype).removeprefix('torch.')} delta but the "
                                 f"source base stores it as {source.dtypes.get(name)}; a delta must be floating "
                                 "point exactly when its weight is")
        else:
            f = tv.lora[name]
            tensors = {"lora_A": f.a, "lora_B": f.b}
            got = (f.b.shape[0], f.a.shape[1])
            ok = got in (shape, tuple(reversed(shape)))
        if not ok:
            raise InputError(f"{where}: {shown(name)} has shape {list(got)} but the source base has {list(shape)}")
        for part, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise InputError(f"{where}: {shown(name)} ({part}) contains NaN or Inf")


def write_task_vector(
    tv: TaskVector, dest: str | Path, metadata: dict[str, str], target_dir: str | None = None
) -> None:
    """Write atomically: a delta file for a full vector, a PEFT adapter directory for LoRA."""
    dest = Path(dest)
    meta = {META_FORMAT: FORMAT_VERSION, **{k: str(v) for k, v in metadata.items()}}
    if tv.vector_format == "full":
        meta[META_VECTOR_FORMAT] = FULL_DELTA
        tensors = {k: v.contiguous() for k, v in tv.deltas.items()}
        with atomic_path(dest) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return
    meta[META_VECTOR_FORMAT] = LORA_FORMAT
    tensors = {}
    for name, f in tv.lora.items():
        module = name.removesuffix(".weight")
        a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if f.embedding else ("lora_A.weight", "lora_B.weight")
        tensors[f"base_model.model.{module}.{a_key}"] = f.a.contiguous()
        tensors[f"base_model.model.{module}.{b_key}"] = f.b.contiguous()
    config = dict(tv.adapter_config or {})
    if target_dir is not None:
        config["base_model_name_or_path"] = str(target_dir)
    with atomic_path(dest, directory=True) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata=meta)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))


def dense_deltas(path: str | Path, target_dir: str | Path) -> dict[str, torch.Tensor]:
    """A task vector (full or LoRA) as float32 dense deltas in the target's storage layout.

    For evaluation, which adds α·δ to a loaded model's state dict; transport itself never densifies.
    """
    return dense_deltas_of(read_task_vector(path), inspect_model_dir(target_dir).architecture)


def dense_deltas_of(tv: TaskVector, architecture: ArchitectureSpec) -> dict[str, torch.Tensor]:
    """:func:`dense_deltas` of a vector in memory, for a target of ``architecture``."""
    from theseus_ops.transport.engine import storage_delta

    return {name: storage_delta(architecture, name, tv).float() for name in tv.names()}

"""The Python API, mirrored one to one by the ``theseus-ops`` CLI.

    from theseus_ops.api import prepare, transport, apply_task_vector
    from theseus_ops.config import PrepareConfig, TransportConfig, CalibrationSpec

    prepare(PrepareConfig("v1", "v2", CalibrationSpec("calib.safetensors")), "v1-v2.alignment")
    transport(TransportConfig("v1", "v2", "theseus", task_vector="tv.safetensors",
                              alignment="v1-v2.alignment"), out="tv-v2.safetensors")
    apply_task_vector("v2", "tv-v2.safetensors", alpha=1.0, out="v2-tuned")

Each function is a file adapter: it checks its outputs before any work, reads its inputs, hands
them to :mod:`theseus_ops.pipeline` (where the work happens in memory) and publishes the results
atomically. Callers that already hold the objects call the pipeline directly.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

from theseus_ops import __version__
from theseus_ops.config import PrepareConfig, TransportConfig, check_alpha
from theseus_ops.errors import InputError
from theseus_ops.io.alignment import Alignment
from theseus_ops.io.atomic import atomic_outputs, atomic_path, check_output, overwriting
from theseus_ops.io.finite import require_finite
from theseus_ops.io.models import ModelInfo, inspect_model_dir
from theseus_ops.io.task_vectors import (
    ADAPTER_CONFIG,
    META_BASE_SHA,
    META_BASE_TYPE,
    read_task_vector,
    validate_against_base,
    write_task_vector,
)
from theseus_ops.pipeline import (
    LOST_SHARE_WARNING,
    ModelPair,
    Report,
    TransportRefused,
    check_alignment_result,
    check_token_range,
    compute_alignment,
    load_calibrations,
    lost_share_summary,
    open_pair,
    require_finite_result,
    transport_in_memory,
)
from theseus_ops.pipeline import build_report as _build_report
from theseus_ops.transport.architecture import ARCHITECTURE_KEY
from theseus_ops.transport.engine import ParamRecord, storage_delta
from theseus_ops.transport.task_vector import TaskVector

__all__ = [
    "LOST_SHARE_WARNING", "ModelPair", "apply_task_vector", "build_report", "check_alignment_result",
    "check_token_range", "compute_alignment", "inspect_path", "load_calibrations", "lost_share_summary", "merge_into",
    "open_pair", "prepare", "publish_transport", "transport",
]

log = logging.getLogger("theseus_ops")


def _progress(message: str) -> None:
    log.info(message)


def prepare(cfg: PrepareConfig, out: str | Path, overwrite: bool = False) -> Alignment:
    """Estimate every space's map once for a (source, target, calibration, options) and save it.

    ``out`` is checked before any work; an existing file is replaced only if theseus-ops wrote it,
    or with ``overwrite``.
    """
    check_output(out, overwrite=overwrite, what="--out")
    pair = open_pair(cfg.source_base, cfg.target_base, cfg.layer_map)
    alignment = compute_alignment(cfg, pair, scratch=Path(out).resolve().parent if cfg.stream else None)
    check_alignment_result(alignment, pair)
    with overwriting([out] if overwrite else []):
        alignment.save(out)
    _progress(f"wrote alignment with {len(alignment.maps)} spaces to {out}")
    return alignment


def build_report(cfg: TransportConfig, pair: ModelPair, tv_path: str, tv: TaskVector, records: list[ParamRecord],
                 quality: dict[str, dict], extra: dict) -> dict:
    """The report JSON of one transport (:func:`theseus_ops.pipeline.build_report`, as a dict)."""
    return _build_report(cfg, pair, tv_path, tv, records, quality, extra).as_dict()


def _load_task_vector(cfg: TransportConfig, pair: ModelPair) -> tuple[TaskVector, str]:
    where = cfg.task_vector or cfg.source_tuned
    tv = read_task_vector(where, pair.source, tuned=bool(cfg.source_tuned))
    validate_against_base(tv, pair.source, f"task vector {where}")
    return tv, str(where)


def _output_is_directory(cfg: TransportConfig) -> bool:
    """Transport keeps the input's form: a LoRA adapter directory gives a directory, all else a file."""
    if cfg.source_tuned or not cfg.task_vector:
        return False
    path = Path(cfg.task_vector)
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file()


def _check_transport_outputs(cfg: TransportConfig, out: str | Path, report_path: str | Path | None,
                             overwrite: bool) -> None:
    check_output(out, directory=_output_is_directory(cfg), overwrite=overwrite, what="--out")
    if report_path is not None:
        if Path(report_path).absolute() == Path(out).absolute():
            raise InputError(f"--report {report_path} is the same path as --out")
        check_output(report_path, overwrite=overwrite, what="--report")


def _write_refusal_report(refusal: TransportRefused, report_path: str | Path | None, out: str | Path,
                          overwrite: bool) -> None:
    """A refused run publishes its report alone, so the error can point at it."""
    with overwriting([out, report_path] if overwrite else []):
        if report_path:
            with atomic_path(report_path) as tmp:
                tmp.write_text(refusal.report.to_json())


def transport(cfg: TransportConfig, out: str | Path, report_path: str | Path | None = None,
              overwrite: bool = False) -> dict:
    """Port one task vector to the target base; strict unless ``allow_partial``. Returns the report.

    Both outputs are checked before any work. The report is written with the result, or alone when
    the run stops on parameters it cannot transport (the error points at it); on any other failure
    neither is written. The method's capabilities are checked before any statistics or maps. The
    work itself is :func:`theseus_ops.pipeline.transport_in_memory`; this adds the files.
    """
    _check_transport_outputs(cfg, out, report_path, overwrite)
    pair = open_pair(cfg.source_base, cfg.target_base, cfg.layer_map)
    tv, tv_path = _load_task_vector(cfg, pair)
    try:
        result, report = transport_in_memory(cfg, pair, tv, tv_label=tv_path)
    except TransportRefused as refusal:
        _write_refusal_report(refusal, report_path, out, overwrite)
        raise
    publish_transport(result, report, pair, cfg.method, out, report_path, overwrite)
    return report.as_dict()


def publish_transport(result: TaskVector, report: Report, pair: ModelPair, method: str, out: str | Path,
                      report_path: str | Path | None = None, overwrite: bool = False) -> None:
    """Write a transported vector (and its report) for the target: together, atomically, or neither.

    The vector carries the target's hash and what it was transported from, so ``apply`` and the
    catalog can check it belongs to the target. A NaN or Inf in it is never published.
    """
    left = len(report.left_out)
    with overwriting([out, report_path] if overwrite else []):
        require_finite_result(result, f"transport to {out}")
        metadata = {
            META_BASE_SHA: pair.target.sha256(),
            META_BASE_TYPE: pair.target.model_type,
            "theseus.method": method,
            "theseus.transported_from_base": pair.source.sha256(),
            "theseus.left_out": str(left),
            "theseus.written_by": f"theseus-ops {__version__}",
        }
        outputs = [(out, result.vector_format == "lora")] + ([(report_path, False)] if report_path else [])
        with atomic_outputs(*outputs) as paths:
            write_task_vector(result, paths[0], metadata, target_dir=str(pair.target.path))
            if report_path:
                paths[1].write_text(report.to_json())
    total = len(report.records)
    _progress(f"wrote {result.vector_format} task vector with {len(result.names())} tensors to {out} "
              f"({total - left}/{total} transported)")


def apply_task_vector(base: str | Path, task_vector: str | Path, alpha: float, out: str | Path,
                      overwrite: bool = False) -> Path:
    """θ_B + α·τ_B as a model directory that loads with ``from_pretrained``.

    Works on the base's safetensors shards directly, so tensor names, dtypes and sharding stay
    exactly as the base has them; every other file (config, shard index, tokenizer, processor)
    is copied along. ``out`` is checked first: an existing non-empty directory is replaced (whole,
    after the new one is complete) only if theseus-ops wrote it, or with ``overwrite``. A merged
    tensor with NaN or Inf (a huge α, a huge LoRA scaling) stops the run before anything is written.
    """
    alpha = check_alpha(alpha)
    out = Path(out)
    check_output(out, directory=True, overwrite=overwrite, what="--out")
    info = inspect_model_dir(base)
    tv = read_task_vector(task_vector)
    validate_against_base(tv, info, f"task vector {task_vector}")
    return merge_into(info, tv, alpha, out, overwrite, label=str(task_vector))


def merge_into(info: ModelInfo, tv: TaskVector, alpha: float, out: str | Path, overwrite: bool = False,
               label: str = "task vector") -> Path:
    """Write θ + α·τ for a base read from its headers and a vector already in memory (checked against it).

    The workflow merges the vector it selected without writing and re-reading it; ``apply`` reads it first.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    alpha = check_alpha(alpha)
    out = Path(out)
    check_output(out, directory=True, overwrite=overwrite, what="--out")
    base = info.path
    pending = set(tv.names())
    what = f"{base} + {alpha} x {label}"
    with overwriting([out] if overwrite else []), atomic_path(out, directory=True) as tmp:
        for shard in info.files:
            with safe_open(str(shard), framework="pt") as fh:
                metadata = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
            for name in pending & set(tensors):
                value = tensors[name]
                delta = storage_delta(info.architecture, name, tv)
                merged = (value.double() + alpha * delta.double()).to(value.dtype)
                require_finite({name: merged}, what)
                tensors[name] = merged
                pending.discard(name)
            save_file(tensors, str(tmp / shard.name), metadata={**metadata, "format": metadata.get("format", "pt")})
        for item in Path(base).iterdir():
            if item.is_file() and not item.name.endswith(".safetensors"):
                shutil.copy2(item, tmp / item.name)
        if pending:
            raise InputError(f"task vector entries not found in any shard of {base}: {sorted(pending)[:3]}")
    _progress(f"wrote {out} = {base} + {alpha} x {label}")
    return out


def inspect_path(path: str | Path) -> dict:
    """Summarise a model directory, a task vector (file, adapter) or an alignment file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_dir() and (path / "config.json").is_file() and not (path / ADAPTER_CONFIG).is_file():
        info = inspect_model_dir(path)
        summary = {"kind": "model", "path": str(path), "model_type": info.model_type,
                   ARCHITECTURE_KEY: info.architecture.name,
                   "layers": info.num_layers}
        further = info.further_depths
        if further:  # an encoder-decoder: the decoder's depth beside the encoder's
            summary["stack_layers"] = further
        return {**summary, "parameters": sum(math.prod(s) for s in info.shapes.values()),
                "tensors": len(info.shapes), "dtypes": sorted(set(info.dtypes.values())), "sha256": info.sha256()}
    if path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
        except Exception as exc:
            raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
        if "theseus.alignment" in meta:
            alignment = Alignment.load(path)
            q = alignment.quality
            return {"kind": "alignment", "path": str(path), "provenance": alignment.provenance,
                    "spaces": len(alignment.maps),
                    "worst_residual": max((v["residual"] for v in q.values()), default=None),
                    "underdetermined": sorted(k for k, v in q.items() if v["underdetermined"]),
                    "quality": q}
    tv = read_task_vector(path)
    return {"kind": f"task_vector/{tv.vector_format}", "path": str(path), "tensors": len(tv.names()),
            "metadata": tv.metadata,
            "norms": {n: round(tv.norm(n), 6) for n in tv.names()},
            **({"rank": sorted({f.rank for f in tv.lora.values()})} if tv.vector_format == "lora" else {})}


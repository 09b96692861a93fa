"""The Python API, mirrored one to one by the ``theseus-ops`` CLI.

    from theseus_ops.api import prepare, transport, apply_task_vector
    from theseus_ops.config import PrepareConfig, TransportConfig, CalibrationSpec

    prepare(PrepareConfig("v1", "v2", CalibrationSpec("calib.safetensors")), "v1-v2.alignment")
    transport(TransportConfig("v1", "v2", "theseus", task_vector="tv.safetensors",
                              alignment="v1-v2.alignment"), out="tv-v2.safetensors")
    apply_task_vector("v2", "tv-v2.safetensors", alpha=1.0, out="v2-tuned")
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from theseus_ops import __version__
from theseus_ops.config import CalibrationSpec, PrepareConfig, TransportConfig, check_alpha
from theseus_ops.errors import InputError, PartialTransportError
from theseus_ops.io.alignment import Alignment
from theseus_ops.io.atomic import atomic_outputs, atomic_path, check_output, overwriting
from theseus_ops.io.calibration import Calibration, check_paired, check_vocabulary, load_calibration
from theseus_ops.io.finite import require_finite, require_finite_number, task_vector_tensors
from theseus_ops.io.models import ModelInfo, inspect_model_dir, load_model, resolve_device
from theseus_ops.io.task_vectors import (
    ADAPTER_CONFIG,
    META_BASE_SHA,
    META_BASE_TYPE,
    read_task_vector,
    validate_against_base,
    write_task_vector,
)
from theseus_ops.transport.engine import (
    ParamPlan,
    ParamRecord,
    all_space_keys,
    detect_prefix,
    execute_plan,
    plan_transport,
    space_requests,
    space_widths,
    storage_delta,
)
from theseus_ops.transport.family import FamilySpec, config_value, same_family
from theseus_ops.transport.layer_map import LayerMap, build_stacked_layer_map
from theseus_ops.transport.methods import MethodInfo, get_method
from theseus_ops.transport.methods.base import CalibrationInputs, LoadedModels, MethodOutput
from theseus_ops.transport.methods.checks import check_labels, check_lora, check_same_shapes
from theseus_ops.transport.probes import ProbeConfig, probe_inputs
from theseus_ops.transport.task_vector import TaskVector

log = logging.getLogger("theseus_ops")


def _progress(message: str) -> None:
    log.info(message)


@dataclass(frozen=True)
class ModelPair:
    """Two base models of one family, read from their headers, and how their layers pair."""

    source: ModelInfo
    target: ModelInfo
    family: FamilySpec
    layer_map: LayerMap
    source_prefix: str
    target_prefix: str

    def decoder_start(self) -> int | None:
        """An encoder-decoder's decoder start token, which both models must share; None for other models."""
        ref = self.family.decoder_start
        if ref is None:
            return None
        tokens = [config_value(info.config, ref, f"{info.path}/config.json (decoder start token)")
                  for info in (self.source, self.target)]
        for token in tokens:
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise InputError(f"decoder start token {token!r} is not a token id")
        if tokens[0] != tokens[1]:
            raise InputError(f"the models' decoders start with different tokens ({tokens[0]} vs {tokens[1]}); "
                             "one calibration set cannot feed both")
        return tokens[0]


def open_pair(source_base: str, target_base: str, layer_map: str) -> ModelPair:
    source, target = inspect_model_dir(source_base), inspect_model_dir(target_base)
    family = same_family(source.model_type, target.model_type)
    family.check_config(source.config, f"{source.path}/config.json")
    family.check_config(target.config, f"{target.path}/config.json")
    lm = build_stacked_layer_map(layer_map, source.depths, target.depths)
    if lm.unmapped_targets:
        log.warning("target layers without a source layer (they receive no update): %s", lm.unmapped_targets)
    return ModelPair(source, target, family, lm, detect_prefix(family, list(source.shapes)),
                     detect_prefix(family, list(target.shapes)))


def _model_summary(info: ModelInfo) -> dict:
    summary = {"path": str(info.path), "sha256": info.sha256(), "model_type": info.model_type,
               "layers": info.num_layers}
    further = {name: depth for name, depth in info.depths.items() if name != "layers"}
    return {**summary, "stack_layers": further} if further else summary


def load_calibrations(spec: CalibrationSpec, input_kind: str, max_rows: int | None,
                      decoder_start: int | None = None) -> tuple[Calibration, Calibration]:
    if spec.both:
        source = target = load_calibration(spec.both, input_kind, decoder_start)
    else:
        source = load_calibration(spec.source, input_kind, decoder_start)
        target = load_calibration(spec.target, input_kind, decoder_start)
        check_paired(source, target)
    if max_rows is not None and max_rows < source.rows:
        source, target = source.head(max_rows), target.head(max_rows)
    if source.rows < 2:
        raise InputError(f"calibration has {source.rows} row(s); at least 2 examples are needed")
    return source, target


def check_token_range(calibration: Calibration, info: ModelInfo, side: str) -> None:
    """Token ids and labels must index the model's vocabulary; otherwise the forward pass or the loss
    would crash midway."""
    check_vocabulary(calibration, info.config.get("vocab_size"), str(info.path), side)


def _existing_modules(model: torch.nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules()}


class _EstimateRun:
    """The :class:`~theseus_ops.transport.methods.base.EstimateContext` of one ``prepare``: inputs on demand."""

    def __init__(self, cfg: PrepareConfig, pair: ModelPair, keys: set[str] | None) -> None:
        self.cfg, self.pair, self.keys = cfg, pair, keys
        self.options = cfg.map_options
        self.layout = pair.family.token_layout
        self.batch_size = cfg.batch_size
        self.probe_seed = cfg.probe_seed
        self.device = resolve_device(cfg.device)
        self.progress = _progress
        self.skipped: list[str] = []
        self._models: LoadedModels | None = None

    def calibration(self) -> CalibrationInputs:
        pair = self.pair
        source_cal, target_cal = load_calibrations(self.cfg.calibration, pair.family.input_kind, self.cfg.max_rows,
                                                   pair.decoder_start())
        check_token_range(source_cal, pair.source, "source")
        check_token_range(target_cal, pair.target, "target")
        return CalibrationInputs(source_cal.inputs(), target_cal.inputs(),
                                 {"source_fingerprint": source_cal.fingerprint,
                                  "target_fingerprint": target_cal.fingerprint, "rows": source_cal.rows})

    def models(self) -> LoadedModels:
        if self._models is not None:
            return self._models
        pair = self.pair
        _progress(f"loading models {pair.source.path} and {pair.target.path} on {self.device}")
        source_model = load_model(pair.source, self.device)
        target_model = load_model(pair.target, self.device)
        wanted = self.keys if self.keys is not None else all_space_keys(pair.family, pair.layer_map)
        requests = space_requests(pair.family, wanted, pair.layer_map, pair.source_prefix, pair.target_prefix,
                                  pair.source.config, pair.target.config)
        present_a, present_b = _existing_modules(source_model), _existing_modules(target_model)
        self.skipped = [r.key for r in requests
                        if r.source.module_in(present_a) is None or r.target.module_in(present_b) is None]
        if self.skipped and self.keys is not None:
            raise InputError(f"space(s) {', '.join(self.skipped)} are needed but a model lacks their module")
        self._models = LoadedModels(source_model, target_model, [r for r in requests if r.key not in self.skipped])
        return self._models

    def probes(self, min_examples: int = 8) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        pair = self.pair
        # The widest space is the widest trailing dimension of any weight (e.g. an MLP's hidden width).
        max_width = max(int(s[-1]) for info in (pair.source, pair.target) for s in info.shapes.values())
        return probe_inputs(pair.family.settings(pair.source.config), pair.family.settings(pair.target.config),
                            pair.family.input_kind, max_width,
                            ProbeConfig(seed=self.probe_seed, min_examples=max(8, min_examples)), pair.decoder_start())


def compute_alignment(cfg: PrepareConfig, pair: ModelPair, keys: set[str] | None = None) -> Alignment:
    """Maps for the given target-space keys (all of the family's when None), with provenance."""
    started = time.perf_counter()
    run = _EstimateRun(cfg, pair, keys)
    estimate = get_method(cfg.method).impl.estimate(run, cfg.method_config)
    run._models = None  # the models go before the alignment is assembled
    provenance = {
        "theseus_ops_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "family": pair.family.name,
        "source": _model_summary(pair.source),
        "target": _model_summary(pair.target),
        "calibration": estimate.calibration,
        "options": cfg.provenance_options(),
        "layer_map": pair.layer_map.describe(),
        "skipped_spaces": run.skipped,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return Alignment({k: v.cpu() for k, v in estimate.maps.items()},
                     {k: q.as_dict() for k, q in estimate.quality.items()}, provenance)


def check_alignment_result(alignment: Alignment, pair: ModelPair) -> None:
    """An alignment with no spaces, or with a NaN map or quality figure, would silently port nothing."""
    if not alignment.maps:
        archs = pair.target.config.get("architectures")
        raise InputError(f"no space of the {pair.family.name} family could be aligned: the loaded models lack "
                         f"every module it maps (config.json architectures of {pair.target.path}: {archs!r}; "
                         f"of {pair.source.path}: {pair.source.config.get('architectures')!r})")
    require_finite(alignment.maps, "alignment")
    for key, quality in alignment.quality.items():
        bad = [k for k, v in quality.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise InputError(f"alignment: space {key} has a non-finite {bad[0]} ({quality[bad[0]]}); "
                             "the models or the calibration data are degenerate; nothing was written")


def prepare(cfg: PrepareConfig, out: str | Path, overwrite: bool = False) -> Alignment:
    """Estimate every space's map once for a (source, target, calibration, options) and save it.

    ``out`` is checked before any work; an existing file is replaced only if theseus-ops wrote it,
    or with ``overwrite``.
    """
    check_output(out, overwrite=overwrite, what="--out")
    pair = open_pair(cfg.source_base, cfg.target_base, cfg.layer_map)
    alignment = compute_alignment(cfg, pair)
    check_alignment_result(alignment, pair)
    with overwriting([out] if overwrite else []):
        alignment.save(out)
    _progress(f"wrote alignment with {len(alignment.maps)} spaces to {out}")
    return alignment


def _check_alignment(alignment: Alignment, pair: ModelPair, method: str, where: str) -> None:
    prov = alignment.provenance
    if prov["source"]["sha256"] != pair.source.sha256() or prov["target"]["sha256"] != pair.target.sha256():
        raise InputError(f"{where} was prepared for another model pair "
                         f"({prov['source']['path']} -> {prov['target']['path']})")
    if prov["layer_map"].get("sources") != list(pair.layer_map.sources) or (
            prov["layer_map"].get("stacks", {}) != pair.layer_map.describe().get("stacks", {})):
        raise InputError(f"{where} was prepared with layer map {prov['layer_map']['kind']}; pass the same --layer-map")
    if prov["options"]["method"] != method:
        raise InputError(f"{where} holds {prov['options']['method']} maps but --method is {method}")


def _check_map_shapes(maps: dict[str, torch.Tensor], widths: dict[str, tuple[int, int]], where: str) -> None:
    """Each map must be d_A × d_B of its space, or applying it would fail midway (an edited file)."""
    for key, (width_a, width_b) in sorted(widths.items()):
        if key in maps and tuple(maps[key].shape) != (width_a, width_b):
            raise InputError(f"{where}: map {key} is {tuple(maps[key].shape)}, but the models' space is "
                             f"{width_a} x {width_b}")


def _load_task_vector(cfg: TransportConfig, pair: ModelPair) -> tuple[TaskVector, str]:
    where = cfg.task_vector or cfg.source_tuned
    tv = read_task_vector(where, pair.source, tuned=bool(cfg.source_tuned))
    validate_against_base(tv, pair.source, f"task vector {where}")
    return tv, str(where)


def _space_quality_lines(records: list[ParamRecord], quality: dict[str, dict]) -> list[dict]:
    lines = []
    for record in records:
        line = record.as_dict()
        line["space_residuals"] = {k: quality[k]["residual"] for k in record.spaces if k in quality}
        lines.append(line)
    return lines


def build_report(cfg: TransportConfig, pair: ModelPair, tv_path: str, tv: TaskVector, records: list[ParamRecord],
                 quality: dict[str, dict], extra: dict) -> dict:
    method_options = get_method(cfg.method).option_values(cfg.method_config)
    left = [r for r in records if r.status == "left_out"]
    return {
        "theseus_ops_version": __version__,
        "method": cfg.method,
        "source_base": _model_summary(pair.source),
        "target_base": _model_summary(pair.target),
        "task_vector": {"path": tv_path, "kind": tv.kind, "entries": len(records)},
        "layer_map": pair.layer_map.describe(),
        "options": {"center": cfg.center, "whiten_power": cfg.whiten_power, "max_rows": cfg.max_rows,
                    "allow_partial": cfg.allow_partial, **method_options, "alignment": cfg.alignment,
                    "rank_tol": cfg.rank_tol, "fill": cfg.fill, "solver": cfg.solver},
        "parameters": _space_quality_lines(records, quality),
        "spaces": quality,
        **extra,
        "summary": {
            "total": len(records),
            "transported": sum(r.status == "transported" for r in records),
            "left_out": len(left),
            "target_layers_without_source": pair.layer_map.unmapped_targets,
            "underdetermined_spaces": sorted(k for k, q in quality.items() if q.get("underdetermined")),
            **lost_share_summary(records),
        },
    }


# A parameter that loses more than this share of its update's norm is named in the summary and the log.
LOST_SHARE_WARNING = 0.1


def lost_share_summary(records: list[ParamRecord]) -> dict:
    """The largest share of an update the maps dropped, and every parameter above the warning level."""
    shares = {r.name: r.norm_lost_share for r in records if r.norm_lost_share is not None}
    worst = max(shares.values(), default=0.0)
    above = sorted((n for n, v in shares.items() if v > LOST_SHARE_WARNING), key=lambda n: -shares[n])
    if above:
        log.warning("%d of %d parameters lost more than %.0f%% of their update's norm in transport (worst %s: "
                    "%.0f%%), mostly to directions the calibration data left undetermined; see the report's "
                    "norm_lost_share, or calibrate on more varied inputs", len(above), len(shares),
                    100 * LOST_SHARE_WARNING, above[0], 100 * worst)
    return {"max_norm_lost_share": worst, "parameters_losing_over_10pct": above}


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


def _require_finite_result(result: TaskVector, out: str | Path) -> None:
    require_finite(task_vector_tensors(result), f"transport to {out}")
    for name, factors in result.lora.items():
        require_finite_number(factors.scaling, f"transport to {out}: the LoRA scaling of {name}")


def _planned_record(plan: ParamPlan, tv: TaskVector) -> ParamRecord:
    """A report line for a run stopped at planning: why a parameter cannot go, or that it was not run."""
    reason = plan.reason or "not run: the transport stopped before statistics, other parameters cannot go"
    return ParamRecord(plan.source_name, "left_out" if plan.reason else "not_run", plan.rule, [],
                       tv.norm(plan.source_name), None, [], reason)


def _refuse_partial(records: list[ParamRecord], pair: ModelPair, report_text: str, report_path: str | Path | None,
                    out: str | Path, overwrite: bool) -> None:
    """Write the report alone (the error points at it) and raise PartialTransportError."""
    left = [r for r in records if r.status == "left_out"]
    with overwriting([out, report_path] if overwrite else []):
        if report_path:
            with atomic_path(report_path) as tmp:
                tmp.write_text(report_text)
    unused = pair.layer_map.unused_by_stack()
    if unused and any("feeds no target layer" in (r.reason or "") for r in left):
        raise PartialTransportError(
            f"layer map {pair.layer_map.kind} leaves source layer(s) {', '.join(map(str, unused))} unused, so "
            f"{len(left)} of {len(records)} task-vector parameters would be dropped (first: {left[0].name}); "
            "nothing was computed; pass --allow-partial to accept that, or choose another --layer-map")
    raise PartialTransportError(
        f"{len(left)} of {len(records)} task-vector parameters cannot be transported "
        f"(first: {left[0].name}: {left[0].reason}); see --report, or pass --allow-partial")


class _TransportRun:
    """The :class:`~theseus_ops.transport.methods.base.TransportContext` of one ``transport``."""

    def __init__(self, cfg: TransportConfig, info: MethodInfo, pair: ModelPair, tv: TaskVector,
                 plans: list[ParamPlan]) -> None:
        self.cfg, self.info, self.pair = cfg, info, pair
        self.task_vector, self.plans = tv, plans
        self.batch_size = cfg.batch_size
        self.progress = _progress
        self._calibration: tuple[dict[str, torch.Tensor], int] | None = None

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    def space_widths(self) -> dict[str, tuple[int, int]]:
        return space_widths(self.plans, self.pair.source.shapes)

    def target_calibration(self) -> tuple[dict[str, torch.Tensor], int]:
        if self._calibration is None:
            pair = self.pair
            _source, target = load_calibrations(self.cfg.calibration, pair.family.input_kind, self.cfg.max_rows,
                                                pair.decoder_start())
            check_token_range(target, pair.target, "target")
            self._calibration = (target.tensors, target.rows)
        return self._calibration

    def target_model(self, dtype: torch.dtype | None = None) -> torch.nn.Module:
        return load_model(self.pair.target, self.device, dtype=dtype)

    def prepared_maps(self) -> MethodOutput:
        cfg, pair = self.cfg, self.pair
        needed = set().union(*(p.spaces() for p in self.plans)) if self.plans else set()
        if cfg.alignment:
            alignment = Alignment.load(cfg.alignment)
            _check_alignment(alignment, pair, cfg.method, f"alignment {cfg.alignment}")
            _check_map_shapes(alignment.maps, self.space_widths(), f"alignment {cfg.alignment}")
            quality = {k: v for k, v in alignment.quality.items() if k in needed}
        else:
            alignment = compute_alignment(cfg.prepare_config(), pair, needed)
            quality = alignment.quality
        return MethodOutput(maps=alignment.maps, quality=quality,
                            extra={"alignment_provenance": alignment.provenance})


def _check_applicable(info: MethodInfo, pair: ModelPair, plans: list[ParamPlan], run: _TransportRun) -> None:
    """The method's declared capabilities against this pair and input, before any statistics or maps.

    Only these checks raise :class:`NotApplicableError`; the workflow records that as "not applicable".
    """
    check_same_shapes(info, plans, pair.source.shapes, pair.layer_map.kind, pair.source.num_layers,
                      pair.target.num_layers)
    if info.capabilities.needs_labels:
        check_labels(info, run.target_calibration()[0])


def transport(cfg: TransportConfig, out: str | Path, report_path: str | Path | None = None,
              overwrite: bool = False) -> dict:
    """Port one task vector to the target base; strict unless ``allow_partial``. Returns the report.

    Both outputs are checked before any work. The report is written with the result, or alone when
    the run stops on parameters it cannot transport (the error points at it); on any other failure
    neither is written. The method's capabilities are checked before any statistics or maps.
    """
    _check_transport_outputs(cfg, out, report_path, overwrite)
    info = get_method(cfg.method)
    pair = open_pair(cfg.source_base, cfg.target_base, cfg.layer_map)
    tv, tv_path = _load_task_vector(cfg, pair)
    check_lora(info, tv.kind)
    plans = plan_transport(pair.family, tv.names(), pair.target.shapes, pair.layer_map, pair.target_prefix,
                           pair.source.config, pair.target.config)
    run = _TransportRun(cfg, info, pair, tv, plans)
    _check_applicable(info, pair, plans, run)
    if not cfg.allow_partial and any(p.reason for p in plans):
        # Known from the names and the layer map alone: refuse before statistics and maps (minutes).
        records = [_planned_record(p, tv) for p in plans]
        report = build_report(cfg, pair, tv_path, tv, records, {}, {"stopped": "before statistics"})
        _refuse_partial(records, pair, json.dumps(report, indent=2), report_path, out, overwrite)
    output = info.impl.run(run, cfg.method_config)
    quality, extra = output.quality, output.extra
    if output.result is not None:
        result, records = output.result, output.records or []
    else:
        result, records = execute_plan(tv, plans, output.maps or {})
    report = build_report(cfg, pair, tv_path, tv, records, quality, extra)
    report_text = json.dumps(report, indent=2, sort_keys=False)
    left = [r for r in records if r.status == "left_out"]
    if left and not cfg.allow_partial:
        _refuse_partial(records, pair, report_text, report_path, out, overwrite)
    with overwriting([out, report_path] if overwrite else []):
        _require_finite_result(result, out)
        metadata = {
            META_BASE_SHA: pair.target.sha256(),
            META_BASE_TYPE: pair.target.model_type,
            "theseus.method": cfg.method,
            "theseus.transported_from_base": pair.source.sha256(),
            "theseus.left_out": str(len(left)),
            "theseus.written_by": f"theseus-ops {__version__}",
        }
        # the result and its report are published together, or neither is
        outputs = [(out, result.kind == "lora")] + ([(report_path, False)] if report_path else [])
        with atomic_outputs(*outputs) as paths:
            write_task_vector(result, paths[0], metadata, target_dir=str(pair.target.path))
            if report_path:
                paths[1].write_text(report_text)
    _progress(f"wrote {result.kind} task vector with {len(result.names())} tensors to {out} "
              f"({len(records) - len(left)}/{len(records)} transported)")
    return report


def apply_task_vector(base: str | Path, task_vector: str | Path, alpha: float, out: str | Path,
                      overwrite: bool = False) -> Path:
    """θ_B + α·τ_B as a model directory that loads with ``from_pretrained``.

    Works on the base's safetensors shards directly, so tensor names, dtypes and sharding stay
    exactly as the base has them; every other file (config, shard index, tokenizer, processor)
    is copied along. ``out`` is checked first: an existing non-empty directory is replaced (whole,
    after the new one is complete) only if theseus-ops wrote it, or with ``overwrite``. A merged
    tensor with NaN or Inf (a huge α, a huge LoRA scaling) stops the run before anything is written.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    alpha = check_alpha(alpha)
    out = Path(out)
    check_output(out, directory=True, overwrite=overwrite, what="--out")
    info = inspect_model_dir(base)
    tv = read_task_vector(task_vector)
    validate_against_base(tv, info, f"task vector {task_vector}")
    pending = set(tv.names())
    what = f"{base} + {alpha} x {task_vector}"
    with overwriting([out] if overwrite else []), atomic_path(out, directory=True) as tmp:
        for shard in info.files:
            with safe_open(str(shard), framework="pt") as fh:
                metadata = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
            for name in pending & set(tensors):
                value = tensors[name]
                delta = storage_delta(info.family, name, tv)
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
    _progress(f"wrote {out} = {base} + {alpha} x {task_vector}")
    return out


def inspect_path(path: str | Path) -> dict:
    """Summarise a model directory, a task vector (file, adapter) or an alignment file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_dir() and (path / "config.json").is_file() and not (path / ADAPTER_CONFIG).is_file():
        info = inspect_model_dir(path)
        summary = {"kind": "model", "path": str(path), "model_type": info.model_type, "family": info.family.name,
                   "layers": info.num_layers}
        further = {name: depth for name, depth in info.depths.items() if name != "layers"}
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
    return {"kind": f"task_vector/{tv.kind}", "path": str(path), "tensors": len(tv.names()),
            "metadata": tv.metadata,
            "norms": {n: round(tv.norm(n), 6) for n in tv.names()},
            **({"rank": sorted({f.rank for f in tv.lora.values()})} if tv.kind == "lora" else {})}


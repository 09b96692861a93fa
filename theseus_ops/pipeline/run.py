"""Transport one task vector in memory: plan, check the method applies, get maps, execute, report.

:func:`transport_in_memory` is the one entry point; ``api.transport`` wraps it with the file edges
and the benchmark and the workflow call it with objects they already hold. It reads a file only for
what the caller did not hand over in :class:`Loaded` (an alignment, calibration examples, models),
and writes none.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from theseus_ops.config import TransportConfig
from theseus_ops.errors import InputError, PartialTransportError
from theseus_ops.io.alignment import Alignment
from theseus_ops.io.finite import require_finite, require_finite_number, task_vector_tensors
from theseus_ops.io.models import load_model, resolve_device
from theseus_ops.pipeline import estimate
from theseus_ops.pipeline.calibration import check_token_range, load_calibrations, trim_calibrations
from theseus_ops.pipeline.loaded import NOTHING_LOADED, Loaded
from theseus_ops.pipeline.pair import ModelPair
from theseus_ops.pipeline.report import Report, build_report, planned_record
from theseus_ops.transport.engine import ParamPlan, ParamRecord, execute_plan, plan_transport, space_widths
from theseus_ops.transport.layer_map import SCHEME_KEY
from theseus_ops.transport.methods import MethodInfo, get_method
from theseus_ops.transport.methods.base import MethodOutput
from theseus_ops.transport.methods.checks import check_labels, check_lora, check_same_shapes
from theseus_ops.transport.task_vector import TaskVector


class TransportRefused(PartialTransportError):
    """Parameters cannot be transported and ``allow_partial`` is off; ``report`` says which and why.

    ``api.transport`` writes the report alone and lets the error go on, so the message can point at it.
    """

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


def check_alignment(alignment: Alignment, pair: ModelPair, method: str, where: str) -> None:
    """Prepared maps must belong to this pair, layer map and method, or they would port nonsense."""
    prov = alignment.provenance
    if prov["source"]["sha256"] != pair.source.sha256() or prov["target"]["sha256"] != pair.target.sha256():
        raise InputError(f"{where} was prepared for another model pair "
                         f"({prov['source']['path']} -> {prov['target']['path']})")
    if prov["layer_map"].get("sources") != list(pair.layer_map.sources) or (
            prov["layer_map"].get("stacks", {}) != pair.layer_map.describe().get("stacks", {})):
        raise InputError(f"{where} was prepared with layer map {prov['layer_map'][SCHEME_KEY]}; "
                         "pass the same --layer-map")
    if prov["options"]["method"] != method:
        raise InputError(f"{where} holds {prov['options']['method']} maps but --method is {method}")


def check_map_shapes(maps: dict[str, torch.Tensor], widths: dict[str, tuple[int, int]], where: str) -> None:
    """Each map must be d_A × d_B of its space, or applying it would fail midway (an edited file)."""
    for key, (width_a, width_b) in sorted(widths.items()):
        if key in maps and tuple(maps[key].shape) != (width_a, width_b):
            raise InputError(f"{where}: map {key} is {tuple(maps[key].shape)}, but the models' space is "
                             f"{width_a} x {width_b}")


class TransportRun:
    """The :class:`~theseus_ops.transport.methods.base.TransportContext` of one transport."""

    def __init__(self, cfg: TransportConfig, info: MethodInfo, pair: ModelPair, tv: TaskVector,
                 plans: list[ParamPlan], loaded: Loaded = NOTHING_LOADED,
                 progress: Callable[[str], None] = estimate.log_progress) -> None:
        self.cfg, self.info, self.pair, self.loaded = cfg, info, pair, loaded
        self.task_vector, self.plans = tv, plans
        self.batch_size = cfg.batch_size
        self.progress = progress
        self._calibration: tuple[dict[str, torch.Tensor], int] | None = None

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    def space_widths(self) -> dict[str, tuple[int, int]]:
        return space_widths(self.plans, self.pair.source.shapes)

    def target_calibration(self) -> tuple[dict[str, torch.Tensor], int]:
        if self._calibration is None:
            pair = self.pair
            if self.loaded.calibration is not None:
                _source, target = trim_calibrations(*self.loaded.calibration, self.cfg.max_rows)
            else:
                _source, target = load_calibrations(self.cfg.calibration, pair.architecture.input_kind,
                                                    self.cfg.max_rows, pair.decoder_start())
            check_token_range(target, pair.target, "target")
            self._calibration = (target.tensors, target.rows)
        return self._calibration

    def target_model(self, dtype: torch.dtype | None = None) -> torch.nn.Module:
        given = self.loaded.target_model
        if given is not None and (dtype is None or next(given.parameters()).dtype == dtype):
            return given
        return load_model(self.pair.target, self.device, dtype=dtype)

    def prepared_maps(self) -> MethodOutput:
        cfg, pair = self.cfg, self.pair
        needed = set().union(*(p.spaces() for p in self.plans)) if self.plans else set()
        if self.loaded.alignment is not None or cfg.alignment:
            where = f"alignment {cfg.alignment or '(in memory)'}"
            alignment = self.loaded.alignment if self.loaded.alignment is not None else Alignment.load(cfg.alignment)
            check_alignment(alignment, pair, cfg.method, where)
            check_map_shapes(alignment.maps, self.space_widths(), where)
            quality = {k: v for k, v in alignment.quality.items() if k in needed}
        else:
            alignment = estimate.compute_alignment(cfg.prepare_config(), pair, needed, self.loaded,
                                                   progress=self.progress)
            quality = alignment.quality
        return MethodOutput(maps=alignment.maps, quality=quality,
                            extra={"alignment_provenance": alignment.provenance})


def _check_applicable(info: MethodInfo, pair: ModelPair, plans: list[ParamPlan], run: TransportRun) -> None:
    """The method's declared capabilities against this pair and input, before any statistics or maps.

    Only these checks raise :class:`NotApplicableError`; the workflow records that as "not applicable".
    """
    check_same_shapes(info, plans, pair.source.shapes, pair.layer_map.scheme, pair.source.num_layers,
                      pair.target.num_layers)
    if info.capabilities.needs_labels:
        check_labels(info, run.target_calibration()[0])


def _refusal(records: list[ParamRecord], pair: ModelPair, report: Report) -> TransportRefused:
    """The error of a run stopped on parameters it cannot transport, naming the cause and the fix."""
    left = [r for r in records if r.status == "left_out"]
    unused = pair.layer_map.unused_by_stack()
    if unused and any("feeds no target layer" in (r.reason or "") for r in left):
        return TransportRefused(
            f"layer map {pair.layer_map.scheme} leaves source layer(s) {', '.join(map(str, unused))} unused, so "
            f"{len(left)} of {len(records)} task-vector parameters would be dropped (first: {left[0].name}); "
            "nothing was computed; pass --allow-partial to accept that, or choose another --layer-map", report)
    return TransportRefused(
        f"{len(left)} of {len(records)} task-vector parameters cannot be transported "
        f"(first: {left[0].name}: {left[0].reason}); see --report, or pass --allow-partial", report)


def transport_in_memory(cfg: TransportConfig, pair: ModelPair, task_vector: TaskVector,
                        loaded: Loaded = NOTHING_LOADED, *, tv_label: str | None = None,
                        progress: Callable[[str], None] | None = None) -> tuple[TaskVector, Report]:
    """Port ``task_vector`` (already read and checked against ``pair.source``) to ``pair.target``.

    Strict unless ``cfg.allow_partial``: parameters that cannot go raise :class:`TransportRefused`
    carrying the report (before any statistics or maps when the plan alone shows it). The method's
    capabilities are checked first (:class:`NotApplicableError`). ``loaded`` hands over what the
    caller holds; the config's paths name the rest. ``tv_label`` is the report's task-vector path
    (default: the config's); ``progress`` receives the long steps' lines (default: the log).
    Returns the transported vector and its report; writes nothing.

    Example::

        pair = open_pair(cfg.source_base, cfg.target_base, cfg.layer_map)
        result, report = transport_in_memory(cfg, pair, tv, Loaded(alignment=Alignment.load(path)))
    """
    info = get_method(cfg.method)
    label = tv_label if tv_label is not None else str(cfg.task_vector or cfg.source_tuned)
    check_lora(info, task_vector.vector_format)
    plans = plan_transport(pair.architecture, task_vector.names(), pair.target.shapes, pair.layer_map,
                           pair.target_prefix, pair.source.config, pair.target.config)
    run = TransportRun(cfg, info, pair, task_vector, plans, loaded, progress or estimate.log_progress)
    _check_applicable(info, pair, plans, run)
    if not cfg.allow_partial and any(p.reason for p in plans):
        # Known from the names and the layer map alone: refuse before statistics and maps (minutes).
        records = [planned_record(p, task_vector) for p in plans]
        raise _refusal(records, pair, build_report(cfg, pair, label, task_vector, records, {},
                                                   {"stopped": "before statistics"}))
    output = info.impl.run(run, cfg.method_config)
    if output.result is not None:
        result, records = output.result, output.records or []
    else:
        result, records = execute_plan(task_vector, plans, output.maps or {})
    report = build_report(cfg, pair, label, task_vector, records, output.quality, output.extra)
    if report.left_out and not cfg.allow_partial:
        raise _refusal(records, pair, report)
    return result, report


def require_finite_result(result: TaskVector, where: str) -> None:
    """A NaN or Inf in the result (a degenerate map, a huge LoRA scaling) must never be published."""
    require_finite(task_vector_tensors(result), where)
    for name, factors in result.lora.items():
        require_finite_number(factors.scaling, f"{where}: the LoRA scaling of {name}")

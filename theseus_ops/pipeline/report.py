"""The transport report as a typed value; :meth:`Report.as_dict` is the report JSON, key for key.

Building it is separate from writing it, so an in-memory caller gets the same figures the file
holds, and the warning about parameters that lost much of their update is logged once, at build.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from theseus_ops import __version__
from theseus_ops.config import TransportConfig
from theseus_ops.pipeline.pair import ModelPair, model_summary
from theseus_ops.transport.engine import ParamPlan, ParamRecord
from theseus_ops.transport.methods import get_method
from theseus_ops.transport.task_vector import TaskVector

log = logging.getLogger("theseus_ops")

# A parameter that loses more than this share of its update's norm is named in the summary and the log.
LOST_SHARE_WARNING = 0.1


@dataclass(frozen=True)
class Report:
    """What one transport did: the inputs' provenance, the options, one record per entry, per-space quality.

    ``extra``: the method's own sections (``alignment_provenance``, ``gradfix``) and ``stopped`` when
    the run was refused at planning; they sit between ``spaces`` and ``summary`` in the JSON.
    """

    method: str
    source_base: dict[str, Any]
    target_base: dict[str, Any]
    task_vector: dict[str, Any]
    layer_map: dict[str, Any]
    options: dict[str, Any]
    records: tuple[ParamRecord, ...]
    spaces: dict[str, dict]
    summary: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    theseus_ops_version: str = __version__

    @property
    def left_out(self) -> list[ParamRecord]:
        """The entries that could not be transported."""
        return [r for r in self.records if r.status == "left_out"]

    def parameter_lines(self) -> list[dict]:
        """One JSON line per entry, with the residuals of the spaces it went through."""
        lines = []
        for record in self.records:
            line = record.as_dict()
            line["space_residuals"] = {k: self.spaces[k]["residual"] for k in record.spaces if k in self.spaces}
            lines.append(line)
        return lines

    def as_dict(self) -> dict:
        """The report JSON, exactly as ``transport`` writes and returns it."""
        return {
            "theseus_ops_version": self.theseus_ops_version,
            "method": self.method,
            "source_base": self.source_base,
            "target_base": self.target_base,
            "task_vector": self.task_vector,
            "layer_map": self.layer_map,
            "options": self.options,
            "parameters": self.parameter_lines(),
            "spaces": self.spaces,
            **self.extra,
            "summary": self.summary,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=False)


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


def build_report(cfg: TransportConfig, pair: ModelPair, tv_label: str, tv: TaskVector, records: list[ParamRecord],
                 quality: dict[str, dict], extra: dict) -> Report:
    """The report of one transport; ``tv_label`` names the task vector (its path, for a file)."""
    method_options = get_method(cfg.method).option_values(cfg.method_config)
    return Report(
        method=cfg.method,
        source_base=model_summary(pair.source),
        target_base=model_summary(pair.target),
        task_vector={"path": tv_label, "kind": tv.vector_format, "entries": len(records)},
        layer_map=pair.layer_map.describe(),
        options={"center": cfg.center, "whiten_power": cfg.whiten_power, "max_rows": cfg.max_rows,
                 "allow_partial": cfg.allow_partial, **method_options, "alignment": cfg.alignment,
                 "rank_tol": cfg.rank_tol, "fill": cfg.fill, "solver": cfg.solver},
        records=tuple(records),
        spaces=quality,
        extra=dict(extra),
        summary={
            "total": len(records),
            "transported": sum(r.status == "transported" for r in records),
            "left_out": sum(r.status == "left_out" for r in records),
            "target_layers_without_source": pair.layer_map.unmapped_targets,
            "underdetermined_spaces": sorted(k for k, q in quality.items() if q.get("underdetermined")),
            **lost_share_summary(records),
        },
    )


def planned_record(plan: ParamPlan, tv: TaskVector) -> ParamRecord:
    """A report line for a run stopped at planning: why a parameter cannot go, or that it was not run."""
    reason = plan.reason or "not run: the transport stopped before statistics, other parameters cannot go"
    return ParamRecord(plan.source_name, "left_out" if plan.reason else "not_run", plan.rule, [],
                       tv.norm(plan.source_name), None, [], reason)

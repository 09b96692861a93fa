"""One task vector's transports within a DAG task: every input read once, every method in memory.

Why: a task tries five methods on one vector. Through the file API each method re-read both bases'
headers and the vector, wrote its result, and the scorer read it back; preparing an alignment loaded
both models again for each method. Here the pair's headers and the vector are read once, the base
models are loaded once (only if some method's maps must be estimated), each method's vector stays
in memory for scoring, and only the selected one is written, for registration. The per-pair
alignments stay files: they are the cache every vector of the pair reuses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from theseus_ops.config import CalibrationSpec, PrepareConfig, TransportConfig
from theseus_ops.io.alignment import Alignment
from theseus_ops.io.models import load_model, resolve_device
from theseus_ops.io.task_vectors import dense_deltas_of, read_task_vector, validate_against_base
from theseus_ops.pipeline import (
    NOTHING_LOADED,
    Loaded,
    ModelPair,
    Report,
    check_alignment_result,
    compute_alignment,
    open_pair,
    require_finite_result,
    transport_in_memory,
)
from theseus_ops.transport.methods import get_method
from theseus_ops.transport.task_vector import TaskVector
from theseus_ops.workflow.config import WorkflowConfig
from theseus_ops.workflow.contracts import Pair

log = logging.getLogger("theseus_ops.workflow")


@dataclass(frozen=True)
class Transported:
    """One method's result, in memory: the vector on the target, its report, and where its maps came from."""

    vector: TaskVector
    report: Report
    alignment_uri: str


class PortInputs:
    """What every method of one task reads: loaded on first use, then shared by all of them."""

    def __init__(self, cfg: WorkflowConfig, pair: Pair, tv_path: Path, spec: CalibrationSpec, cal_fp: str) -> None:
        self.cfg, self.pair, self.tv_path, self.spec, self.cal_fp = cfg, pair, Path(tv_path), spec, cal_fp
        self._model_pair: ModelPair | None = None
        self._vector: TaskVector | None = None
        self._models: tuple[torch.nn.Module, torch.nn.Module] | None = None

    @property
    def model_pair(self) -> ModelPair:
        """Both bases' headers and the layer map, read once."""
        if self._model_pair is None:
            self._model_pair = open_pair(self.pair.source.dir, self.pair.target.dir, "identity")
        return self._model_pair

    @property
    def vector(self) -> TaskVector:
        """The task vector, read and checked against the source once (a defect fails every method alike)."""
        if self._vector is None:
            tv = read_task_vector(self.tv_path, self.model_pair.source)
            validate_against_base(tv, self.model_pair.source, f"task vector {self.tv_path}")
            self._vector = tv
        return self._vector

    def models(self) -> Loaded:
        """Both base models, loaded the first time some method's maps must be estimated."""
        if self._models is None:
            device = resolve_device(self.cfg.device)
            self._models = (load_model(self.model_pair.source, device), load_model(self.model_pair.target, device))
        return Loaded(source_model=self._models[0], target_model=self._models[1])

    def alignment(self, method: str) -> tuple[Alignment, Path]:
        """The pair's maps for ``method``, prepared once per (pair, method, calibration) and cached as a file."""
        src, tgt = self.pair.source, self.pair.target
        uses_data = get_method(method).capabilities.needs_calibration
        suffix = f"-{self.cal_fp[:16]}" if uses_data else ""
        suffix += f"-{self.cfg.fill}"  # maps of another fill are other maps
        name = f"{src.sha256[:12]}-{tgt.sha256[:12]}-{method}{suffix}.safetensors"
        path = self.cfg.work_dir / "alignments" / self.pair.base_line / name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            prep = PrepareConfig(src.dir, tgt.dir, self.spec if uses_data else CalibrationSpec(), method=method,
                                 device=self.cfg.device, fill=self.cfg.fill)
            alignment = compute_alignment(prep, self.model_pair, loaded=self.models())
            check_alignment_result(alignment, self.model_pair)
            alignment.save(path)
        # as every later vector of the pair reads it: the cache's float32 maps, so cold and warm runs agree
        return Alignment.load(path), path.resolve()

    def transport(self, method: str) -> Transported:
        """One method's transport in memory; its capabilities say which inputs it gets."""
        caps = get_method(method).capabilities
        kwargs: dict = {}
        loaded, alignment_uri = NOTHING_LOADED, f"none://{method}"
        vector = self.vector  # read (and refused if broken) before any method's own checks
        if caps.estimates_maps:  # prepared once per pair and calibration, reused by every task vector
            alignment, path = self.alignment(method)
            kwargs["alignment"] = str(path)
            loaded, alignment_uri = Loaded(alignment=alignment), path.as_uri()
        elif caps.needs_calibration:
            kwargs["calibration"] = self.spec
        cfg = TransportConfig(self.pair.source.dir, self.pair.target.dir, method, task_vector=str(self.tv_path),
                              device=self.cfg.device, fill=self.cfg.fill, **kwargs)
        result, report = transport_in_memory(cfg, self.model_pair, vector, loaded, tv_label=str(self.tv_path))
        require_finite_result(result, f"{method} transport of {self.tv_path}")
        total = len(report.records)
        log.info("transported %s task vector with %d tensors by %s (%d/%d transported), kept in memory",
                 result.vector_format, len(result.names()), method, total - len(report.left_out), total)
        return Transported(result, report, alignment_uri)

    def dense(self, transported: Transported) -> dict[str, torch.Tensor]:
        """A result as float32 dense deltas in the target's storage layout, for the scorer."""
        return dense_deltas_of(transported.vector, self.model_pair.target.architecture)

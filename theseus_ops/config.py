"""Configuration dataclasses for the API and the CLI: every option is checked once, here."""

from __future__ import annotations

import math
from dataclasses import dataclass

from theseus_ops.errors import InputError, NotApplicableError
from theseus_ops.transport.maps import MapOptions
from theseus_ops.transport.methods import get_method
from theseus_ops.transport.tolerances import DEFAULT_FILL, DEFAULT_RANK_TOL, DEFAULT_SOLVER


@dataclass(frozen=True)
class CalibrationSpec:
    """One file for both models, or one per model holding the same examples row for row."""

    both: str | None = None
    source: str | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        if self.both and (self.source or self.target):
            raise InputError("give --calibration, or --source-calibration with --target-calibration, not both")
        if bool(self.source) != bool(self.target):
            raise InputError("--source-calibration and --target-calibration go together")

    @property
    def given(self) -> bool:
        return bool(self.both or self.source)


@dataclass(frozen=True)
class PrepareConfig:
    """Options of ``prepare``: everything the maps depend on, and so their provenance."""

    source_base: str
    target_base: str
    calibration: CalibrationSpec = CalibrationSpec()
    method: str = "theseus"
    center: bool = False
    whiten_power: float = 0.0
    max_rows: int | None = None
    layer_map: str = "identity"
    device: str = "auto"
    batch_size: int = 8
    probe_seed: int = 0
    rank_tol: float = DEFAULT_RANK_TOL
    fill: str = DEFAULT_FILL
    solver: str = DEFAULT_SOLVER

    def __post_init__(self) -> None:
        info = get_method(self.method)
        if info.kind != "maps" or self.method in ("pad", "naive"):
            raise InputError(f"prepare makes alignments for theseus or theseus-data-free, not {self.method}")
        if self.method == "theseus" and not self.calibration.given:
            raise NotApplicableError("method theseus needs calibration data: --calibration FILE")
        if self.method == "theseus-data-free" and self.calibration.given:
            raise InputError("theseus-data-free uses no calibration data; drop --calibration")
        if self.max_rows is not None and self.max_rows < 2:
            raise InputError(f"--max-rows must be at least 2, got {self.max_rows}")
        if self.batch_size < 1:
            raise InputError("--batch-size must be at least 1")
        try:
            self.map_options  # noqa: B018 - validates the combination
        except ValueError as exc:
            raise InputError(str(exc)) from exc

    @property
    def map_options(self) -> MapOptions:
        return MapOptions(center=self.center, whiten_power=self.whiten_power, rank_tol=self.rank_tol, fill=self.fill,
                          solver=self.solver)

    def provenance_options(self) -> dict:
        return {"method": self.method, "center": self.center, "whiten_power": self.whiten_power,
                "max_rows": self.max_rows, "probe_seed": self.probe_seed, "rank_tol": self.rank_tol,
                "fill": self.fill, "solver": self.solver}


@dataclass(frozen=True)
class TransportConfig:
    """Options of ``transport``."""

    source_base: str
    target_base: str
    method: str
    task_vector: str | None = None
    source_tuned: str | None = None
    calibration: CalibrationSpec = CalibrationSpec()
    alignment: str | None = None
    layer_map: str = "identity"
    allow_partial: bool = False
    center: bool = False
    whiten_power: float = 0.0
    max_rows: int | None = None
    device: str = "auto"
    batch_size: int = 8
    probe_seed: int = 0
    rank_tol: float = DEFAULT_RANK_TOL
    fill: str = DEFAULT_FILL
    solver: str = DEFAULT_SOLVER
    gradfix_mode: str = "normal"
    gradfix_signs: str = "mean"

    def __post_init__(self) -> None:
        info = get_method(self.method)
        if bool(self.task_vector) == bool(self.source_tuned):
            raise InputError("give exactly one of --task-vector PATH or --source-tuned DIR")
        if self.alignment and self.calibration.given:
            raise InputError("give --calibration or --alignment, not both")
        if self.alignment and self.method not in ("theseus", "theseus-data-free"):
            raise InputError(f"--alignment is for theseus methods, not {self.method}")
        if self.method == "theseus" and not (self.calibration.given or self.alignment):
            raise NotApplicableError("method theseus needs --calibration FILE or a prepared --alignment FILE")
        if info.needs_labels and not self.calibration.given:
            raise NotApplicableError(f"method {self.method} needs labeled examples: --calibration FILE with 'labels'")
        try:
            MapOptions(center=self.center, whiten_power=self.whiten_power, rank_tol=self.rank_tol, fill=self.fill,
                          solver=self.solver)
        except ValueError as exc:
            raise InputError(str(exc)) from exc

    def prepare_config(self) -> PrepareConfig:
        return PrepareConfig(
            source_base=self.source_base, target_base=self.target_base, calibration=self.calibration,
            method=self.method, center=self.center, whiten_power=self.whiten_power, max_rows=self.max_rows,
            layer_map=self.layer_map, device=self.device, batch_size=self.batch_size, probe_seed=self.probe_seed,
            rank_tol=self.rank_tol, fill=self.fill, solver=self.solver,
        )


def check_alpha(alpha: float) -> float:
    """α scales a task vector; NaN, Inf or a non-number would only produce a broken model."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise InputError(f"--alpha must be a finite number, got {alpha}")
    return float(alpha)

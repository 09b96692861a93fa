"""Configuration dataclasses for the API and the CLI: every option is checked once, here.

The options every map-making run shares live in one dataclass, :class:`MapSettings`, that
:class:`PrepareConfig` and :class:`TransportConfig` both extend; the CLI builds its flags from its
fields (:mod:`theseus_ops.transport.options`), so a default or a help text is written once.
Method-specific options live in each method's own config dataclass
(``theseus_ops/transport/methods/<name>/config.py``), reached through the method registry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from theseus_ops.errors import InputError, NotApplicableError
from theseus_ops.transport.maps import MapOptions
from theseus_ops.transport.methods import MethodInfo, get_method, method_names
from theseus_ops.transport.options import option
from theseus_ops.transport.tolerances import (
    DEFAULT_FILL,
    DEFAULT_PRECISION,
    DEFAULT_RANK_TOL,
    DEFAULT_SOLVER,
    FILLS,
    PRECISIONS,
    SOLVERS,
)


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


@dataclass(frozen=True, kw_only=True)
class MapSettings:
    """How models are paired, run and aligned: the options ``prepare`` and ``transport`` share.

    Keyword-only, so the configs that extend it keep their positional fields first.
    """

    center: bool = option(False, "center activations before Procrustes")
    whiten_power: float = option(0.0, "partial whitening power in [0, 0.5]", metavar="P")
    max_rows: int | None = option(None, "use at most N calibration examples", metavar="N", type=int)
    layer_map: str = option("identity", "which source layer feeds each target layer (default: identity, equal "
                            "depth)", metavar="identity|uniform|FILE.json")
    device: str = option("auto", "where the models run (auto: CUDA when present, else CPU)",
                         choices=("auto", "cpu", "cuda"))
    batch_size: int = option(8, "calibration examples per forward pass")
    rank_tol: float = option(DEFAULT_RANK_TOL, "singular values under TOL x the largest count as undetermined by "
                             "the data (reported; default %(default).2g)", metavar="TOL")
    fill: str = option(DEFAULT_FILL, "what a map does on directions the data leaves undetermined: weights "
                       "completes them from the base weights by weight matching (default; equivariant), project "
                       "drops them or completes them from probe inputs (equivariant), pad fills them with the "
                       "zero-pad prior (depends on coordinate order)", choices=FILLS)
    solver: str = option(DEFAULT_SOLVER, "how the pad fill's polar factors are computed: eigh (default; "
                         "eigendecompositions of the smaller Gram, several times faster) or svd (exact to float64 "
                         "rounding on every direction)", choices=SOLVERS)
    probe_seed: int = option(0, "seed of the probe inputs of methods that estimate maps without data, and of "
                             "the project fill's completion")
    precision: str = option(DEFAULT_PRECISION, "precision of the statistics' products: float32 (default) or "
                            "float64 (about 2-10x smaller oracle errors, twice the product's cost)",
                            choices=PRECISIONS)

    def __post_init__(self) -> None:
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
                          solver=self.solver, precision=self.precision)

    def map_settings(self) -> dict[str, Any]:
        """The shared options alone, to hand on to another config (``TransportConfig.prepare_config``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(MapSettings)}


def method_config(info: MethodInfo, given: object) -> object:
    """The method's own config: its defaults (None), built from a mapping (JSON, DAG Params), or as given."""
    if given is None:
        return info.config_cls()
    if isinstance(given, Mapping):
        known = {f.name for f in dataclasses.fields(info.config_cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise InputError(f"method {info.name} has no option {unknown[0]!r}; "
                             f"its options: {', '.join(sorted(known)) or 'none'}")
        return info.config_cls(**given)
    if not isinstance(given, info.config_cls):
        raise InputError(f"method {info.name} takes a {info.config_cls.__name__}, got {type(given).__name__}")
    return given


def _estimating_methods() -> str:
    return " or ".join(n for n in method_names() if get_method(n).capabilities.estimates_maps)


def check_calibration_given(info: MethodInfo, calibration: CalibrationSpec, alignment: str | None = None) -> None:
    """A method that needs calibration data and has none (nor prepared maps) is not applicable."""
    caps = info.capabilities
    if not caps.needs_calibration or calibration.given:
        return
    if caps.estimates_maps and alignment is None:
        raise NotApplicableError(f"method {info.name} needs --calibration FILE or a prepared --alignment FILE")
    if caps.needs_labels:
        raise NotApplicableError(f"method {info.name} needs labeled examples: --calibration FILE with 'labels'")
    if not caps.estimates_maps:
        raise NotApplicableError(f"method {info.name} needs calibration data: --calibration FILE")


@dataclass(frozen=True)
class PrepareConfig(MapSettings):
    """Options of ``prepare``: everything the maps depend on, and so their provenance.

    ``method_config``: the method's own options (its config dataclass, a mapping of them, or None for
    its defaults).
    """

    source_base: str
    target_base: str
    calibration: CalibrationSpec = CalibrationSpec()
    method: str = "theseus"
    method_config: Any = None
    stream: bool = False  # one block of each model at a time (docs/memory.md); the maps are the same

    def __post_init__(self) -> None:
        info = get_method(self.method)
        caps = info.capabilities
        if not caps.estimates_maps:
            raise InputError(f"prepare makes alignments for {_estimating_methods()}, not {self.method}")
        if self.stream and not caps.streams:
            streaming = ", ".join(n for n in method_names() if get_method(n).capabilities.streams)
            raise InputError(f"--stream runs {streaming} block by block, not {self.method}")
        if self.stream and self.fill == "project":
            raise InputError("--stream does not take --fill project (its probe pass runs the models again); "
                             "use the default weights fill or pad")
        if caps.needs_calibration and not self.calibration.given:
            raise NotApplicableError(f"method {self.method} needs calibration data: --calibration FILE")
        if not caps.needs_calibration and self.calibration.given:
            raise InputError(f"{self.method} uses no calibration data; drop --calibration")
        super().__post_init__()
        object.__setattr__(self, "method_config", method_config(info, self.method_config))

    def provenance_options(self) -> dict:
        options = {"method": self.method, "center": self.center, "whiten_power": self.whiten_power,
                   "max_rows": self.max_rows, "probe_seed": self.probe_seed, "rank_tol": self.rank_tol,
                   "fill": self.fill, "solver": self.solver, "precision": self.precision}
        return {**options, **get_method(self.method).option_values(self.method_config)}


@dataclass(frozen=True)
class TransportConfig(MapSettings):
    """Options of ``transport``.

    ``method_config``: the method's own options (its config dataclass, a mapping of them, or None for
    its defaults), e.g. ``TransportConfig(a, b, "gradfix", ..., method_config={"mode": "force"})``.
    """

    source_base: str
    target_base: str
    method: str
    task_vector: str | None = None
    source_tuned: str | None = None
    calibration: CalibrationSpec = CalibrationSpec()
    alignment: str | None = None
    allow_partial: bool = False
    method_config: Any = None

    def __post_init__(self) -> None:
        info = get_method(self.method)
        if bool(self.task_vector) == bool(self.source_tuned):
            raise InputError("give exactly one of --task-vector PATH or --source-tuned DIR")
        if self.alignment and self.calibration.given:
            raise InputError("give --calibration or --alignment, not both")
        if self.alignment and not info.capabilities.estimates_maps:
            raise InputError(f"--alignment is for methods that estimate maps ({_estimating_methods()}), "
                             f"not {self.method}")
        check_calibration_given(info, self.calibration, self.alignment)
        super().__post_init__()
        object.__setattr__(self, "method_config", method_config(info, self.method_config))

    def prepare_config(self) -> PrepareConfig:
        return PrepareConfig(source_base=self.source_base, target_base=self.target_base, calibration=self.calibration,
                             method=self.method, method_config=self.method_config, **self.map_settings())


def check_alpha(alpha: float) -> float:
    """α scales a task vector; NaN, Inf or a non-number would only produce a broken model."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise InputError(f"--alpha must be a finite number, got {alpha}")
    return float(alpha)

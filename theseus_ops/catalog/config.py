"""Configuration of the catalog (where MLflow is) and of the promotion gate (when to alias)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from theseus_ops.errors import InputError
from theseus_ops.retry import RetryPolicy


@dataclass(frozen=True)
class CatalogConfig:
    """Where the MLflow tracking server and model registry are.

    ``tracking_uri`` None means MLflow's own resolution (``MLFLOW_TRACKING_URI``, else its default).
    ``registry_uri`` None means the tracking URI. ``experiment`` holds the runs whose artifacts
    back the registered versions. ``http_timeout`` sets MLflow's per-request timeout (seconds).
    ``artifact_location`` is where that experiment's artifacts go when theseus-ops creates it (only
    needed with a database tracking URI such as ``sqlite:///…``; a server has its own artifact root).

    Env defaults (:meth:`from_env`): ``THESEUS_MLFLOW_TRACKING_URI`` (else ``MLFLOW_TRACKING_URI``),
    ``THESEUS_MLFLOW_REGISTRY_URI`` (else ``MLFLOW_REGISTRY_URI``), ``THESEUS_MLFLOW_EXPERIMENT``
    (default ``theseus-ops``), ``THESEUS_MLFLOW_ARTIFACT_LOCATION``, ``THESEUS_RETRY_ATTEMPTS`` and
    ``THESEUS_RETRY_BASE_DELAY``.
    """

    tracking_uri: str | None = None
    registry_uri: str | None = None
    experiment: str = "theseus-ops"
    http_timeout: float = 30.0
    artifact_location: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not self.experiment:
            raise InputError("the MLflow experiment name is empty")
        if not self.http_timeout > 0:
            raise InputError(f"the MLflow HTTP timeout must be positive, got {self.http_timeout}")

    @classmethod
    def from_env(cls, **overrides) -> CatalogConfig:
        env = os.environ.get
        values = {
            "tracking_uri": env("THESEUS_MLFLOW_TRACKING_URI") or env("MLFLOW_TRACKING_URI"),
            "registry_uri": env("THESEUS_MLFLOW_REGISTRY_URI") or env("MLFLOW_REGISTRY_URI"),
            "experiment": env("THESEUS_MLFLOW_EXPERIMENT", "theseus-ops"),
            "artifact_location": env("THESEUS_MLFLOW_ARTIFACT_LOCATION") or None,
            "retry": RetryPolicy.from_env(),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _finite(value: float, what: str) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class GateConfig:
    """When a transported model gets the ``candidate`` alias.

    It must beat the target base's test metric by at least ``margin`` (in the metric's direction,
    ``higher_is_better``), and its general-capability loss may exceed the target base's by at most
    ``max_general_loss_increase``. ``champion`` moves too only when ``move_champion`` is set.

    Env defaults (:meth:`from_env`): ``THESEUS_GATE_MARGIN`` (0.0), ``THESEUS_GATE_MAX_GENERAL_LOSS_INCREASE``
    (0.0), ``THESEUS_GATE_MOVE_CHAMPION`` (false), ``THESEUS_GATE_HIGHER_IS_BETTER`` (true).
    """

    margin: float = 0.0
    max_general_loss_increase: float = 0.0
    move_champion: bool = False
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        _finite(self.margin, "the gate margin")
        if _finite(self.max_general_loss_increase, "the general-loss limit") < 0:
            raise InputError("the general-loss limit must be non-negative")

    @classmethod
    def from_env(cls) -> GateConfig:
        env = os.environ.get
        flag = lambda v: v.strip().lower() in ("1", "true", "yes", "on")  # noqa: E731
        return cls(margin=float(env("THESEUS_GATE_MARGIN", "0")),
                   max_general_loss_increase=float(env("THESEUS_GATE_MAX_GENERAL_LOSS_INCREASE", "0")),
                   move_champion=flag(env("THESEUS_GATE_MOVE_CHAMPION", "false")),
                   higher_is_better=flag(env("THESEUS_GATE_HIGHER_IS_BETTER", "true")))


@dataclass(frozen=True)
class Evaluation:
    """A transported model's scores, and the target base's on the same test split and general set."""

    val_metric: float
    test_metric: float
    base_test_metric: float
    general_loss: float | None = None
    base_general_loss: float | None = None

    def __post_init__(self) -> None:
        for name in ("val_metric", "test_metric", "base_test_metric"):
            _finite(getattr(self, name), name)
        for name in ("general_loss", "base_general_loss"):
            if getattr(self, name) is not None:
                _finite(getattr(self, name), name)


@dataclass(frozen=True)
class GateDecision:
    candidate: bool
    champion: bool
    reason: str

    @property
    def tag(self) -> str:
        return f"{'passed' if self.candidate else 'failed'}: {self.reason}"


def decide(evaluation: Evaluation, gate: GateConfig) -> GateDecision:
    """Apply the gate; the reason names the numbers either way."""
    sign = 1.0 if gate.higher_is_better else -1.0
    gain = sign * (evaluation.test_metric - evaluation.base_test_metric)
    if gain < gate.margin:
        return GateDecision(False, False, f"test gain {gain:.6g} over the target base is below the margin "
                                          f"{gate.margin:.6g}")
    if evaluation.general_loss is None or evaluation.base_general_loss is None:
        return GateDecision(False, False, "general-capability loss was not measured")
    increase = evaluation.general_loss - evaluation.base_general_loss
    if increase > gate.max_general_loss_increase:
        return GateDecision(False, False, f"general-capability loss rose by {increase:.6g}, above the limit "
                                          f"{gate.max_general_loss_increase:.6g}")
    return GateDecision(True, gate.move_champion,
                        f"test gain {gain:.6g} >= margin {gate.margin:.6g}; general loss change {increase:.6g}")

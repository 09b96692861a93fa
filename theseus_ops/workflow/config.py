"""Configuration of the release workflow, checked once when it is built (e.g. at DAG parse time)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from theseus_ops.catalog.config import CatalogConfig, GateConfig
from theseus_ops.errors import InputError
from theseus_ops.evaluation.recipe import CalibrationRecipe
from theseus_ops.storage.zones import StorageConfig
from theseus_ops.transport.methods import get_method, method_names
from theseus_ops.transport.tolerances import DEFAULT_FILL, FILLS


def default_methods() -> tuple[str, ...]:
    """Every registered method the registry offers by default, in its listing order: a new method package is
    tried too, unless its capabilities keep it out (``in_default_workflow``)."""
    return tuple(n for n in method_names() if get_method(n).capabilities.in_default_workflow)


def methods_param() -> dict:
    """The DAG's ``methods`` Param (keyword arguments of ``airflow.sdk.Param``), built from the registry.

    The enum and each method's line of the description come from the method packages, so a new
    method appears in the trigger form without editing the DAG.
    """
    names = method_names()
    lines = "; ".join(f"{n}: {get_method(n).summary}" for n in names)
    return {"default": None, "type": ["null", "array"], "items": {"type": "string", "enum": names},
            "minItems": 1, "uniqueItems": True, "title": "Methods",
            "description": f"Transport methods; empty: THESEUS_METHODS or all of {', '.join(names)}. {lines}."}


DEFAULT_METHODS: tuple[str, ...] = default_methods()  # at import; WorkflowConfig reads the registry when built
DEFAULT_ALPHAS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
_SUFFIX = re.compile(r"^[A-Za-z0-9._-]*$")


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@dataclass(frozen=True)
class WorkflowConfig:
    """Everything the workflow steps need; one object so every mapped task sees the same settings.

    ``methods``: every method is tried on every pair; one whose shape rule fails for the pair (naive,
    gradfix on a wider target) is recorded as not applicable, not as an error. ``alphas``: the grid
    swept on val to pick each method's scale. ``calibration``: what both bases see while their maps are
    estimated (:class:`~theseus_ops.evaluation.recipe.CalibrationRecipe`: the first N train rows, so
    reruns see the same rows, plus held-out text windows and probes); gradfix takes its labels from
    the task rows. ``device``: transport/prepare
    device; scoring runs on ``$THESEUS_DEVICE`` too, but defaults to the CPU
    (:func:`theseus_ops.evaluation.eval_device`).

    Env defaults (:meth:`from_env`): the catalog's, storage's and gate's own, plus
    ``THESEUS_WORK_DIR`` (``.theseus/work``), ``THESEUS_METHODS`` and ``THESEUS_ALPHAS`` (comma
    lists), ``THESEUS_SERVING_SUFFIX`` (``-serving``), ``THESEUS_CALIBRATION`` (a recipe such as
    ``task=128,text=128,probes=128,answers=yes,max_length=128``), ``THESEUS_CALIBRATION_ROWS`` (its task rows),
    ``THESEUS_DEVICE`` (``auto``) and ``THESEUS_FILL`` (the library's default fill).

    ``fill``: the map fill of the methods that estimate maps (``MapSettings.fill``: weights, project or
    pad); part of the outcome key and of the cached alignment's name.
    """

    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    work_dir: Path = Path(".theseus/work")
    methods: tuple[str, ...] = field(default_factory=default_methods)
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    gate: GateConfig = field(default_factory=GateConfig)
    serving_suffix: str = "-serving"
    device: str = "auto"
    calibration: CalibrationRecipe = field(default_factory=CalibrationRecipe)
    fill: str = DEFAULT_FILL

    def __post_init__(self) -> None:
        object.__setattr__(self, "work_dir", Path(self.work_dir))
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "alphas", tuple(self.alphas))
        if not self.methods:
            raise InputError("the workflow needs at least one transport method")
        if len(set(self.methods)) != len(self.methods):
            raise InputError(f"transport methods are listed twice: {', '.join(self.methods)}")
        for method in self.methods:
            get_method(method)  # unknown names fail here, not hours later in a mapped task
        if not self.alphas:
            raise InputError("the workflow needs at least one alpha to sweep")
        for alpha in self.alphas:
            if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
                raise InputError(f"every alpha must be a finite number, got {alpha!r}")
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        if len(set(self.alphas)) != len(self.alphas):
            raise InputError(f"alphas are listed twice: {list(self.alphas)}")
        if not self.serving_suffix or not _SUFFIX.match(self.serving_suffix):
            raise InputError(f"the serving suffix {self.serving_suffix!r} must be non-empty letters, digits, . _ -")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"the workflow device must be auto, cpu or cuda, got {self.device!r}")
        if not isinstance(self.calibration, CalibrationRecipe):
            raise InputError(f"calibration must be a CalibrationRecipe, got {type(self.calibration).__name__}")
        if self.fill not in FILLS:
            raise InputError(f"the map fill must be one of {', '.join(FILLS)}, got {self.fill!r}")

    @classmethod
    def from_env(cls, **overrides) -> WorkflowConfig:
        """Read every setting from the environment (what an Airflow worker has); overrides win."""
        env = os.environ.get
        values: dict = {
            "catalog": CatalogConfig.from_env(),
            "storage": StorageConfig.from_env(),
            "gate": GateConfig.from_env(),
            "work_dir": Path(env("THESEUS_WORK_DIR", ".theseus/work")),
            "serving_suffix": env("THESEUS_SERVING_SUFFIX", "-serving"),
            "device": env("THESEUS_DEVICE", "auto"),
            "fill": env("THESEUS_FILL") or DEFAULT_FILL,
        }
        if env("THESEUS_METHODS"):
            values["methods"] = tuple(_split(env("THESEUS_METHODS", "")))
        if env("THESEUS_ALPHAS"):
            try:
                values["alphas"] = tuple(float(a) for a in _split(env("THESEUS_ALPHAS", "")))
            except ValueError as exc:
                raise InputError(f"THESEUS_ALPHAS must be a comma list of numbers ({exc})") from exc
        values["calibration"] = CalibrationRecipe.from_env()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def calibration_rows(self) -> int:
        """The recipe's task rows (what ``THESEUS_CALIBRATION_ROWS`` sets)."""
        return self.calibration.task_rows

    def fingerprint_options(self) -> dict:
        """The settings a task vector's outcome depends on (part of its idempotency key)."""
        return {"fill": self.fill, "methods": list(self.methods), "alphas": list(self.alphas),
                "serving_suffix": self.serving_suffix,
                "calibration": self.calibration.as_dict(),
                "gate": {"margin": self.gate.margin, "max_general_loss_increase": self.gate.max_general_loss_increase,
                         "move_champion": self.gate.move_champion, "higher_is_better": self.gate.higher_is_better}}

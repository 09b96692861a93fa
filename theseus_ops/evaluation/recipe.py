"""A calibration recipe: which inputs, and how many of each, both bases see while maps are estimated.

Torch-free, so a DAG file can validate it at parse time; :mod:`theseus_ops.evaluation.calibration`
builds the tensors. See that module for what each source is and why a recipe mixes them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from theseus_ops.errors import InputError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class CalibrationRecipe:
    """How many rows of each source a calibration set takes (see the module docstring).

    The default, 128 task rows with answers, 128 held-out text windows and 128 probe sequences of up
    to 128 tokens each, was chosen on val on the tiny demo family (BENCHMARKS.md, "Calibration
    recipes"): task rows alone gave calibrated Theseus a mean val exact match of 32 %, with text
    windows 43 %, with probes too 45-47 %, against 47 % for the data-free variant.
    """

    task_rows: int = 128
    answers: bool = True
    text_rows: int = 128
    text: Path | None = None
    probe_rows: int = 128
    max_length: int = 128

    def __post_init__(self) -> None:
        for name in ("task_rows", "text_rows", "probe_rows", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"calibration {name} must be a whole number >= 0, got {value!r}")
        if self.max_length < 2:
            raise InputError(f"calibration max_length must be at least 2 tokens, got {self.max_length}")
        if self.task_rows + self.text_rows + self.probe_rows < 2:
            raise InputError("a calibration recipe needs at least 2 rows in all (task, text and probe rows)")
        if not isinstance(self.answers, bool):
            raise InputError(f"calibration answers must be true or false, got {self.answers!r}")
        if self.text is not None:
            object.__setattr__(self, "text", Path(self.text))
            if not self.text.is_file():
                raise InputError(f"calibration text {self.text} is not a file")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["text"] = str(self.text) if self.text is not None else None
        return out

    @classmethod
    def parse(cls, spec: str, **defaults) -> CalibrationRecipe:
        """``task=128,text=128,probes=128,answers=yes,max_length=128,text_file=PATH``; unnamed fields keep
        ``defaults`` (or the dataclass's)."""
        names = {"task": "task_rows", "text": "text_rows", "probes": "probe_rows", "answers": "answers",
                 "max_length": "max_length", "text_file": "text"}
        values: dict = dict(defaults)
        for item in (p.strip() for p in spec.split(",") if p.strip()):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in names:
                raise InputError(f"calibration recipe item {item!r}: expected one of "
                                 f"{', '.join(k + '=' for k in names)}")
            field_name, raw = names[key], raw.strip()
            if field_name == "answers":
                if raw.lower() not in _TRUE + _FALSE:
                    raise InputError(f"calibration answers={raw!r}: use yes or no")
                values[field_name] = raw.lower() in _TRUE
            elif field_name == "text":
                values[field_name] = Path(raw)
            else:
                try:
                    values[field_name] = int(raw)
                except ValueError as exc:
                    raise InputError(f"calibration {key}={raw!r} is not a whole number") from exc
        return cls(**values)

    @classmethod
    def from_env(cls) -> CalibrationRecipe:
        """``THESEUS_CALIBRATION`` (a :meth:`parse` string); ``THESEUS_CALIBRATION_ROWS`` sets the task rows."""
        defaults: dict = {}
        rows = os.environ.get("THESEUS_CALIBRATION_ROWS", "").strip()
        if rows:
            try:
                defaults["task_rows"] = int(rows)
            except ValueError as exc:
                raise InputError(f"THESEUS_CALIBRATION_ROWS must be a whole number, got {rows!r}") from exc
        return cls.parse(os.environ.get("THESEUS_CALIBRATION", ""), **defaults)


RECIPE_FIELDS = tuple(f.name for f in fields(CalibrationRecipe))

"""Calibration examples for a pair: read (or given), paired, trimmed and checked against both vocabularies."""

from __future__ import annotations

from theseus_ops.config import CalibrationSpec
from theseus_ops.errors import InputError
from theseus_ops.io.calibration import Calibration, check_paired, check_vocabulary, load_calibration
from theseus_ops.io.models import ModelInfo


def load_calibrations(spec: CalibrationSpec, input_kind: str, max_rows: int | None,
                      decoder_start: int | None = None) -> tuple[Calibration, Calibration]:
    """Read the calibration file(s) the spec names, paired row for row and trimmed to ``max_rows``."""
    if spec.both:
        source = target = load_calibration(spec.both, input_kind, decoder_start)
    else:
        source = load_calibration(spec.source, input_kind, decoder_start)
        target = load_calibration(spec.target, input_kind, decoder_start)
        check_paired(source, target)
    return trim_calibrations(source, target, max_rows)


def trim_calibrations(source: Calibration, target: Calibration,
                      max_rows: int | None) -> tuple[Calibration, Calibration]:
    """At most ``max_rows`` examples, and at least two: one example gives no covariance to align."""
    if max_rows is not None and max_rows < source.rows:
        source, target = source.head(max_rows), target.head(max_rows)
    if source.rows < 2:
        raise InputError(f"calibration has {source.rows} row(s); at least 2 examples are needed")
    return source, target


def check_token_range(calibration: Calibration, info: ModelInfo, side: str) -> None:
    """Token ids and labels must index the model's vocabulary; otherwise the forward pass or the loss
    would crash midway."""
    check_vocabulary(calibration, info.config.get("vocab_size"), str(info.path), side)

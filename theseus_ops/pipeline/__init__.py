"""The in-memory pipeline: plan, estimate maps and transport with objects, touching no files.

Layering: :mod:`theseus_ops.transport` is the engine (tensors in, tensors out); this package sits
above it and below :mod:`theseus_ops.api`, which only checks outputs, reads inputs, calls in here
and writes the results atomically (mergekit's ``plan_in_memory`` / ``plan_to_disk``). Callers that
already hold the models, the task vector and an alignment (the workflow, the benchmarks) call
:func:`transport_in_memory` directly and skip the disk round trip.

    pair = open_pair("v1", "v2", "identity")                  # headers only, once per pair
    result, report = transport_in_memory(cfg, pair, task_vector, Loaded(alignment=alignment))
"""

from theseus_ops.pipeline.calibration import check_token_range, load_calibrations, trim_calibrations
from theseus_ops.pipeline.estimate import check_alignment_result, compute_alignment
from theseus_ops.pipeline.loaded import NOTHING_LOADED, Loaded
from theseus_ops.pipeline.pair import ModelPair, info_from_model, model_summary, open_pair, pair_of
from theseus_ops.pipeline.report import LOST_SHARE_WARNING, Report, build_report, lost_share_summary
from theseus_ops.pipeline.run import TransportRefused, require_finite_result, transport_in_memory

__all__ = [
    "LOST_SHARE_WARNING", "NOTHING_LOADED", "Loaded", "ModelPair", "Report", "TransportRefused", "build_report",
    "check_alignment_result", "check_token_range", "compute_alignment", "info_from_model", "load_calibrations",
    "lost_share_summary", "model_summary", "open_pair", "pair_of", "require_finite_result", "transport_in_memory",
    "trim_calibrations",
]

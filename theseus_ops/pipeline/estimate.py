"""Map estimation for a pair (``prepare``, or transport without an alignment), in memory.

:class:`EstimateRun` is the method's :class:`~theseus_ops.transport.methods.base.EstimateContext`:
it hands over the calibration examples, the two models and probes only when the method asks, and
takes each from :class:`Loaded` when the caller already holds it.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from theseus_ops import __version__
from theseus_ops.config import PrepareConfig
from theseus_ops.errors import InputError
from theseus_ops.io.alignment import Alignment
from theseus_ops.io.finite import require_finite
from theseus_ops.io.map_store import SpilledMaps
from theseus_ops.io.models import ModelInfo, ShardTensors, load_model, resolve_device
from theseus_ops.pipeline.blocks import streamed_pair
from theseus_ops.pipeline.calibration import check_token_range, load_calibrations, trim_calibrations
from theseus_ops.pipeline.loaded import NOTHING_LOADED, Loaded
from theseus_ops.pipeline.pair import ModelPair, model_summary
from theseus_ops.transport.architecture import ARCHITECTURE_KEY
from theseus_ops.transport.engine import ParamPlan, all_space_keys, plan_transport, space_requests
from theseus_ops.transport.methods import get_method
from theseus_ops.transport.methods.base import CalibrationInputs, LoadedModels, StreamedModels
from theseus_ops.transport.probes import ProbeConfig, probe_inputs
from theseus_ops.transport.statistics import SpaceRequest

log = logging.getLogger("theseus_ops")


def log_progress(message: str) -> None:
    """Progress of long steps goes through logging, so it reaches Airflow's task log."""
    log.info(message)


def _existing_modules(model: torch.nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules()}


class EstimateRun:
    """The :class:`~theseus_ops.transport.methods.base.EstimateContext` of one estimate: inputs on demand."""

    def __init__(self, cfg: PrepareConfig, pair: ModelPair, keys: set[str] | None,
                 loaded: Loaded = NOTHING_LOADED, progress: Callable[[str], None] = log_progress,
                 scratch: Path | None = None) -> None:
        self.cfg, self.pair, self.keys, self.loaded = cfg, pair, keys, loaded
        self.options = cfg.map_options
        self.layout = pair.architecture.token_layout
        self.batch_size = cfg.batch_size
        self.probe_seed = cfg.probe_seed
        self.device = resolve_device(cfg.device)
        self.progress = progress
        self.stream = cfg.stream
        self.scratch = scratch
        self.skipped: list[str] = []
        self._models: LoadedModels | None = None

    def calibration(self) -> CalibrationInputs:
        pair = self.pair
        if self.loaded.calibration is not None:
            source_cal, target_cal = trim_calibrations(*self.loaded.calibration, self.cfg.max_rows)
        else:
            source_cal, target_cal = load_calibrations(self.cfg.calibration, pair.architecture.input_kind,
                                                       self.cfg.max_rows, pair.decoder_start())
        check_token_range(source_cal, pair.source, "source")
        check_token_range(target_cal, pair.target, "target")
        return CalibrationInputs(source_cal.inputs(), target_cal.inputs(),
                                 {"source_fingerprint": source_cal.fingerprint,
                                  "target_fingerprint": target_cal.fingerprint, "rows": source_cal.rows,
                                  **({"recipe": source_cal.recipe} if source_cal.recipe else {})})

    def models(self) -> LoadedModels:
        if self._models is not None:
            return self._models
        pair, loaded = self.pair, self.loaded
        if loaded.source_model is None or loaded.target_model is None:
            self.progress(f"loading models {pair.source.path} and {pair.target.path} on {self.device}")
        source_model = loaded.source_model if loaded.source_model is not None else load_model(pair.source, self.device)
        target_model = loaded.target_model if loaded.target_model is not None else load_model(pair.target, self.device)
        requests = self._requests()
        present_a, present_b = _existing_modules(source_model), _existing_modules(target_model)
        self.skipped = [r.key for r in requests
                        if r.source.module_in(present_a) is None or r.target.module_in(present_b) is None]
        if self.skipped and self.keys is not None:
            raise InputError(f"space(s) {', '.join(self.skipped)} are needed but a model lacks their module")
        self._models = LoadedModels(source_model, target_model, [r for r in requests if r.key not in self.skipped])
        return self._models

    def _requests(self) -> list[SpaceRequest]:
        pair = self.pair
        wanted = self.keys if self.keys is not None else all_space_keys(pair.architecture, pair.layer_map)
        return space_requests(pair.architecture, wanted, pair.layer_map, pair.source_prefix, pair.target_prefix,
                              pair.source.config, pair.target.config)

    def streamed_models(self) -> StreamedModels:
        pair = self.pair
        if self.loaded.source_model is not None or self.loaded.target_model is not None or not (
                pair.source.files and pair.target.files):
            raise InputError("--stream reads both models block by block from their weight files; "
                             "models handed over in memory are whole already: prepare without --stream")
        self.progress(f"streaming models {pair.source.path} and {pair.target.path} block by block on {self.device}")
        streamed, self.skipped = streamed_pair(pair.source, pair.target, _block_containers(pair), self._requests(),
                                               self.device)
        if self.skipped and self.keys is not None:
            raise InputError(f"space(s) {', '.join(self.skipped)} are needed but a model lacks their module")
        return streamed

    def map_store(self) -> SpilledMaps:
        return SpilledMaps(self.scratch)

    def release_models(self) -> None:
        """Forget the models; those this run loaded are then freed, those of ``loaded`` stay the caller's."""
        self._models = None

    def weight_plans(self) -> list[ParamPlan]:
        pair = self.pair
        return plan_transport(pair.architecture, list(pair.source.shapes), pair.target.shapes, pair.layer_map,
                              pair.target_prefix, pair.source.config, pair.target.config)

    def base_state(self, source_names: set[str], target_names: set[str]) -> tuple[Mapping[str, torch.Tensor],
                                                                                  Mapping[str, torch.Tensor]]:
        return (_stored_state(self.pair.source, self.loaded.source_model, source_names),
                _stored_state(self.pair.target, self.loaded.target_model, target_names))

    def probes(self, min_examples: int = 8) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        pair = self.pair
        # The widest space is the widest trailing dimension of any weight (e.g. an MLP's hidden width).
        max_width = max(int(s[-1]) for info in (pair.source, pair.target) for s in info.shapes.values())
        arch = pair.architecture
        return probe_inputs(arch.settings(pair.source.config), arch.settings(pair.target.config), arch.input_kind,
                            max_width,
                            ProbeConfig(seed=self.probe_seed, min_examples=max(8, min_examples)), pair.decoder_start())


def _block_containers(pair: ModelPair) -> tuple[str, str]:
    """The module path of each model's blocks (``model.layers``), from the architecture's layer sites."""
    template = next(iter(pair.architecture.layer_sites.values())).module[0]
    container = template.split(".${layer}")[0]
    return pair.source_prefix + container, pair.target_prefix + container


def _stored_state(info: ModelInfo, model: torch.nn.Module | None, names: set[str]) -> Mapping[str, torch.Tensor]:
    """The named base tensors, by the names the plans use.

    From the shards where there are any, each read when used (:class:`ShardTensors`), not the built
    model: a model's module names may differ from its stored ones. A model handed over in memory
    (``pipeline.pair.info_from_model``) has no shards; its plans were made from its own ``state_dict``,
    so that is where its tensors come from. Without this the ``weights`` fill would find no weights
    and silently leave every open direction dropped.
    """
    if info.files:
        return ShardTensors(info, names)
    if model is None:
        raise InputError(f"{info.path}: no weight files and no model in memory to read the base weights from")
    state = model.state_dict()
    return {name: state[name].detach().cpu() for name in sorted(names) if name in state}


def compute_alignment(cfg: PrepareConfig, pair: ModelPair, keys: set[str] | None = None,
                      loaded: Loaded = NOTHING_LOADED, *, progress: Callable[[str], None] | None = None,
                      scratch: Path | None = None) -> Alignment:
    """Maps for the given target-space keys (all of the architecture's when None), with provenance.

    ``loaded`` hands over models and calibration examples the caller holds; ``progress`` receives the
    long steps' lines (default: the ``theseus_ops`` log). ``scratch``: where a streamed prepare keeps its
    maps until the alignment is saved (default: the system's temporary directory).
    """
    started = time.perf_counter()
    run = EstimateRun(cfg, pair, keys, loaded, progress or log_progress, scratch)
    estimate = get_method(cfg.method).impl.estimate(run, cfg.method_config)
    run._models = None  # the models go before the alignment is assembled
    provenance = {
        "theseus_ops_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        ARCHITECTURE_KEY: pair.architecture.name,
        "source": model_summary(pair.source),
        "target": model_summary(pair.target),
        "calibration": estimate.calibration,
        "options": cfg.provenance_options(),
        "layer_map": pair.layer_map.describe(),
        "skipped_spaces": run.skipped,
        "streamed": cfg.stream,  # block by block (the maps are the same either way)
        "seconds": round(time.perf_counter() - started, 3),
    }
    maps = estimate.maps if isinstance(estimate.maps, SpilledMaps) else {k: v.cpu() for k, v in estimate.maps.items()}
    return Alignment(maps,
                     {k: q.as_dict() for k, q in estimate.quality.items()}, provenance)


def check_alignment_result(alignment: Alignment, pair: ModelPair) -> None:
    """An alignment with no spaces, or with a NaN map or quality figure, would silently port nothing."""
    if not alignment.maps:
        archs = pair.target.config.get("architectures")
        raise InputError(f"no space of the {pair.architecture.name} architecture could be aligned: the loaded models "
                         f"lack every module it maps (config.json architectures of {pair.target.path}: {archs!r}; "
                         f"of {pair.source.path}: {pair.source.config.get('architectures')!r})")
    require_finite(alignment.maps, "alignment")
    for key, quality in alignment.quality.items():
        bad = [k for k, v in quality.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise InputError(f"alignment: space {key} has a non-finite {bad[0]} ({quality[bad[0]]}); "
                             "the models or the calibration data are degenerate; nothing was written")

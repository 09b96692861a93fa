"""What a method implements, and what the API hands it.

A method turns a :class:`TransportContext` into a :class:`MethodOutput`: either one map per
coordinate space (the engine then applies the architecture's rules, so fused projections, Conv1D layouts
and LoRA factors are handled once for every map method), or a finished task vector with its report
lines (a method that edits the vector itself, like GradFix). A method that estimates its maps from
the two models (``Capabilities.estimates_maps``) also implements :meth:`Method.estimate`, which
``prepare`` calls; at transport time it usually just returns ``ctx.prepared_maps()``.

The contexts are protocols the API implements: the engine stays free of files, MLflow and model
loading, and a method asks only for what it uses (a calibration file is read, a model loaded,
only when asked for).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from theseus_ops.transport.engine import ParamPlan, ParamRecord
    from theseus_ops.transport.maps import MapOptions
    from theseus_ops.transport.statistics import SpaceRequest
    from theseus_ops.transport.task_vector import TaskVector

Inputs = dict[str, "torch.Tensor"]


@dataclass
class MethodOutput:
    """Maps for the engine to apply, or (``result``, ``records``) when the method wrote the vector itself.

    ``quality``: per-space figures for the report; ``extra``: further report sections.
    """

    maps: dict[str, torch.Tensor] | None = None
    quality: dict[str, dict] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    result: TaskVector | None = None
    records: list[ParamRecord] | None = None

    def __post_init__(self) -> None:
        if (self.maps is None) == (self.result is None):
            raise ValueError("a method returns either maps or a result task vector, not both or neither")
        if self.result is not None and self.records is None:
            raise ValueError("a method that returns a result task vector returns its report records too")


@dataclass
class Estimate:
    """What :meth:`Method.estimate` returns: maps, per-space quality objects, and calibration provenance."""

    maps: dict[str, torch.Tensor]
    quality: dict[str, Any]
    calibration: dict[str, Any]


@dataclass
class CalibrationInputs:
    """Both models' inputs for the same examples, and their provenance (fingerprints, rows)."""

    source: Inputs
    target: Inputs
    info: dict[str, Any]


@dataclass
class LoadedModels:
    """The two base models, and the space requests whose modules both of them have."""

    source: torch.nn.Module
    target: torch.nn.Module
    requests: list[SpaceRequest]


class BlockSegment(Protocol):
    """One stretch of both models that runs on its own: what comes before the blocks, a block, what follows.

    Entering it loads its weights and returns ``forward(start, batch_a, batch_b)``, which runs the
    stretch of both models on the hidden states the segment before it left for that batch (and keeps
    its own outputs for the next); leaving it frees them. ``requests``: the spaces whose sites lie in it.
    """

    name: str
    requests: list[SpaceRequest]

    def __enter__(self) -> Callable[[int, dict, dict], None]: ...

    def __exit__(self, *exc: object) -> None: ...


class MapStore(Protocol):
    """Maps kept outside memory, set once each; ``close`` discards them (a failed estimate leaves no scratch file)."""

    def __setitem__(self, key: str, value: torch.Tensor) -> None: ...

    def __getitem__(self, key: str) -> torch.Tensor: ...

    def __iter__(self) -> Iterator[str]: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


@dataclass
class StreamedModels:
    """Both models as skeletons (their modules, for the hooks, with no block's weights loaded) and segments."""

    source: torch.nn.Module
    target: torch.nn.Module
    segments: list[BlockSegment]


class EstimateContext(Protocol):
    """What ``prepare`` (or transport without an alignment) gives a map-estimating method."""

    options: MapOptions
    layout: str
    batch_size: int
    probe_seed: int
    device: torch.device
    progress: Callable[[str], None]

    def calibration(self) -> CalibrationInputs:
        """The calibration files, loaded and checked against both vocabularies."""
        ...

    def models(self) -> LoadedModels:
        """Both base models on the device (loaded once)."""
        ...

    stream: bool

    def streamed_models(self) -> StreamedModels:
        """Both models to be run one block at a time (``prepare --stream``): never wholly in memory."""
        ...

    def map_store(self) -> MapStore:
        """Where a streamed estimate puts each final map: a scratch file, so that the maps need no memory."""
        ...

    def release_models(self) -> None:
        """Drop the context's hold on the models it loaded itself (the caller's own models stay theirs).

        A method calls it once it needs no forward pass any more, holding no model itself, so that the
        rest of the estimate (the weight completion reads the shards) does not keep both bases resident.
        """
        ...

    def probes(self, min_examples: int = 8) -> tuple[Inputs, Inputs]:
        """Seeded synthetic inputs, the same examples for both models."""
        ...

    def weight_plans(self) -> list[ParamPlan]:
        """The plan of every source base parameter onto the target (what the ``weights`` fill matches)."""
        ...

    def base_state(self, source_names: set[str], target_names: set[str]) -> tuple[Mapping[str, torch.Tensor],
                                                                                  Mapping[str, torch.Tensor]]:
        """The named base weights of the source and the target, as stored (the plans' names).

        Mappings, which may read each tensor when it is asked for: the completion holds one at a time."""
        ...


class TransportContext(Protocol):
    """What ``transport`` gives every method, after the capability checks passed."""

    task_vector: TaskVector
    plans: list[ParamPlan]
    batch_size: int
    device: torch.device
    progress: Callable[[str], None]

    def space_widths(self) -> dict[str, tuple[int, int]]:
        """(d_A, d_B) of every space the plans read or write."""
        ...

    def prepared_maps(self) -> MethodOutput:
        """The maps of a map-estimating method: the given alignment, checked, or estimated now."""
        ...

    def target_calibration(self) -> tuple[Inputs, int]:
        """The target model's calibration tensors (labels included) and their row count."""
        ...

    def target_model(self, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """The target base model on the device."""
        ...


class Method:
    """A method's behaviour. Subclass and override :meth:`run` (and :meth:`estimate` if it estimates maps)."""

    def run(self, ctx: TransportContext, config: Any) -> MethodOutput:
        raise NotImplementedError(f"{type(self).__name__} does not implement run()")

    def estimate(self, ctx: EstimateContext, config: Any) -> Estimate:
        raise NotImplementedError(f"{type(self).__name__} does not estimate maps")


class PreparedMaps(Method):
    """A map-estimating method at transport time: the prepared (or freshly estimated) maps."""

    def run(self, ctx: TransportContext, config: Any) -> MethodOutput:
        return ctx.prepared_maps()

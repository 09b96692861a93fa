"""A model run one block at a time from its shards (``prepare --stream``, docs/memory.md).

Why: both bases of an 8B-class pair, their statistics and their maps do not fit one GPU at once. A
streamed prepare builds each model as a skeleton (its parameters on PyTorch's ``meta`` device, no
memory), loads what runs before the blocks (the embeddings) and after them (the final norm, the head),
and then loads one block of each model at a time from the shards, runs it over every calibration
batch, and frees it.

How a block runs outside its model without knowing the model's code: a first pass runs the model with
every block replaced by a catcher, which keeps the keyword arguments the model's own forward hands
that block (the attention mask, the rotary embeddings, per block where they differ) and returns its
input. The first catcher's input is the hidden state the first block sees. Each block then runs on
the stored hidden states with its stored arguments, and its output replaces them. A last pass runs
the model again with catchers that return the final hidden states, so what follows the blocks (the
final norm) sees what it sees in a whole forward pass.

Only the architectures in :data:`STREAMED_ARCHITECTURES` are run this way: tests/test_streaming.py
checks that their maps equal those of a whole forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from theseus_ops.errors import InputError
from theseus_ops.io.loading_lock import MODEL_BUILDING
from theseus_ops.io.models import ModelInfo, ShardTensors
from theseus_ops.transport.methods.base import StreamedModels
from theseus_ops.transport.statistics import ResolvedSite, SpaceRequest, model_inputs

# Architectures whose blocks take everything they need as arguments (checked by tests/test_streaming.py).
STREAMED_ARCHITECTURES = ("llama",)
# The segments around the blocks: what runs before the first block, and after the last one.
BEFORE, AFTER = "before", "after"


class _Catcher(torch.nn.Module):
    """Stands in for a block during a pass: keeps the arguments it is given, returns what it is told."""

    def __init__(self, block: torch.nn.Module, keep: Callable[[tuple, dict], None],
                 output: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self._keep, self._output = keep, output
        for name in ("attention_type", "layer_idx", "is_sliding"):  # what a model's loop may read off a block
            if hasattr(block, name):
                setattr(self, name, getattr(block, name))

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self._keep(args, kwargs)
        return self._output(hidden_states)


class BlockModel:
    """One model as a skeleton with its blocks loaded one at a time; the hidden states between them.

    ``container``: the module path of the blocks (``model.layers``).
    """

    def __init__(self, info: ModelInfo, container: str, device: torch.device) -> None:
        self.info, self.container, self.device = info, container, device
        self.model = _skeleton(info)
        self.blocks = self.model.get_submodule(container)
        if not isinstance(self.blocks, torch.nn.ModuleList):
            raise InputError(f"{info.path}: {container} is not a list of blocks; prepare without --stream")
        prefix = getattr(self.model, "base_model_prefix", "")
        backbone = getattr(self.model, prefix, None) if prefix else None
        self.backbone = backbone if backbone is not None and container.startswith(prefix + ".") else self.model
        self._tensors = ShardTensors(info, info.shapes)
        self._hidden: dict[int, torch.Tensor] = {}
        self._arguments: dict[int, list[tuple[tuple, dict]]] = {}
        # What the passes run besides the blocks: the backbone's own parameters (embeddings, final norm), loaded
        # for the first and last pass only; a head outside the backbone (an LM head) never runs, nor loads.
        backbone_prefix = "" if self.backbone is self.model else prefix + "."
        self._around = [n for n, _ in self.model.named_parameters()
                        if n.startswith(backbone_prefix) and not _inside(n, container)]

    # --- weights -------------------------------------------------------------------------------------
    def _load(self, names: list[str]) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for name in names:
            if name not in self._tensors:
                raise InputError(f"{self.info.path}: the weight files have no {name}, which its config.json builds")
            set_module_tensor_to_device(self.model, name, self.device, value=self._tensors[name])

    def _free(self, names: list[str]) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for name in names:
            set_module_tensor_to_device(self.model, name, "meta")

    def _block_names(self, index: int) -> list[str]:
        return [f"{self.container}.{index}.{n}" for n, _ in self.blocks[index].named_parameters()]

    def load_block(self, index: int) -> None:
        self._load(self._block_names(index))

    def free_block(self, index: int) -> None:
        self._free(self._block_names(index))

    def load_around(self) -> None:
        """The backbone's parameters outside the blocks, for the first or the last pass."""
        self._load(self._around)

    def free_around(self) -> None:
        self._free(self._around)

    def resident_parameters(self) -> int:
        """Parameter elements held in memory (not on ``meta``): what a test checks stays one block."""
        return sum(p.numel() for p in self.model.parameters() if p.device.type != "meta")

    # --- passes --------------------------------------------------------------------------------------
    def _with_catchers(self, keep: Callable[[int, tuple, dict], None],
                       output: Callable[[int, torch.Tensor], torch.Tensor], inputs: dict) -> None:
        real = list(self.blocks)
        try:
            for i, block in enumerate(real):
                self.blocks[i] = _Catcher(block, lambda a, k, i=i: keep(i, a, k), lambda h, i=i: output(i, h))
            self.backbone(**inputs, use_cache=False)
        finally:
            for i, block in enumerate(real):
                self.blocks[i] = block

    def begin(self, start: int, batch: dict) -> None:
        """The first pass over one batch: what runs before the blocks, and every block's arguments."""
        arguments: list[tuple[tuple, dict]] = [((), {})] * len(self.blocks)

        def keep(i: int, args: tuple, kwargs: dict) -> None:
            arguments[i] = (args, kwargs)

        def output(i: int, hidden: torch.Tensor) -> torch.Tensor:
            if i == 0:
                self._hidden[start] = hidden
            return hidden

        self._with_catchers(keep, output, model_inputs(batch, self.model, self.device))
        self._arguments[start] = arguments

    def run_block(self, index: int, start: int) -> None:
        """Block ``index`` on one batch's hidden states, which its output replaces."""
        args, kwargs = self._arguments[start][index]
        out = self.blocks[index](self._hidden[start], *args, **kwargs)
        self._hidden[start] = out[0] if isinstance(out, tuple | list) else out

    def finish(self, start: int, batch: dict) -> None:
        """The last pass over one batch: what follows the blocks, on the final hidden states."""
        self._with_catchers(lambda i, a, k: None, lambda i, h: self._hidden[start],
                            model_inputs(batch, self.model, self.device))
        del self._hidden[start], self._arguments[start]


def _inside(name: str, container: str) -> bool:
    return name.startswith(container + ".")


def _skeleton(info: ModelInfo) -> torch.nn.Module:
    """The model with every parameter on ``meta`` (no memory) and its buffers (rotary tables) real."""
    import transformers
    from accelerate import init_empty_weights

    architectures = info.config.get("architectures") or []
    cls = next((getattr(transformers, a) for a in architectures if hasattr(transformers, a)), None)
    dtype = _stored_dtype(info)
    try:
        config = transformers.AutoConfig.from_pretrained(str(info.path), local_files_only=True)
        with MODEL_BUILDING, init_empty_weights(include_buffers=False):
            model = (cls._from_config(config, dtype=dtype) if cls is not None
                     else transformers.AutoModel.from_config(config, dtype=dtype))
    except Exception as exc:  # transformers raises many types; one line for the user
        raise InputError(f"{info.path}: cannot build the model ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    return model.eval()


def _stored_dtype(info: ModelInfo) -> torch.dtype:
    """The dtype the weights are stored in (what ``from_pretrained`` loads them as): the floating one most used."""
    names = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    counts: dict[str, int] = {}
    for name, code in info.dtypes.items():
        if code in names:
            counts[code] = counts.get(code, 0) + math.prod(info.shapes[name])
    return names[max(counts, key=counts.get)] if counts else torch.float32


class _Segment:
    """A stretch of both models (``BlockSegment``): ``block`` i, or (None) what runs before or after the blocks."""

    def __init__(self, name: str, requests: list[SpaceRequest], pair: tuple[BlockModel, BlockModel],
                 block: int | None) -> None:
        self.name, self.requests, self._pair, self._block = name, requests, pair, block

    def __enter__(self) -> Callable[[int, dict, dict], None]:
        for model in self._pair:
            if self._block is not None:
                model.load_block(self._block)
            else:
                model.load_around()
        return self._forward

    def __exit__(self, *exc: object) -> None:
        for model in self._pair:
            if self._block is not None:
                model.free_block(self._block)
            else:
                model.free_around()

    def _forward(self, start: int, batch_a: dict, batch_b: dict) -> None:
        for model, batch in zip(self._pair, (batch_a, batch_b), strict=True):
            if self._block is not None:
                model.run_block(self._block, start)
            elif self.name == BEFORE:
                model.begin(start, batch)
            else:
                model.finish(start, batch)


def streamed_pair(source: ModelInfo, target: ModelInfo, containers: tuple[str, str],
                  requests: list[SpaceRequest], device: torch.device) -> tuple[StreamedModels, list[str]]:
    """Both models as :class:`BlockModel` s and their segments in run order; the space keys they lack."""
    if source.architecture.name not in STREAMED_ARCHITECTURES:
        raise InputError(f"--stream runs {', '.join(STREAMED_ARCHITECTURES)} models block by block, not "
                         f"{source.architecture.name}; prepare without --stream")
    pair = (BlockModel(source, containers[0], device), BlockModel(target, containers[1], device))
    if len(pair[0].blocks) != len(pair[1].blocks):
        raise InputError(f"--stream needs as many blocks in the target ({len(pair[1].blocks)}) as in the source "
                         f"({len(pair[0].blocks)}); prepare without --stream")
    by_segment: dict[str, list[SpaceRequest]] = {}
    skipped = []
    # each model's module names by registration order, which is the order a forward runs them
    positions = [{name: i for i, (name, _) in enumerate(model.model.named_modules())} for model in pair]
    for request in requests:
        places = [_place(model.container, where, site)
                  for model, where, site in zip(pair, positions, (request.source, request.target), strict=True)]
        if None in places:
            skipped.append(request.key)
            continue
        if places[0] != places[1]:
            raise InputError(f"--stream: space {request.key} pairs {places[0]} of the source with {places[1]} of the "
                             "target; block by block needs each block paired with the same one: prepare without "
                             "--stream")
        by_segment.setdefault(places[0], []).append(request)
    blocks = [(f"block {i}", i) for i in range(len(pair[0].blocks))]
    segments = [_Segment(name, by_segment.get(name, []), pair, block)
                for name, block in [(BEFORE, None), *blocks, (AFTER, None)]]
    return StreamedModels(pair[0].model, pair[1].model, segments), skipped


def _place(container: str, positions: dict[str, int], site: ResolvedSite) -> str | None:
    """Which segment a site's module runs in: ``before``, ``block i`` or ``after``; None if the model lacks it.

    ``positions``: the model's module names, each with its place in the order a forward runs them.
    """
    name = site.module_in(positions)
    if name is None:
        return None
    if _inside(name, container):
        index = name[len(container) + 1:].split(".")[0]
        return f"block {int(index)}" if index.isdigit() else None
    return BEFORE if positions[name] < positions[container] else AFTER

"""Streaming activation statistics for pairs of sites (docs/method.md, statistics).

Both base models see the same calibration examples batch by batch. Only the modules that some
requested space needs are hooked, and a module hooked by several spaces is captured once. The
cross moment is a float32 matrix product per batch, accumulated in float64 on the compute device;
no activation leaves the device.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from theseus_ops.errors import InputError
from theseus_ops.progress import Ticker, memory_note
from theseus_ops.transport.architecture import Split
from theseus_ops.transport.fused import select_part

if TYPE_CHECKING:
    from theseus_ops.transport.head_maps import HeadStructure


@dataclass(frozen=True)
class ResolvedSite:
    """A concrete module of a concrete model (first existing candidate), its input or output, a chunk.

    ``split`` (a fused layout resolved for this model) makes ``chunk`` the index of a part of it;
    without one, ``chunk`` is one of ``chunks`` equal contiguous slices.
    """

    candidates: tuple[str, ...]
    capture: str
    chunk: int | None = None
    chunks: int = 1
    split: Split | None = None
    sequence: str = "input"  # the tokens it sees: the input, or an encoder-decoder's decoder input

    def module_in(self, names: set[str] | dict) -> str | None:
        """The first candidate path the model has, or None."""
        return next((m for m in self.candidates if m in names), None)


@dataclass(frozen=True)
class SpaceRequest:
    """Estimate the map of one target space from one source site and one target site."""

    key: str
    source_key: str
    source: ResolvedSite
    target: ResolvedSite
    structure: HeadStructure | None = None  # a per-head map constraint the architecture declares for this space
    follows: str | None = None  # the space whose coordinates this one keeps (``SiteSpec.follows``), by key


@dataclass
class SpaceStatistics:
    """Sufficient statistics of one site pair: cross moment, sums, squares, optional Grams."""

    cross: torch.Tensor
    sum_a: torch.Tensor
    sum_b: torch.Tensor
    sq_a: torch.Tensor
    sq_b: torch.Tensor
    rows: int = 0
    gram_a: torch.Tensor | None = None
    gram_b: torch.Tensor | None = None
    precise: bool = False  # per-batch products in float64 (``tolerances.PRECISIONS``), not float32

    @classmethod
    def empty(cls, width_a: int, width_b: int, device: torch.device, with_gram: bool,
              precise: bool = False) -> SpaceStatistics:
        z = dict(dtype=torch.float64, device=device)
        return cls(
            cross=torch.zeros(width_a, width_b, **z),
            sum_a=torch.zeros(width_a, **z),
            sum_b=torch.zeros(width_b, **z),
            sq_a=torch.zeros((), **z),
            sq_b=torch.zeros((), **z),
            gram_a=torch.zeros(width_a, width_a, **z) if with_gram else None,
            gram_b=torch.zeros(width_b, width_b, **z) if with_gram else None,
            precise=precise,
        )

    def update(self, xa: torch.Tensor, xb: torch.Tensor) -> None:
        """Add rows (float32 [n, d]); every reduction over a batch in float32, accumulation in float64.

        A float32 reduction of a batch is as precise as the float32 product beside it (pairwise
        summation), and asking torch for a float64 reduction of float32 rows converts every element
        first: that cost the sums and norms more than the cross product itself.
        """
        if self.precise:
            xa, xb = xa.double(), xb.double()
        self.cross += (xa.T @ xb).double()
        self.sum_a += xa.sum(0).double()
        self.sum_b += xb.sum(0).double()
        self.sq_a += torch.linalg.vector_norm(xa).double().square()
        self.sq_b += torch.linalg.vector_norm(xb).double().square()
        if self.gram_a is not None and self.gram_b is not None:
            self.gram_a += (xa.T @ xa).double()
            self.gram_b += (xb.T @ xb).double()
        self.rows += xa.shape[0]


class _Recorder:
    """Forward hooks that keep the latest float32 activation of each requested (module, capture)."""

    def __init__(self, model: torch.nn.Module, keys: set[tuple[str, str]]) -> None:
        self.values: dict[tuple[str, str], torch.Tensor] = {}
        self._handles = []
        modules = dict(model.named_modules())
        for module_name, capture in sorted(keys):
            module = modules[module_name]
            key = (module_name, capture)
            if capture == "input":
                self._handles.append(module.register_forward_pre_hook(self._pre_hook(key), with_kwargs=True))
            else:
                self._handles.append(module.register_forward_hook(self._post_hook(key)))

    def _pre_hook(self, key: tuple[str, str]) -> Callable:
        def hook(_module, args, kwargs):
            value = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))
            self.values[key] = _first_tensor(value).float()

        return hook

    def _post_hook(self, key: tuple[str, str]) -> Callable:
        def hook(_module, _args, output):
            self.values[key] = _first_tensor(output).float()

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self.values.clear()


def _hook_key(site: ResolvedSite, modules: dict) -> tuple[str, str]:
    name = site.module_in(modules)
    if name is None:
        raise InputError(f"model has no module {' or '.join(site.candidates)} that the architecture spec expects")
    return (name, site.capture)


def _first_tensor(value: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple | list) or hasattr(value, "to_tuple"):
        return value[0]  # type: ignore[index]
    raise TypeError(f"cannot take activations from {type(value).__name__}")


def _select(value: torch.Tensor, site: ResolvedSite) -> torch.Tensor:
    if site.chunk is None:
        return value
    if site.split is not None:
        return select_part(value, site.split, site.chunk, f"module {site.candidates[0]}")
    return value.chunk(site.chunks, dim=-1)[site.chunk]


def _resample_tokens(acts: torch.Tensor, tokens: int, layout: str) -> torch.Tensor:
    """Resample the token axis of [B, T, d] to ``tokens``: CLS kept and grid bilinear, or linear.

    The resampling is linear in the tokens, so it is one [tokens, T] matrix (built once per shape by
    resampling the identity) applied as a batched product: cheaper than interpolating every site's
    activations, and the same numbers.
    """
    if layout == "cls_grid":
        side_in, side_out = _grid_side(acts.shape[1]), _grid_side(tokens)
        rows = _resampling_matrix(side_in, side_out, "grid", acts.dtype, str(acts.device))
        grid = acts[:, 1:].reshape(acts.shape[0], side_in, side_in, acts.shape[2])
        grid = torch.einsum("xj,byjd->byxd", rows, torch.einsum("yi,bijd->byjd", rows, grid))
        return torch.cat([acts[:, :1], grid.reshape(acts.shape[0], side_out * side_out, acts.shape[2])], dim=1)
    matrix = _resampling_matrix(acts.shape[1], tokens, layout, acts.dtype, str(acts.device))
    return torch.matmul(matrix, acts)


def _grid_side(tokens: int) -> int:
    side = math.isqrt(max(tokens - 1, 0))
    if tokens < 2 or side * side != tokens - 1:
        raise InputError("vision token counts are not CLS plus a square patch grid; cannot resample")
    return side


@functools.lru_cache(maxsize=32)
def _resampling_matrix(tokens_in: int, tokens: int, layout: str, dtype: torch.dtype, device: str) -> torch.Tensor:
    """W [tokens, tokens_in] with out = W·acts: the interpolation applied to the identity.

    ``grid``: the 1-D factor of the bilinear grid resampling (bilinear without antialiasing is the
    same 1-D linear interpolation along each axis, align_corners=False).
    """
    eye = torch.eye(tokens_in, dtype=torch.float64)[None]  # one "input" whose channels are the tokens
    if layout == "grid":
        out = F.interpolate(eye, size=tokens, mode="linear", align_corners=False)[0].T
    else:
        out = _interpolate_tokens(eye, tokens, layout)[0]
    return out.contiguous().to(dtype=dtype, device=device)


def _interpolate_tokens(acts: torch.Tensor, tokens: int, layout: str) -> torch.Tensor:
    """The interpolation itself, on [B, T, d]."""
    if layout == "cls_grid":
        cls, grid = acts[:, :1], acts[:, 1:]
        side_in, side_out = math.isqrt(grid.shape[1]), math.isqrt(tokens - 1)
        if side_in * side_in != grid.shape[1] or side_out * side_out != tokens - 1:
            raise InputError("vision token counts are not CLS plus a square patch grid; cannot resample")
        img = grid.transpose(1, 2).reshape(acts.shape[0], acts.shape[2], side_in, side_in)
        img = F.interpolate(img, size=(side_out, side_out), mode="bilinear", align_corners=False)
        return torch.cat([cls, img.flatten(2).transpose(1, 2)], dim=1)
    return F.interpolate(acts.transpose(1, 2), size=tokens, mode="linear", align_corners=True).transpose(1, 2)


def paired_rows(
    act_a: torch.Tensor,
    act_b: torch.Tensor,
    mask: torch.Tensor | None,
    layout: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of A and B that describe the same token of the same input, as [n, d] each."""
    if act_a.dim() == 2 and act_b.dim() == 2:
        return act_a, act_b
    if act_a.dim() != 3 or act_b.dim() != 3:
        raise InputError(f"cannot pair activations of shapes {tuple(act_a.shape)} and {tuple(act_b.shape)}")
    if act_a.shape[1] != act_b.shape[1]:
        act_a = _resample_tokens(act_a, act_b.shape[1], layout)
    xa, xb = act_a.reshape(-1, act_a.shape[-1]), act_b.reshape(-1, act_b.shape[-1])
    if mask is not None:
        keep = mask.reshape(-1).bool()
        xa, xb = xa[keep], xb[keep]
    return xa, xb


# The ids and mask of each token sequence a site can see (``ResolvedSite.sequence``).
SEQUENCE_KEYS = {"input": ("input_ids", "attention_mask"), "decoder": ("decoder_input_ids", "decoder_attention_mask")}


def _row_masks(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
               device: torch.device) -> dict[str, torch.Tensor | None]:
    """The row mask of each token sequence, on the device."""
    masks = {}
    for sequence, (ids_key, mask_key) in SEQUENCE_KEYS.items():
        mask = _row_mask(source, target, ids_key, mask_key)
        masks[sequence] = mask.to(device) if mask is not None else None
    return masks


def _row_mask(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
              ids_key: str = "input_ids", mask_key: str = "attention_mask") -> torch.Tensor | None:
    """The token mask used to pair rows; equal-length calibrations must agree on it."""
    mask_a, mask_b = source.get(mask_key), target.get(mask_key)
    ids_a, ids_b = source.get(ids_key), target.get(ids_key)
    if ids_a is not None and ids_b is not None and ids_a.shape[1] != ids_b.shape[1]:
        for name, mask in (("source", mask_a), ("target", mask_b)):
            if mask is not None and not bool(mask.all()):
                raise InputError(
                    f"{name} calibration is padded and the sequence lengths differ; "
                    "token rows cannot be paired: use unpadded examples of one length per side"
                )
        return None
    if mask_a is not None and mask_b is not None and not torch.equal(mask_a.bool(), mask_b.bool()):
        raise InputError("source and target attention masks differ for the same examples; rows cannot be paired")
    return mask_b if mask_b is not None else mask_a


def _forward_callable(model: torch.nn.Module, modules: set[str]) -> Callable[..., object]:
    """The backbone when every needed site lives inside it: skips heads such as a large LM head."""
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    if backbone is not None and backbone is not model and all(m.startswith(prefix + ".") for m in modules):
        return backbone
    return model


def model_inputs(batch: Mapping[str, torch.Tensor], model: torch.nn.Module, device: torch.device) -> dict:
    """The keyword arguments a forward pass takes, on the device and in the model's float dtype."""
    dtype = next(model.parameters()).dtype
    out = {}
    for name in ("input_ids", "attention_mask", "pixel_values", "decoder_input_ids", "decoder_attention_mask"):
        if name in batch:
            value = batch[name].to(device)
            out[name] = value.to(dtype) if value.is_floating_point() else value
    return out


def collect_statistics(
    source_model: torch.nn.Module,
    target_model: torch.nn.Module,
    requests: Sequence[SpaceRequest],
    source_data: Mapping[str, torch.Tensor],
    target_data: Mapping[str, torch.Tensor],
    *,
    layout: str,
    batch_size: int,
    device: torch.device,
    with_gram: bool = False,
    progress: Callable[[str], None] | None = None,
    precision: str = "float32",
    forward: Callable[[int, dict, dict], None] | None = None,
) -> dict[str, SpaceStatistics]:
    """Stream the calibration examples through both models and accumulate every requested space.

    ``forward(start, batch_a, batch_b)``: runs both models on the batch of examples from ``start``
    instead of their whole forward passes, so that a prepare that streams block by block
    (``estimate.estimate_maps_by_block``) runs one block of each on its stored hidden states; the hooks
    sit on the modules of ``source_model`` and ``target_model`` by name either way.
    """
    if not requests:
        return {}
    total = next(iter(source_data.values())).shape[0]
    names_a, names_b = dict(source_model.named_modules()), dict(target_model.named_modules())
    hooks_a = {r.key: _hook_key(r.source, names_a) for r in requests}
    hooks_b = {r.key: _hook_key(r.target, names_b) for r in requests}
    source_keys, target_keys = set(hooks_a.values()), set(hooks_b.values())
    run_a = _forward_callable(source_model, {m for m, _ in source_keys})
    run_b = _forward_callable(target_model, {m for m, _ in target_keys})
    rec_a, rec_b = _Recorder(source_model, source_keys), _Recorder(target_model, target_keys)
    stats: dict[str, SpaceStatistics] = {}
    # Each batch's activations and paired rows are freed after the last space that uses them, not at the
    # batch's end: held to the end, every hooked site's rows of both models lived at once beside the
    # activations they were cut from (on SmolLM2-135M, 272 sites, most of the pass's memory).
    pair_keys = [(hooks_a[r.key], r.source.chunk, hooks_b[r.key], r.target.chunk) for r in requests]
    last_pair = {key: i for i, key in enumerate(pair_keys)}
    last_a = {hooks_a[r.key]: i for i, r in enumerate(requests)}
    last_b = {hooks_b[r.key]: i for i, r in enumerate(requests)}
    started = time.perf_counter()
    ticker = Ticker(-(-total // batch_size))  # batches
    try:
        with torch.inference_mode():
            for start in range(0, total, batch_size):
                batch_a = {k: v[start : start + batch_size] for k, v in source_data.items()}
                batch_b = {k: v[start : start + batch_size] for k, v in target_data.items()}
                masks = _row_masks(batch_a, batch_b, device)
                if forward is not None:
                    forward(start, batch_a, batch_b)
                else:
                    run_a(**model_inputs(batch_a, source_model, device))
                    run_b(**model_inputs(batch_b, target_model, device))
                rows: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # site pairs shared by requests
                for i, (req, pair_key) in enumerate(zip(requests, pair_keys, strict=True)):
                    if pair_key not in rows:
                        act_a = _select(rec_a.values[hooks_a[req.key]], req.source)
                        act_b = _select(rec_b.values[hooks_b[req.key]], req.target)
                        rows[pair_key] = paired_rows(act_a, act_b, masks[req.target.sequence], layout)
                        del act_a, act_b
                    xa, xb = rows[pair_key]
                    if req.key not in stats:
                        stats[req.key] = SpaceStatistics.empty(xa.shape[1], xb.shape[1], xa.device, with_gram,
                                                               precise=precision == "float64")
                    stats[req.key].update(xa, xb)
                    del xa, xb
                    if last_pair[pair_key] == i:
                        del rows[pair_key]
                    if last_a[hooks_a[req.key]] == i:
                        del rec_a.values[hooks_a[req.key]]
                    if last_b[hooks_b[req.key]] == i:
                        del rec_b.values[hooks_b[req.key]]
                done = min(start + batch_size, total)
                if progress and ticker.due(-(-done // batch_size)):
                    progress(f"statistics: {done}/{total} examples, {len(requests)} spaces, "
                             f"{time.perf_counter() - started:.1f} s{memory_note()}")
    finally:
        rec_a.close()
        rec_b.close()
    return stats

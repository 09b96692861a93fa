"""Base + α·δ in place on a loaded model, and back, without reloading or copying the whole model.

Only the tensors a delta touches are saved (once, on first touch) and rewritten, so sweeping α
costs one copy of the touched weights, in the model's dtype and on its device. Tied weights (an
LM head that is the embedding) are one tensor: they receive the delta once.
"""

from __future__ import annotations

import torch

from theseus_ops.errors import InputError


class DeltaApplier:
    """Sets a model's weights to base + α·δ for any delta (checkpoint key -> dense tensor), and restores the base."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._tensors = model.state_dict(keep_vars=True)  # key -> the live parameter or buffer
        self._saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(live tensor) -> (live, base copy)

    def _target(self, key: str) -> str:
        """The model key a checkpoint key names: itself, or the one model key ending in ``.<key>``.

        A bare encoder's checkpoint (``encoder.layer.0...``) scored inside a model with a head
        (``bert.encoder.layer.0...``) names its weights without the prefix.
        """
        if key in self._tensors:
            return key
        matches = [k for k in self._tensors if k.endswith("." + key)]
        if len(matches) != 1:
            raise InputError(f"task-vector parameter {key} is not a weight of the scored model"
                             + (f" (ambiguous: {', '.join(matches[:3])})" if matches else ""))
        return matches[0]

    def bind(self, delta: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(live tensor, float32 delta on its device) per distinct tensor the delta touches."""
        bound: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for key, value in delta.items():
            live = self._tensors[self._target(key)]
            if tuple(value.shape) != tuple(live.shape):
                raise InputError(f"task-vector parameter {key} has shape {list(value.shape)}, the model's "
                                 f"{list(live.shape)}")
            if id(live) in bound:  # a tied weight named twice: one tensor, one delta
                continue
            bound[id(live)] = (live, value.detach().to(live.device, torch.float32))
        return list(bound.values())

    @torch.no_grad()
    def set(self, bound: list[tuple[torch.Tensor, torch.Tensor]] | None, alpha: float) -> None:
        """Weights := base + α·δ for a bound delta (None or α 0: the base), computed in float32, rounded once."""
        touched = set()
        if bound is not None and alpha != 0:
            for live, delta in bound:
                if id(live) not in self._saved:
                    self._saved[id(live)] = (live, live.detach().clone())
                base = self._saved[id(live)][1]
                live.data.copy_(base.float() + alpha * delta)
                touched.add(id(live))
        for key, (live, base) in self._saved.items():
            if key not in touched:
                live.data.copy_(base)

    @torch.no_grad()
    def restore(self) -> None:
        """Every tensor touched so far back to its base value."""
        self.set(None, 0.0)

"""Where scoring runs: ``THESEUS_DEVICE`` (default ``cpu``), and moving batches to a model's device.

Scoring runs in the model's own dtype on that device, so a bfloat16 release on a GPU worker is
scored as it will be served, not upcast on the CPU.
"""

from __future__ import annotations

import os

import torch

from theseus_ops.errors import InputError

DEVICE_ENV = "THESEUS_DEVICE"


def eval_device(name: str | None = None) -> torch.device:
    """``name``, else ``$THESEUS_DEVICE``, else the CPU; ``auto`` is CUDA when present.

    Accepts ``cpu``, ``cuda``, ``cuda:N``, ``mps`` and ``auto``; a device that is not there is an
    InputError, not a crash inside the first forward pass.
    """
    name = (name or os.environ.get(DEVICE_ENV) or "cpu").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"{DEVICE_ENV}={name!r} is not a device (cpu, cuda, cuda:N, mps or auto)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{DEVICE_ENV}={name!r} but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"{DEVICE_ENV}={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{DEVICE_ENV}={name!r} but MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"{DEVICE_ENV}={name!r}: scoring runs on cpu, cuda or mps")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer); the CPU for a module that has neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def float_dtype(model: torch.nn.Module) -> torch.dtype:
    """The model's floating dtype (what pixel inputs are cast to); float32 for a parameter-free module."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32

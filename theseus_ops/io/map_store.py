"""Maps that live in files, not memory: a scratch store while a streamed prepare runs, then the alignment.

Why: a 1B-class pair's maps are 4.5 GB of float32, an 8B-class pair's 50 GB (docs/memory.md), more than
the model whose blocks a streamed prepare holds one at a time. Each map is written once it is final
and read back one at a time, and the alignment file is written tensor by tensor from them.
"""

from __future__ import annotations

import json
import math
import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path

import torch

from theseus_ops.io.atomic import atomic_path

_DTYPES = {torch.float32: "F32"}


class SpilledMaps(MutableMapping[str, torch.Tensor]):
    """float32 maps appended to one scratch file as they are set, each read back when asked for.

    A map is written once (setting a key again is a bug in the caller, not an update); deleting forgets
    it. ``close`` removes the scratch directory (also done when the object is collected).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="theseus-maps-", dir=directory)
        self._path = Path(self._scratch.name) / "maps.bin"
        self._file = open(self._path, "w+b")  # noqa: SIM115 - kept open for the store's life, closed in close()
        self._index: dict[str, tuple[int, tuple[int, ...]]] = {}

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        if key in self._index:
            raise ValueError(f"map {key} was stored already")
        data = value.detach().to("cpu", torch.float32).contiguous()
        self._file.seek(0, 2)
        offset = self._file.tell()
        self._file.write(_raw(data))
        self._index[key] = (offset, tuple(data.shape))

    def __getitem__(self, key: str) -> torch.Tensor:
        offset, shape = self._index[key]
        out = torch.empty(shape, dtype=torch.float32)
        self._file.flush()
        self._file.seek(offset)
        if self._file.readinto(_raw(out)) != 4 * out.numel():
            raise OSError(f"scratch file {self._path} ends inside map {key}")
        return out

    def __delitem__(self, key: str) -> None:
        del self._index[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._index[key][1]

    def close(self) -> None:
        self._file.close()
        self._scratch.cleanup()


class StoredMaps(Mapping[str, torch.Tensor]):
    """The maps of a written alignment file, each read when asked for (what a streamed prepare returns)."""

    def __init__(self, path: str | Path, names: Mapping[str, str]) -> None:
        self._path, self._names = Path(path), dict(names)  # key -> tensor name in the file

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self._path), framework="pt") as fh:
            return fh.get_tensor(self._names[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _raw(tensor: torch.Tensor) -> memoryview:
    """A contiguous CPU tensor's bytes, without a copy: ``tobytes`` would double a 300 MB map in memory."""
    return memoryview(tensor.numpy()).cast("B")


def save_tensors_one_by_one(read: Callable[[str], torch.Tensor], shapes: Mapping[str, tuple[int, ...]],
                            path: str | Path, metadata: dict[str, str]) -> None:
    """A float32 safetensors file written one tensor at a time, atomically: memory holds one tensor.

    ``read(name)``: the tensor, asked for once, when its turn comes. ``shapes``: every tensor's shape,
    known before any is read (the header comes first). The layout is the
    safetensors format (little-endian u64 header length, JSON header padded with spaces to 8 bytes, the
    data in header order), so ``safe_open`` and ``load_file`` read it as any other.
    """
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name in sorted(shapes):
        size = 4 * math.prod(shapes[name])
        header[name] = {"dtype": _DTYPES[torch.float32], "shape": list(shapes[name]),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for name in sorted(shapes):
            data = read(name).detach().to("cpu", torch.float32).contiguous()
            if tuple(data.shape) != tuple(shapes[name]):
                raise ValueError(f"tensor {name} has shape {tuple(data.shape)}, the header says {shapes[name]}")
            fh.write(_raw(data))

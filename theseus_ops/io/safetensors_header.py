"""The safetensors header, validated before any tensor is read.

Shapes and dtypes are planned from headers without loading weights, so a header is trusted only
after it is checked the way the format defines it: every dtype known, every shape a list of
non-negative integers, and the data offsets of all tensors tiling the data region exactly, each
tensor's span equal to its element count times its item size. A header that promises 1e24
parameters in 4 bytes, or a shape of ``["x", -1]``, is one clear error naming the file.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from theseus_ops.errors import InputError
from theseus_ops.io.paths import open_regular

# bytes per element of every dtype the torch loader reads; others (F4, F6, F8_E8M0) are refused
ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
MAX_HEADER_BYTES = 100_000_000  # the format's own limit
METADATA_KEY = "__metadata__"
_MAX_BYTES = 1 << 64


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a header: its dtype, shape and [begin, end) byte span in the data region."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_header(raw: bytes, file_size: int) -> SafetensorsHeader:
    """Validate the header bytes of a file of ``file_size`` bytes; ValueError names what is wrong."""
    if len(raw) < 8:
        raise ValueError("file shorter than a safetensors header")
    (size,) = struct.unpack("<Q", raw[:8])
    if size > MAX_HEADER_BYTES or 8 + size > file_size:
        raise ValueError(f"header length {size} is implausible for a file of {file_size} bytes")
    text = raw[8:8 + size]
    if len(text) != size:
        raise ValueError("file shorter than its header length")
    try:
        body = json.loads(text.decode("utf-8"))
    except RecursionError:
        raise ValueError("header JSON is nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("header is not UTF-8") from None
    except ValueError as exc:
        raise ValueError(f"header is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ValueError("header is not a JSON object")
    metadata = body.pop(METADATA_KEY, None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise ValueError(f"{METADATA_KEY} must map strings to strings")
    data_size = file_size - 8 - size
    tensors = {name: _entry(name, entry) for name, entry in body.items()}
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != position:
            what = "overlaps another tensor" if entry.begin < position else "leaves a gap before it"
            raise ValueError(f"tensor {name[:80]!r} at byte {entry.begin} {what}")
        position = entry.end
    if position != data_size:
        raise ValueError(f"truncated or padded: the header describes {position} data bytes, the file holds "
                         f"{data_size}")
    return SafetensorsHeader(tensors, metadata)


def _nbytes(shape: list[int], itemsize: int) -> int | None:
    """Element count times item size; None past 2**64 bytes (an absurd shape is not multiplied out)."""
    if 0 in shape:
        return 0
    total = itemsize
    for dim in shape:
        total *= dim
        if total > _MAX_BYTES:
            return None
    return total


def _entry(name: str, entry: object) -> TensorEntry:
    label = name if len(name) <= 80 else name[:77] + "..."
    if not isinstance(entry, dict):
        raise ValueError(f"malformed header entry {label!r}: not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:
        raise ValueError(f"malformed header entry {label!r}: unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise ValueError(f"malformed header entry {label!r}: shape must be a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"malformed header entry {label!r}: data_offsets must be two integers [begin, end]")
    span = offsets[1] - offsets[0]
    nbytes = _nbytes(shape, ITEMSIZE[dtype])
    if nbytes != span:
        needs = f"{nbytes} bytes" if nbytes is not None else "more than 2**64 bytes"
        shown = shape if len(shape) <= 8 else f"[{len(shape)} dimensions]"
        raise ValueError(f"header entry {label!r}: shape {shown} of {dtype} needs {needs} but its "
                         f"data_offsets span {span}")
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def read_header(path: str | Path, follow_symlink: bool = False) -> SafetensorsHeader:
    """The validated header of the safetensors file at ``path``, a regular file.

    A file inside a model directory must not be a symlink; a file the user names directly may be
    (``follow_symlink``), since the user chose where it points.
    """
    path = Path(path)
    with open_regular(path, str(path), follow_symlink=follow_symlink) as fh:
        try:
            file_size = fh.seek(0, 2)
            fh.seek(0)
            head = fh.read(8)
            if len(head) == 8:
                (size,) = struct.unpack("<Q", head)
                head += fh.read(min(size, MAX_HEADER_BYTES + 1))
            return parse_header(head, file_size)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable safetensors file ({_one_line(exc)})") from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."

"""Atomic writes: everything is written under a temporary name in the destination's directory, then
renamed, so an interrupted or failed run never leaves a half-written artifact behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from theseus_ops.errors import InputError


@contextlib.contextmanager
def atomic_path(dest: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success replace ``dest`` with it, else remove it."""
    dest = Path(dest)
    if not directory and dest.is_dir():
        raise InputError(f"output {dest} is a directory; give a file path")
    if directory and dest.exists() and not dest.is_dir():
        raise InputError(f"output {dest} is a file; give a directory path")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory and dest.is_dir():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(dest: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def staging_directory(dest: str | Path) -> Iterator[Path]:
    """A temporary directory beside ``dest`` for a download that must land whole or not at all.

    ``dest`` must be absent or an empty directory. Fill the yielded directory, verify it, then
    :func:`promote` it (or a folder inside it) to ``dest``; whatever is left is removed on exit.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(f"{dest} exists and is not an empty directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def promote(src: Path, dest: Path) -> None:
    """Move a verified staged directory into place (``dest`` is absent or empty)."""
    if dest.exists():
        dest.rmdir()
    src.rename(dest)

"""Paths inside a model (or release, or adapter) directory, confined to that directory.

A directory we read, hash or upload comes from someone else: a symlinked ``tokenizer.json`` would
send a host file (``/etc/passwd``, a private key) into the landing zone, and a shard index naming
``../file`` would read outside the model. So every file is reached through this module, which
refuses symbolic links, special files (a FIFO would block forever) and names that leave the
directory. The directory itself may be a symlink: that is the path the user gave us.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

from theseus_ops.errors import InputError


def check_relative_name(rel: object, where: str) -> str:
    """A relative POSIX file name that stays inside its root: no '..', no absolute path, no control bytes."""
    if not isinstance(rel, str) or not rel:
        raise InputError(f"{where}: file name {rel!r} is not a non-empty string")
    if any(ord(c) < 32 or c == "\x7f" for c in rel):
        raise InputError(f"{where}: file name {rel!r} contains control characters")
    if PurePosixPath(rel).is_absolute() or "\\" in rel or any(p in ("", "..", ".") for p in rel.split("/")):
        raise InputError(f"{where}: file name {rel!r} leaves the directory (only plain relative names are allowed)")
    return rel


def _refuse_links(root: Path, path: Path, where: str) -> None:
    """Every component from ``root`` (exclusive) to ``path`` must be a real file or directory."""
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if current.is_symlink():
            raise InputError(f"{where}: {current} is a symbolic link; symlinks are refused "
                             "(copy the real file into the directory)")


def safe_path(root: str | Path, rel: str, where: str | None = None) -> Path:
    """``root/rel`` when it names a path inside ``root`` reached without symlinks (it need not exist)."""
    root = Path(root)
    where = where or str(root)
    check_relative_name(rel, where)
    path = root / rel
    _refuse_links(root, path, where)
    real_root = root.resolve()
    if not path.resolve().is_relative_to(real_root):
        raise InputError(f"{where}: {rel!r} resolves outside {root}")
    return path


def check_regular_file(path: Path, where: str) -> Path:
    """``path`` must be a regular file, not a symlink, FIFO, socket or device."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{where}: {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"{where}: cannot read {path} ({exc.strerror})") from exc
    if stat.S_ISLNK(mode):
        raise InputError(f"{where}: {path} is a symbolic link; symlinks are refused (copy the real file)")
    if not stat.S_ISREG(mode):
        raise InputError(f"{where}: {path} is not a regular file")
    return path


def iter_model_files(root: str | Path, where: str | None = None) -> list[tuple[str, Path]]:
    """(relative POSIX name, path) of every file under ``root``, sorted by name.

    Refuses the whole directory if anything in it is a symlink or a special file, rather than
    skipping it: a silently skipped file would make a release that differs from what was given.
    """
    root = Path(root)
    where = where or str(root)
    if not root.is_dir():
        raise InputError(f"{where}: {root} is not a directory")
    found: list[tuple[str, Path]] = []

    def fail(exc: OSError) -> None:
        raise InputError(f"{where}: cannot list {exc.filename} ({exc.strerror})") from exc

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail, followlinks=False):
        base = Path(dirpath)
        for name in dirnames:
            if (base / name).is_symlink():
                raise InputError(f"{where}: {base / name} is a symbolic link; symlinks are refused "
                                 "(copy the real directory)")
        dirnames.sort()
        for name in filenames:
            path = check_regular_file(base / name, where)
            rel = path.relative_to(root).as_posix()
            check_relative_name(rel, where)
            found.append((rel, path))
    return sorted(found)


def open_regular(path: Path, where: str, follow_symlink: bool = False):
    """Open a regular file for binary reading, without following a symlink at its last component
    unless ``follow_symlink``; a FIFO or device is refused without blocking on it."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_symlink else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a symlink
            raise InputError(f"{where}: {path} is a symbolic link; symlinks are refused") from exc
        raise InputError(f"{where}: cannot open {path} ({exc.strerror})") from exc
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        raise InputError(f"{where}: {path} is not a regular file")
    return fh

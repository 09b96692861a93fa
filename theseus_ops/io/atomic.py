"""Atomic, exclusive writes.

Everything is written under a temporary name in the destination's directory, then renamed, so an
interrupted or failed run never leaves a half-written artifact behind. Outputs are exclusive:
an existing destination is replaced only when theseus-ops wrote it (a directory carries a
:data:`MARKER` listing its files; a file carries theseus-ops metadata), or when the caller
allowed it (``--overwrite``, see :func:`overwriting`). Nothing the tool did not write is removed
unless it was asked to replace it, and even then only after the new content is complete.
Temporary files get the mode ``open`` would give them (0666 or 0777 less the umask), not 0600.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from theseus_ops.errors import InputError

MARKER = ".theseus-ops.json"
WRITER = "theseus-ops"
# safetensors metadata of theseus-ops formats (task vectors, alignments): files in them may be replaced
_FILE_KEYS = ("theseus.written_by", "theseus.format_version", "theseus.alignment", "theseus.method",
              "theseus.calibration_recipe")
# JSON keys only theseus-ops writes at the top of its reports
_JSON_KEYS = ("theseus_ops_version",)

_allowed: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("theseus_overwrite", default=frozenset())

T = TypeVar("T")


def _key(path: str | Path) -> str:
    return os.path.abspath(path)


@contextlib.contextmanager
def overwriting(paths: Iterable[str | Path | None]) -> Iterator[None]:
    """Within the block, the given destinations may replace what exists there (``--overwrite``)."""
    token = _allowed.set(_allowed.get() | {_key(p) for p in paths if p is not None})
    try:
        yield
    finally:
        _allowed.reset(token)


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` is racy in threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _open_mode(path: Path, directory: bool) -> None:
    """Give a mkstemp/mkdtemp path the mode ``open``/``mkdir`` would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def normalize_modes(path: Path) -> None:
    """Every file and folder written under ``path`` gets the umask's mode.

    Writers such as safetensors' ``save_file`` create 0600 files, and ``copy2`` keeps a source's
    mode; an output should look like any file ``open`` creates.
    """
    mask = current_umask()
    if not path.is_dir():
        os.chmod(path, 0o666 & ~mask)
        return
    os.chmod(path, 0o777 & ~mask)
    for item in path.rglob("*"):
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def temp_file(dest: str | Path, suffix: str = ".tmp") -> Path:
    """A new, empty temporary file beside ``dest`` with the umask's mode; the caller renames or removes it.

    Prefer :func:`scratch_file`, which also removes it when a signal lands between its creation and
    the caller's cleanup.
    """
    dest = Path(dest)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    _open_mode(Path(name), directory=False)
    return Path(name)


@contextlib.contextmanager
def scratch_file(dest: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside ``dest`` that is gone after the block unless the block renamed it away.

    It is created with SIGINT/SIGTERM held (see :func:`_signals_held`), so no signal can arrive
    between its creation and the ``finally`` that removes it.
    """
    tmp: Path | None = None
    try:
        with _signals_held():
            tmp = temp_file(dest, suffix)
        yield tmp
    finally:
        if tmp is not None:
            _uninterrupted(lambda: tmp.unlink(missing_ok=True))


def _uninterrupted(cleanup: Callable[[], None], attempts: int = 10) -> None:
    """Run ``cleanup`` to the end even when a signal's exception lands in it, then raise that exception.

    The cleanup runs with the signals held, so none cuts it (``shutil.rmtree`` cut by an exception
    closes a descriptor twice). A handler that had already been accepted can still run before the hold
    is in place, between any two bytecodes; the cleanup, idempotent, is then retried. An ``OSError``
    is the cleanup's own failure and propagates.
    """
    interrupted: BaseException | None = None
    done = False
    for _ in range(attempts):
        try:
            with _signals_held():
                cleanup()
                done = True
        except OSError:
            raise
        except BaseException as exc:  # a signal handler's exception: finish first, re-raise after
            interrupted = interrupted or exc
        if done:
            break
    if interrupted is not None:
        raise interrupted


@contextlib.contextmanager
def replacing(dest: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside ``dest`` that replaces it once the block succeeds, and is removed if it fails.

    For files theseus-ops owns by construction (its caches, its plots, a landing zone's objects), which a
    re-run rewrites whole: a reader sees the old file or the new one, never a part. The file gets the
    umask's mode, as ``open`` would give it (writers such as safetensors create 0600 files). ``suffix``
    keeps the extension writers read the format from (matplotlib: ``.png``). Outputs a user names go
    through :func:`atomic_path` instead, which also refuses to replace what theseus-ops did not write.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with scratch_file(dest, suffix) as tmp:
        yield tmp
        normalize_modes(tmp)
        with _signals_held():
            os.replace(tmp, dest)


def _listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if not p.is_dir())


def written_by_theseus(path: str | Path) -> bool:
    """Whether ``path`` is an output theseus-ops wrote (so a re-run may replace it)."""
    path = Path(path)
    if path.is_symlink():
        return False
    if path.is_dir():
        try:
            marker = json.loads((path / MARKER).read_text())
            listed = set(marker["files"]) | {MARKER}
            return marker.get("written_by") == WRITER and set(_listing(path)) <= listed
        except (OSError, ValueError, KeyError, TypeError):
            return False
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) == 8 and not head.lstrip().startswith(b"{"):
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as st:
                    meta = st.metadata() or {}
                return any(k in meta for k in _FILE_KEYS)
        if path.stat().st_size > 64 << 20:
            return False
        data = json.loads(path.read_text())
        return isinstance(data, dict) and any(k in data for k in _JSON_KEYS)
    except Exception:  # anything unreadable is simply not ours
        return False


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path):
        path = path.parent
    return path


def check_output(dest: str | Path, directory: bool = False, overwrite: bool = False, what: str = "output") -> Path:
    """Check an output path before any work: writable, not the working directory, not clobbering.

    An existing destination is accepted when theseus-ops wrote it, when it is an empty directory
    (for a directory output), or with ``overwrite``. Nothing is created here.
    """
    dest = Path(dest)
    absolute = Path(os.path.abspath(dest))
    if dest.name in ("", ".", "..") or absolute == Path(absolute.anchor):
        raise InputError(f"{what} {dest}: name a new file or directory, not {dest}")
    cwd = Path.cwd()
    if absolute == cwd or absolute in cwd.parents:
        raise InputError(f"{what} {dest} is the working directory or one above it; name a new one")
    existing = _nearest_existing(absolute.parent)
    if not existing.is_dir():
        raise InputError(f"{what} {dest}: {existing} is a file, not a directory")
    try:
        with scratch_file(existing / ".theseus-ops-probe"):
            pass
    except OSError as exc:
        raise InputError(f"{what} {dest}: cannot write in {existing} ({exc.strerror or exc})") from exc
    if not os.path.lexists(absolute):
        return dest
    if absolute.is_symlink() and not (overwrite or _key(absolute) in _allowed.get()):
        raise InputError(f"{what} {dest} is a symbolic link; theseus-ops replaces no link unless --overwrite is given")
    if directory and (absolute.is_symlink() or not absolute.is_dir()):
        raise InputError(f"{what} {dest} is a file; give a directory path")
    if not directory and absolute.is_dir():
        raise InputError(f"{what} {dest} is a directory; give a file path")
    allowed = overwrite or _key(absolute) in _allowed.get()
    empty_dir = directory and not any(absolute.iterdir())
    if not (allowed or empty_dir or written_by_theseus(absolute)):
        found = "a directory" if directory else "a file"
        raise InputError(f"{what} {dest} exists and is {found} theseus-ops did not write; pass --overwrite to "
                         "replace it, or choose another path")
    return dest


def _mark(directory: Path) -> None:
    files = [f for f in _listing(directory) if f != MARKER]
    (directory / MARKER).write_text(json.dumps({"written_by": WRITER, "files": files}, indent=1) + "\n")


def _swap_in(tmp: Path, dest: Path) -> None:
    """Replace the directory ``dest`` by ``tmp`` with two renames; the old one is removed only afterwards."""
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    old.rmdir()  # a unique free name beside dest, never someone else's directory
    dest.rename(old)
    try:
        tmp.rename(dest)
    except BaseException:
        old.rename(dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


# Signals that arrived while held, in order, re-delivered when the outermost hold ends; and the depth.
_held_signals: list[int] = []
_hold_depth = [0]


def _defer(signum: int, frame) -> None:
    _held_signals.append(signum)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done: the renames that publish outputs are not cut.

    Blocking them in the kernel is not enough: a signal that arrived just before the block has already
    been accepted, and Python runs its handler at the next bytecode it executes, which may be inside the
    block (right after a temporary file was created and before it was recorded). So the block also
    swaps in a handler that only records the signal, and the signal's own handler runs once the
    outermost hold ends. Outside the main thread (no handlers can be set there) only the mask applies.
    """
    import signal
    import threading

    held = (signal.SIGINT, signal.SIGTERM)
    main = threading.current_thread() is threading.main_thread()
    outermost = _hold_depth[0] == 0
    previous_handlers: dict[int, object] = {}
    try:
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(held))
    except (AttributeError, OSError, ValueError):  # no POSIX signal masks here
        previous_mask = None
    try:
        if main and outermost:
            for signum in held:
                previous_handlers[signum] = signal.signal(signum, _defer)
    except BaseException:  # an already-accepted signal ran its handler before both were swapped
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        if previous_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        raise
    _hold_depth[0] += 1
    try:
        yield
    finally:
        _hold_depth[0] -= 1
        if previous_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)  # a blocked signal is delivered now
        if previous_handlers:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            pending = list(_held_signals)
            _held_signals.clear()
            if pending:
                handler = previous_handlers[pending[0]]
                if callable(handler):
                    handler(pending[0], None)  # the program's own handler (the CLI raises here)
                elif handler == signal.SIG_DFL:
                    signal.raise_signal(pending[0])


@contextlib.contextmanager
def atomic_outputs(*outputs: tuple[str | Path, bool]) -> Iterator[list[Path]]:
    """Write several outputs that appear together or not at all.

    ``outputs`` are ``(dest, is_directory)`` pairs. Each gets a path inside a private staging
    folder beside it (``.NAME.XXXX.tmp``): a directory that exists, or a file path to create.
    After the block every destination is checked again (something may have appeared meanwhile)
    and all are renamed into place with SIGINT/SIGTERM held back; on any error, or an interrupt
    during the work, nothing is published. The staging folders are removed either way.
    """
    dests = [(Path(d), directory) for d, directory in outputs]
    for dest, directory in dests:
        check_output(dest, directory)
    stages: list[Path] = []
    try:
        paths = []
        for dest, directory in dests:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with _signals_held():  # a signal between creating and recording a stage would leak it
                stages.append(Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)))
            path = stages[-1] / dest.name
            if directory:
                path.mkdir()
            paths.append(path)
        yield paths
        for (dest, directory), path in zip(dests, paths, strict=True):
            check_output(dest, directory)
            if directory != path.is_dir() or not os.path.lexists(path):
                raise InputError(f"{dest}: the writer produced no {'directory' if directory else 'file'}")
            if directory:
                _mark(path)
            normalize_modes(path)
        with _signals_held():
            for (dest, directory), path in zip(dests, paths, strict=True):
                if directory and dest.is_dir():
                    _swap_in(path, dest)
                else:
                    os.replace(path, dest)
    finally:
        def remove_stages() -> None:
            for stage in stages:
                shutil.rmtree(stage, ignore_errors=True)

        _uninterrupted(remove_stages)  # a signal now is delivered after the cleanup, not in the middle of it


@contextlib.contextmanager
def atomic_path(dest: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path for ``dest`` (see :func:`atomic_outputs`); on success it replaces ``dest``.

    A directory exists already and gets :data:`MARKER` listing what was written into it; a file
    path does not exist yet: the writer creates it.
    """
    with atomic_outputs((dest, directory)) as (path,):
        yield path


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
    _open_mode(tmp, directory=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_directory_once(final: Path, tmp: Path, build: Callable[[Path], T]) -> T:
    """Build a cache directory in ``tmp`` (beside ``final``), then rename it to ``final``.

    A directory is only ever complete: a failed or interrupted build removes ``tmp``, and when a
    racing builder renamed its copy into place first, that copy is kept and this one discarded.
    Returns what ``build`` returned.
    """
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        result = build(tmp)
        if final.exists():  # another process finished first; keep theirs
            shutil.rmtree(tmp)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def promote(src: Path, dest: Path) -> None:
    """Move a verified staged directory into place (``dest`` is absent or empty)."""
    if dest.exists():
        dest.rmdir()
    src.rename(dest)

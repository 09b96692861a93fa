"""Atomic writes under signals: a SIGTERM at any moment leaves no temporary file behind.

The CLI turns SIGTERM into an exception raised wherever Python happens to be. A temporary file created
and not yet recorded for cleanup when that exception lands would be left beside the output, so its
creation and its removal run with the signals held, and a signal that arrives meanwhile is delivered
once the hold ends, to the program's own handler.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from theseus_ops.io import atomic


class _Raised(Exception):
    pass


@pytest.fixture
def raising_sigterm():
    """SIGTERM raises, as under the CLI."""

    def handler(signum, frame):
        raise _Raised(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_a_signal_during_a_hold_reaches_the_handler_after_the_block(raising_sigterm):
    done = []
    with pytest.raises(_Raised), atomic._signals_held():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # Python would run a handler here if one were installed
        done.append("block finished")
    assert done == ["block finished"]
    assert signal.getsignal(signal.SIGTERM) is not atomic._defer  # the program's handler is back


def test_nested_holds_deliver_once_at_the_outermost_end(raising_sigterm):
    order = []
    with pytest.raises(_Raised), atomic._signals_held():
        with atomic._signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
        order.append("inner ended, still held")
    assert order == ["inner ended, still held"]


def test_a_signal_in_the_writer_publishes_nothing_and_leaves_nothing(raising_sigterm, tmp_path):
    dest = tmp_path / "out.json"
    with pytest.raises(_Raised), atomic.replacing(dest) as tmp:
        tmp.write_text("half")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
    assert list(tmp_path.iterdir()) == []


def test_a_signal_in_a_cleanup_is_raised_after_the_cleanup_finished(raising_sigterm, tmp_path):
    removed = []

    def cleanup() -> None:
        if not removed:
            removed.append("first try cut")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the handler raises here, before the cleanup did its work
        removed.append("done")

    with pytest.raises(_Raised):
        atomic._uninterrupted(cleanup)
    assert removed == ["first try cut", "done"]


ATTEMPTS = int(os.environ.get("THESEUS_SIGNAL_ATTEMPTS", "30"))
_WRITER = textwrap.dedent("""
    import signal, sys
    from pathlib import Path
    from theseus_ops.io import atomic

    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)
    folder = Path(sys.argv[1])
    print("ready", flush=True)
    try:
        while True:
            with atomic.replacing(folder / "report.json") as tmp:
                tmp.write_text("{}")
            with atomic.atomic_path(folder / "model", directory=True) as path:
                (path / "weights.bin").write_bytes(b"x")
    except KeyboardInterrupt:
        sys.exit(143)
""")


def test_sigterm_at_random_moments_of_a_write_loop_leaves_nothing_behind(tmp_path):
    """Kill a process that does nothing but atomic writes, 30 times at random moments."""
    rng = random.Random(0)
    for attempt in range(ATTEMPTS):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(folder)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
        left = sorted(p.name for p in folder.iterdir() if p.name not in ("report.json", "model"))
        assert left == [], f"attempt {attempt}: left behind {left}"


def test_outside_the_main_thread_only_the_mask_applies(tmp_path):
    """No handler can be set off the main thread; a hold there must still work and change nothing."""
    import threading

    before = signal.getsignal(signal.SIGTERM)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with atomic.replacing(Path(tmp_path) / "f.txt") as tmp:
                tmp.write_text("ok")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == []
    assert (tmp_path / "f.txt").read_text() == "ok"
    assert signal.getsignal(signal.SIGTERM) == before

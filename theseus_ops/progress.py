"""Throttled progress lines for long loops, through ``logging`` (Airflow task logs) or a callback (the CLI).

Why throttled: a line per step floods a task log, none at all leaves it empty for minutes. A loop
reports its first and last step, every tenth of the way, and at least every ``every_s`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Ticker:
    """Decides when step ``i`` of ``total`` (1-based) is worth a line; ``elapsed`` is seconds since start."""

    def __init__(self, total: int, every_s: float = 30.0, fraction: float = 0.1) -> None:
        self.total = max(1, int(total))
        self.every_s = every_s
        self.stride = max(1, round(self.total * fraction))
        self.started = time.perf_counter()
        self._last = self.started

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def due(self, i: int) -> bool:
        now = time.perf_counter()
        if i in (1, self.total) or i % self.stride == 0 or now - self._last >= self.every_s:
            self._last = now
            return True
        return False

    def tick(self, i: int, report: Callable[[str], None] | None, what: str) -> None:
        """Call ``report`` with ``"<what> <i>/<total> (<elapsed>s)"`` when step ``i`` is due."""
        if report is not None and self.due(i):
            report(f"{what} {i}/{self.total} ({self.elapsed:.1f}s)")


def resident_gib() -> float | None:
    """This process's resident memory in GiB (Linux ``/proc``), or None where it cannot be read.

    Why in progress lines: on a large pair, memory, not time, is what ends a prepare; a task log that
    shows it growing phase by phase says which phase to look at (docs/memory.md gives the terms).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_note() -> str:
    """``", 3.4 GiB resident"`` for a progress line, or nothing where memory cannot be read."""
    gib = resident_gib()
    return "" if gib is None else f", {gib:.1f} GiB resident"

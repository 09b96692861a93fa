"""Peak memory of a ``theseus-ops prepare``, phase by phase: RSS sampled beside the progress lines.

Run from the repository root, e.g. on the real SmolLM2 fixtures (``python -m theseus_ops.demo.real``):
    R=.theseus/real/<hash>
    .venv/bin/python benchmarks/prepare_memory.py --out /tmp/mem.json -- \\
        --source-base $R/models/smollm2/v1 --target-base $R/models/smollm2/v2-perm \\
        --calibration $R/calibration/smollm2.safetensors --max-rows 48 --device cpu

Everything after ``--`` goes to ``prepare`` (``--out`` is added: a scratch file). The process's resident
set is read from /proc every ``--interval`` seconds; each progress line opens a phase, and the table
gives each phase's peak. ``maps_bytes`` (the alignment's size, 4·M) is printed beside it, so the
measurement can be set against the formula of docs/memory.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def measure(prepare_args: list[str], interval: float, keep: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "alignment.safetensors"
        cmd = [str(Path(sys.executable).parent / "theseus-ops"), "prepare", *prepare_args, "--out", str(out)]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        lines: list[tuple[float, str]] = [(0.0, "start")]
        samples: list[tuple[float, int]] = []

        def read_progress() -> None:
            for line in proc.stderr:
                lines.append((time.perf_counter() - started, line.rstrip()))

        reader = threading.Thread(target=read_progress, daemon=True)
        reader.start()
        while proc.poll() is None:
            rss = _rss_bytes(proc.pid)
            if rss is not None:
                samples.append((time.perf_counter() - started, rss))
            time.sleep(interval)
        reader.join()
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"prepare_memory: prepare failed (rc {proc.returncode}): {lines[-1][1]}")
        maps_bytes = out.stat().st_size
        if keep is not None:  # to set two versions' maps side by side
            shutil.copyfile(out, keep)
    phases = []
    for i, (t, line) in enumerate(lines):
        end = lines[i + 1][0] if i + 1 < len(lines) else float("inf")
        inside = [rss for s, rss in samples if t <= s < end]
        if inside:
            phases.append({"t": round(t, 1), "line": line[:100], "peak_gib": round(max(inside) / 2**30, 2)})
    return {"command": cmd[1:], "wall_s": round(wall, 1), "peak_gib": round(max(r for _, r in samples) / 2**30, 2),
            "maps_bytes": maps_bytes, "phases": phases}


def print_phases(result: dict) -> None:
    """Each phase whose peak differs from the one before it (so the table stays short), with its opening line."""
    last = None
    for phase in result["phases"]:
        if phase["peak_gib"] != last:
            print(f"{phase['t']:8.1f} s  {phase['peak_gib']:6.2f} GiB  {phase['line']}")
            last = phase["peak_gib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    parser.add_argument("--out", default="benchmarks/results/prepare_memory.json")
    parser.add_argument("--keep", type=Path, metavar="FILE", help="also keep the alignment there (to compare maps)")
    parser.add_argument("prepare_args", nargs=argparse.REMAINDER, help="-- then prepare's own arguments")
    args = parser.parse_args()
    prepare_args = args.prepare_args[1:] if args.prepare_args[:1] == ["--"] else args.prepare_args
    result = measure(prepare_args, args.interval, args.keep)
    print_phases(result)
    print(f"wall {result['wall_s']} s, peak {result['peak_gib']} GiB, maps {result['maps_bytes'] / 1e9:.2f} GB (4·M)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), **result}, indent=2))


if __name__ == "__main__":
    main()

"""α-sweep figures shared by the quality bench and the release summaries.

matplotlib is imported lazily with the Agg backend, so plotting works on headless workers and the
rest of the library never pays for the import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from theseus_ops.errors import InputError


@dataclass
class SweepPanel:
    """One task's panel: ``sweeps`` maps a method to its ``[{"alpha", metric: value}, ...]`` on val."""

    title: str
    sweeps: dict[str, list[dict]]
    reference: tuple[str, float] | None = None  # (label, value) drawn as a dashed line
    notes: list[str] = field(default_factory=list)


def sweep_figure(panels: list[SweepPanel], title: str, metric: str, path: Path) -> Path:
    """Save one PNG with a panel per task (metric in % against α, a line per method); returns ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise InputError("plots need matplotlib (pip install matplotlib), or run without plots") from exc
    if not panels:
        raise InputError(f"no α sweeps to plot for {title}")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for method, sweep in panel.sweeps.items():
            if sweep:
                ax.plot([s["alpha"] for s in sweep], [100 * s[metric] for s in sweep], marker="o", ms=3, label=method)
        if panel.reference is not None:
            label, value = panel.reference
            ax.axhline(100 * value, color="k", ls="--", lw=0.8, label=label)
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel("α")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"val {metric.replace('_', ' ')} %")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path

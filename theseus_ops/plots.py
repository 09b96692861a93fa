"""α-sweep figures shared by the quality bench and the release summaries.

matplotlib is imported lazily with the Agg backend, so plotting works on headless workers and the
rest of the library never pays for the import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from theseus_ops.errors import InputError
from theseus_ops.io.atomic import replacing


@dataclass
class SweepPanel:
    """One task's panel: ``sweeps`` maps a method to its ``[{"alpha", metric: value}, ...]`` on val."""

    title: str
    sweeps: dict[str, list[dict]]
    reference: tuple[str, float] | None = None  # (label, value) drawn as a dashed line
    notes: list[str] = field(default_factory=list)
    selected: tuple[str, float] | None = None  # (method, α) marked with a star; ("base", 0) marks the reference


def outcome_panel(outcome: dict) -> SweepPanel:
    """The panel of one workflow outcome: each method's val sweep, the target base, the selection starred."""
    methods = outcome.get("methods") or {}
    return SweepPanel(f"{outcome['task']} ({outcome['vector']})", {m: r.get("sweep") for m, r in methods.items()},
                      ("target base", outcome["base"]["val"][outcome["metric"]]),
                      selected=(outcome["selected"], float(outcome.get("selected_alpha") or 0.0)))


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
        _mark_selected(ax, panel, metric)
        ax.set_xlabel("α")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"val {metric.replace('_', ' ')} %")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        with replacing(path, ".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path


def _mark_selected(ax, panel: SweepPanel, metric: str) -> None:
    """A star on the selected method at its α (or on the base's line when the base was kept)."""
    if panel.selected is None:
        return
    method, alpha = panel.selected
    point = None
    if method == "base" and panel.reference is not None:
        point = (alpha, panel.reference[1])
    for s in panel.sweeps.get(method) or []:
        if s["alpha"] == alpha:
            point = (alpha, s[metric])
    if point is not None:
        ax.plot([point[0]], [100 * point[1]], marker="*", ms=14, color="gold", markeredgecolor="k", ls="none",
                label="selected", zorder=5)
        ax.set_title(f"{panel.title}\nselected: {method}" + ("" if method == "base" else f" at α {alpha:g}"),
                     fontsize=9)

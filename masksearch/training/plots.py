"""Training plots (matplotlib, headless): the SFT loss curve, per-round distillation curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_loss(history: Sequence[tuple[int, float]], path: str | Path, title: str = "SFT loss") -> Path:
    """Loss against optimizer step, written to ``path`` (PNG)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    steps = [s for s, _ in history]
    ax.plot(steps, [l for _, l in history], marker="o" if len(history) < 30 else None, lw=1.5)
    return _save(plt, fig, ax, path, "step", title)


def plot_rounds(curves: dict[str, Sequence[tuple[int, float]]], path: str | Path,
                title: str = "SFT loss per distillation round") -> Path:
    """One loss curve per round (label -> history), steps continued across rounds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=110)
    offset = 0
    for label, hist in curves.items():
        if not hist:
            continue
        ax.plot([offset + s for s, _ in hist], [l for _, l in hist], label=label, lw=1.5)
        offset += max(s for s, _ in hist)
    ax.legend(fontsize=8)
    return _save(plt, fig, ax, path, "step (cumulative)", title)


def _save(plt: Any, fig: Any, ax: Any, path: str | Path, xlabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("train loss (student turns only)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

"""Matplotlib figures of deferral curves (Agg backend: works without a display)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from uniroute_jax._src.persistence import write_atomic

COLOURS = {"ZeroRouter": "tab:gray", "UniRoute (K-Means)": "tab:blue", "UniRoute": "tab:blue",
           "UniRoute (LearnedMap)": "tab:purple", "K-NN": "tab:orange", "MLP (clairvoyant)": "tab:red",
           "MLP (retrained)": "tab:brown", "Oracle": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lays out, writes (creating the folder) and closes `fig`; returns the path."""
    fig.tight_layout()
    path = Path(path)
    # A unique temp file renamed over the target: an interrupted run never leaves half a PNG.
    with write_atomic(path, "wb") as f:
        fig.savefig(f, dpi=120, format=path.suffix.lstrip(".") or "png")
    _pyplot().close(fig)
    return path


def draw_curves(ax, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *, cost_norm: float = 1.0,
                points: tuple[np.ndarray, np.ndarray] | None = None, point_names: Sequence[str] | None = None) -> None:
    """Draws each `name -> (mean_cost [n], mean_quality [n])` curve, sorted by cost, on `ax`."""
    for name, (cost, quality) in curves.items():
        cost, quality = np.asarray(cost, float) / cost_norm, np.asarray(quality, float)
        keep = np.isfinite(cost) & np.isfinite(quality)
        order = np.argsort(cost[keep], kind="stable")
        ax.plot(cost[keep][order], quality[keep][order], color=COLOURS.get(name), label=name, lw=1.6)
    if points is not None:
        pc, pq = np.asarray(points[0], float) / cost_norm, np.asarray(points[1], float)
        ax.scatter(pc, pq, color="black", s=18, zorder=3, label="single LLMs")
        for name, x, y in zip(point_names or [], pc, pq):
            ax.annotate(name, (x, y), fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.grid(alpha=0.3)


def plot_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *,
                points: tuple[np.ndarray, np.ndarray] | None = None, point_names: Sequence[str] | None = None,
                title: str = "Deferral curve", xlabel: str = "mean cost per prompt",
                ylabel: str = "accuracy") -> Path:
    """Writes a one-panel PNG of deferral curves (and the pool's single models as dots)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    draw_curves(ax, curves, points=points, point_names=point_names)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)

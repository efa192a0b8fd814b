"""The pieces of a version's report: a compact loss curve and the PNG plot (matplotlib, Agg)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np


def compact_curve(values: Sequence[float], max_points: int = 500) -> list[list[float]]:
    """[[step, mean loss], ...] with at most ``max_points`` points (means over equal step windows)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return []
    edges = np.linspace(0, values.size, min(max_points, values.size) + 1).astype(int)
    return [[int(hi), float(values[lo:hi].mean())] for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def render_plot(curve: Sequence[Sequence[float]], metrics: Mapping[str, Mapping], title: str) -> bytes:
    """PNG: the training loss per step (left) and AP / AP50 of each evaluated model (right).

    metrics: label (e.g. "base", "served", "new") → {"AP": float | None, "AP50": float | None}.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100)
    ax_loss, ax_ap = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    if curve:
        steps, loss = zip(*curve)
        ax_loss.plot(steps, loss, color="tab:blue")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("loss")
    ax_loss.grid(alpha=0.3)
    labels = list(metrics)
    x = np.arange(len(labels))
    for offset, key, colour in ((-0.2, "AP", "tab:orange"), (0.2, "AP50", "tab:green")):
        heights = [float(metrics[k].get(key) or 0.0) for k in labels]
        bars = ax_ap.bar(x + offset, heights, 0.4, label=key, color=colour)
        ax_ap.bar_label(bars, fmt="%.2f", fontsize=8)
    ax_ap.set_xticks(x, labels)
    ax_ap.set_ylim(0, 1.05)
    ax_ap.set_title("held-out mask AP")
    ax_ap.legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()

"""Plots (matplotlib, imported lazily): head maps of a head list's detection scores, and reliability
diagrams of calibrated relevance."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..heads import HeadList

__all__ = ["plot_head_map", "plot_reliability"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'core-rerank[eval]'") from exc
    return plt


def plot_reliability(curves: dict[str, Sequence[Mapping]], path: str | Path, title: str = "") -> Path:
    """Reliability diagram: per named curve, the mean predicted relevance of each bin (x) against the
    fraction of its documents that are relevant (y), point size by count; the diagonal is perfect
    calibration. A bin is ``{"mean_p", "frac_relevant", "n"}``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, bins in curves.items():
        xs = [b["mean_p"] for b in bins]
        ys = [b["frac_relevant"] for b in bins]
        sizes = [12 + 60 * math.sqrt(b["n"] / max(c["n"] for c in bins)) for b in bins]
        ax.plot(xs, ys, marker="", linewidth=1.2)
        ax.scatter(xs, ys, s=sizes, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted relevance (bin mean)")
    ax.set_ylabel("fraction relevant")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_head_map(head_list: HeadList, path: str | Path, title: str | None = None) -> Path:
    """Write a PNG heat map of ``head_list.score_matrix`` (layers down, heads across); selected heads
    are outlined. Needs matplotlib (``pip install core-rerank[eval]``)."""
    if head_list.score_matrix is None:
        raise ValueError(f"the {head_list.describe()} has no score_matrix to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting head maps needs matplotlib: pip install 'core-rerank[eval]'") from exc
    grid = [[v if v is not None and not math.isnan(v) else float("nan") for v in row] for row in head_list.score_matrix]
    fig, ax = plt.subplots(figsize=(2 + 0.45 * head_list.num_heads, 1 + 0.22 * head_list.num_layers))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", origin="upper")
    for layer, head in head_list.heads:
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    label = "mean SCoRe" if head_list.method == "core" else "detection score"
    fig.colorbar(im, ax=ax, label=label)
    tau = f", tau={head_list.tau:g}" if head_list.tau is not None else ""
    ax.set_title(title or f"{head_list.model_id}: {head_list.method} k={head_list.k}{tau}", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

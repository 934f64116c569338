"""Head maps: a layer x head heat map of a head list's detection scores (matplotlib, imported lazily)."""

from __future__ import annotations

import math
from pathlib import Path

from ..heads import HeadList

__all__ = ["plot_head_map"]


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

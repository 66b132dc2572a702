"""Pictures of a grouping search: the chosen tree, and the task affinities per sharing location.

``draw_tree``: sharing locations from the input (bottom) to the heads (top); every group is a box
holding its tasks, joined to the group it splits from, so branches read like a dendrogram.
``draw_affinity``: one heat map per location (tasks x tasks, the affinity the search used).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def draw_tree(tree: Sequence[Sequence[Sequence[str]]], path: str, title: str = "") -> str:
    """A PNG of ``tree`` at ``path``."""
    depth = len(tree)
    tasks = [t for group in tree[-1] for t in group]
    x_of = {t: i for i, t in enumerate(tasks)}  # leaves in the order of the last partition
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(tasks), 1.2 + 0.9 * depth))
    centre = {}
    for d, groups in enumerate(tree):
        for group in groups:
            xs = [x_of[t] for t in group]
            centre[(d, tuple(group))] = x = float(np.mean(xs))
            ax.add_patch(plt.Rectangle((min(xs) - 0.4, d - 0.3), max(xs) - min(xs) + 0.8, 0.6,
                                       facecolor="#dce9f5", edgecolor="#2b5d8a"))
            ax.text(x, d, ",".join(group) if len(group) <= 3 else f"{len(group)} tasks",
                    ha="center", va="center", fontsize=8)
            if d > 0:  # join to the group of the location below that holds this one
                parent = next(g for g in tree[d - 1] if set(group) <= set(g))
                ax.plot([centre[(d - 1, tuple(parent))], x], [d - 0.7, d - 0.3], color="#2b5d8a")
    for t, x in x_of.items():
        ax.text(x, depth - 0.1, t, ha="center", va="bottom", fontsize=8, rotation=30)
    ax.set_xlim(-0.8, len(tasks) - 0.2)
    ax.set_ylim(-0.6, depth + 0.6)
    ax.set_yticks(range(depth), [f"location {d}" for d in range(depth)])
    ax.set_xticks([])
    ax.set_title(title or "task tree (input at the bottom, heads at the top)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_affinity(affinity: Mapping[str, Sequence[Sequence[float]]], tasks: Sequence[str], path: str,
                  title: str = "") -> str:
    """A PNG of one tasks x tasks heat map per sharing location (``affinity``: location -> matrix)."""
    locations = list(affinity)
    fig, axes = plt.subplots(1, len(locations), figsize=(0.8 + 3.4 * len(locations), 3.2), squeeze=False)
    fig.subplots_adjust(wspace=0.6)
    for ax, location in zip(axes[0], locations):
        values = np.asarray(affinity[location], dtype=float)
        image = ax.imshow(values, vmin=-1, vmax=1, cmap="RdBu_r")
        if len(tasks) <= 8:  # the numbers themselves, while they fit
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if abs(v) > 0.6 else "black")
        ax.set_xticks(range(len(tasks)), tasks, rotation=60, fontsize=7)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
        ax.set_title(f"location {location}", fontsize=8)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path

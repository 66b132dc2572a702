"""Edge labels derived from a label map, as the survey code derives PASCAL-Context's edge task.

Survey (Vandenhende et al., TPAMI 2021) code, PASCAL_MT: a pixel is an edge iff the
4-neighbour Laplacian of the context label map, sum(neighbours) - 4 * label, is non-zero
(borders reflected as OpenCV's default), i.e. both sides of a boundary (2 px wide); it then
thins the boundaries to 1 px with scikit-image's ``thin``. Here the thinning is Zhang & Suen's
algorithm ("A fast parallel algorithm for thinning digital patterns", CACM 1984), which can
differ from scikit-image's on a few junction pixels.
"""
from __future__ import annotations

import numpy as np


def label_edges(labels: np.ndarray, thin_edges: bool = True) -> np.ndarray:
    """{0, 1} float32 edges of a label map (the rule of the module docstring)."""
    x = labels.astype(np.int64)
    p = np.pad(x, 1, mode="reflect")  # numpy's "reflect" = OpenCV's BORDER_REFLECT_101
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * x
    edges = lap != 0
    return (thin(edges) if thin_edges else edges).astype(np.float32)


def thin(mask: np.ndarray) -> np.ndarray:
    """Zhang & Suen's thinning: peel boundary pixels in two alternating sub-iterations until
    none changes."""
    img = np.pad(mask.astype(np.uint8), 1)
    changed = True
    while changed:
        changed = False
        for first in (True, False):
            c = img[1:-1, 1:-1]  # a view: deletions apply in place
            ring = [img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:],  # P2..P5
                    img[2:, 1:-1], img[2:, :-2], img[1:-1, :-2], img[:-2, :-2]]  # P6..P9
            p2, p4, p6, p8 = ring[0], ring[2], ring[4], ring[6]
            b = sum(r.astype(np.int32) for r in ring)
            a = sum(((ring[i] == 0) & (ring[(i + 1) % 8] == 1)).astype(np.int32) for i in range(8))
            c1, c2 = (p2 & p4 & p6, p4 & p6 & p8) if first else (p2 & p4 & p8, p2 & p6 & p8)
            kill = (c == 1) & (b >= 2) & (b <= 6) & (a == 1) & (c1 == 0) & (c2 == 0)
            if kill.any():
                c[kill] = 0
                changed = True
    return img[1:-1, 1:-1].astype(bool)

"""FAFS's junction step: cluster the branches at a junction and widen the tree below it.

Fully-adaptive Feature Sharing (Lu, Kumar, Zhai, Cheng, Javidi, Feris, CVPR 2017,
arXiv:1611.05377, Sec. 3, top-down layer-wise widening; survey: Vandenhende et al., TPAMI 2021,
Sec. 2.2.4 and Fig. 5) grows
a tree top-down: all layers start shared; the junction at the active layer l has B branches (at
first one per task); their ``branch_affinity`` (``affinity.py``) is clustered into c groups by
spectral clustering for every c = 1..B, and the grouping minimising

    L(c) = (c - 1) * L0 * 2**p_l  +  lam * L_s(c)

is kept: the first term is the cost of c - 1 extra copies of layer l, L0 the unit cost of a branch
and p_l the number of pooling layers above l (a copy of a lower layer costs more); the second is
the separation cost L_s = (1/c) sum_k (1 - mean_{i in cluster k} min_{j in cluster k} A_b(i, j)).
Layer l is then split into c columns (``widen``) and the active layer moves one down; the search
stops when a junction keeps c = 1 or the bottom is reached.

Sources: the formulas as the FAFS authors' release computes them (github.com/luyongxi/deep_share,
``_find_partition`` in lib/solvers/classification_sw.py: complexity ``(C-1) * col_cost_at(l)``
with per-layer costs 2**p / 64 in lib/models/factory.py, separation as above including the
diagonal of A_b, spectral clustering with a precomputed affinity repeated 5 times keeping the
lowest L_s); the paper's full text was not at hand. Our deviations: the spectral clustering is our
own numpy implementation (Ng, Jordan & Weiss 2001 by default, not scikit-learn), deterministic
given ``seed``; ties in L pick the smaller c.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from orchestrator.grouping.trees import Partition, Tree, is_nested


def spectral_clusters(affinity: np.ndarray, c: int, seed: int = 0, method: str = "njw", n_init: int = 10,
                      max_iter: int = 300) -> np.ndarray:
    """int [B] cluster labels (0..c-1, numbered by first appearance) of a non-negative affinity.

    Normalised spectral clustering: M = D^-1/2 W D^-1/2 with W the symmetrised affinity (diagonal
    kept, as the FAFS release passes it to scikit-learn) and D its degrees; the c leading
    eigenvectors of M embed the branches; ``method="njw"`` scales each row to unit length (Ng,
    Jordan & Weiss 2001), ``method="rw"`` multiplies rows by D^-1/2 (the random-walk embedding of
    Shi & Malik that scikit-learn uses). k-means++ with ``n_init`` restarts from
    ``numpy.random.default_rng(seed)`` clusters the embedding; the lowest inertia wins. c = 1 and
    c = B are returned directly.
    """
    w = np.asarray(affinity, dtype=np.float64)
    b = w.shape[0] if w.ndim == 2 else 0
    if w.ndim != 2 or w.shape[1] != b or b < 1 or not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError(f"affinity must be a finite, non-negative square matrix, got shape {w.shape}")
    if not 1 <= c <= b:
        raise ValueError(f"c must be in [1, {b}], got {c}")
    if method not in ("njw", "rw"):
        raise ValueError(f"method must be 'njw' or 'rw', got {method!r}")
    if c == 1:
        return np.zeros(b, dtype=int)
    if c == b:
        return np.arange(b)
    w = (w + w.T) / 2.0
    deg = w.sum(axis=1)
    inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    _, vectors = np.linalg.eigh(inv_sqrt[:, None] * w * inv_sqrt[None, :])
    u = vectors[:, ::-1][:, :c]
    if method == "njw":
        norms = np.linalg.norm(u, axis=1, keepdims=True)
        u = np.where(norms > 0, u / np.where(norms > 0, norms, 1.0), 0.0)
    else:
        u = u * inv_sqrt[:, None]
    return _first_appearance(_kmeans(u, c, np.random.default_rng(seed), n_init, max_iter))


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, n_init: int, max_iter: int) -> np.ndarray:
    best, best_inertia = None, np.inf
    for _ in range(max(1, n_init)):
        centres = [x[rng.integers(len(x))]]
        for _ in range(1, k):  # k-means++ seeding
            d2 = ((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1).min(axis=1)
            total = d2.sum()
            centres.append(x[rng.choice(len(x), p=d2 / total)] if total > 0 else x[rng.integers(len(x))])
        centres = np.asarray(centres)
        labels = np.full(len(x), -1)
        for _ in range(max_iter):
            d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
            new = d2.argmin(axis=1)
            for j in range(k):  # an empty cluster takes the point farthest from its centre
                if not (new == j).any():
                    far = d2[np.arange(len(x)), new]
                    far[np.bincount(new, minlength=k)[new] <= 1] = -1.0  # never empty another
                    new[int(far.argmax())] = j
            if np.array_equal(new, labels):
                break
            labels = new
            centres = np.stack([x[labels == j].mean(axis=0) for j in range(k)])
        inertia = float(((x - centres[labels]) ** 2).sum())
        if inertia < best_inertia - 1e-12:
            best, best_inertia = labels, inertia
    return best


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    mapping = {}
    return np.array([mapping.setdefault(int(l), len(mapping)) for l in labels])


def separation_cost(branch_affinity: np.ndarray, labels: Sequence[int]) -> float:
    """FAFS's L_s = (1/c) sum_k (1 - mean_{i in k} min_{j in k} A_b(i, j)) over the c clusters.

    The inner min runs over j = i too, so a cluster of one branch costs 1 - A_b(i, i): 0 for a
    single-task branch, the branch's own dissimilarity otherwise (as in the release).
    """
    a = np.asarray(branch_affinity, dtype=np.float64)
    lab = np.asarray(labels)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or lab.shape != (a.shape[0],):
        raise ValueError(f"need a square [B, B] affinity and [B] labels, got {a.shape} and {lab.shape}")
    clusters = [np.flatnonzero(lab == k) for k in np.unique(lab)]
    return float(sum(1.0 - a[np.ix_(m, m)].min(axis=1).mean() for m in clusters) / len(clusters))


def split_junction(branch_affinity: np.ndarray, pooling_above: int, unit_cost: float, lam: float, seed: int = 0,
                   max_clusters: Optional[int] = None, restarts: int = 5,
                   method: str = "njw") -> Tuple[int, np.ndarray, np.ndarray]:
    """(c, labels [B], costs [C]): the number of clusters minimising FAFS's L(c) at a junction.

    L(c) = (c - 1) * unit_cost * 2**pooling_above + lam * separation_cost(A_b, labels_c) for
    c = 1..C, C = min(B, max_clusters) (the release caps c by the columns a layer may hold);
    costs[c - 1] = L(c). For 1 < c < B the labels are the lowest-L_s of ``restarts`` spectral
    clusterings with seeds seed, seed + 1, ... (the release repeats 5 times). Ties pick smaller c.

    Args:
        branch_affinity: [B, B] from ``affinity.branch_affinity``.
        pooling_above: p_l, the pooling layers above the layer being widened.
        unit_cost: L0, the cost of one branch (the release: 1/64 with p counted so that the top
            fully connected layers cost 1/64 and the first convolutions 32/64).
        lam: weight of the separation cost (the release's ``--split_thresh``, default 1.0).
    """
    a = np.asarray(branch_affinity, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"branch_affinity must be square [B, B], got {a.shape}")
    if pooling_above < 0 or unit_cost < 0 or lam < 0 or restarts < 1:
        raise ValueError("pooling_above, unit_cost and lam must be >= 0 and restarts >= 1")
    b = a.shape[0]
    top = b if max_clusters is None else max(1, min(b, int(max_clusters)))
    costs, options = np.zeros(top), []
    for c in range(1, top + 1):
        if c in (1, b):
            labels = spectral_clusters(a, c)
        else:
            trials = [spectral_clusters(a, c, seed + r, method) for r in range(restarts)]
            labels = min(trials, key=lambda lab: separation_cost(a, lab))  # min keeps the first tie
        options.append(labels)
        costs[c - 1] = (c - 1) * unit_cost * 2.0 ** pooling_above + lam * separation_cost(a, labels)
    best = int(np.argmin(costs))
    return best + 1, options[best], costs


def junction_branches(tree: Tree, location: int) -> List[Tuple[str, ...]]:
    """The branches meeting at ``location``'s junction: the groups at location + 1 (for the deepest
    location, the single tasks - their heads), in canonical order. ``labels`` of ``widen`` and the
    rows of ``branch_affinity`` follow this order."""
    _check(tree, location)
    if location == len(tree) - 1:
        return [(t,) for g in tree[-1] for t in g]
    return list(tree[location + 1])


def widen(tree_so_far: Tree, location: int, labels: Sequence[int]) -> Tree:
    """The tree after FAFS widens ``location``: branches with the same label share it, others not.

    Every group at ``location`` is split into the unions of its branches (``junction_branches``)
    by label; a label never joins branches from different groups, so the new tree refines the old
    one. Deeper groups are split along the new groups too (a no-op for a nested tree, whose deeper
    groups each lie inside one branch); shallower locations are unchanged, so the clusters become
    separate branches from ``location`` to the top. Canonical order: the tasks as they appear in
    the shallowest partition.
    """
    branches = junction_branches(tree_so_far, location)
    lab = list(labels)
    if len(lab) != len(branches):
        raise ValueError(f"{len(lab)} labels for {len(branches)} branches at location {location}")
    position = {t: i for i, t in enumerate(t for g in tree_so_far[0] for t in g)}
    cluster_of = {t: lab[k] for k, branch in enumerate(branches) for t in branch}
    new_groups = [tuple(t for t in g if cluster_of[t] == c) for g in tree_so_far[location]
                  for c in dict.fromkeys(cluster_of[t] for t in g)]
    out = list(tree_so_far[:location]) + [_canonical(new_groups, position)]
    for part in tree_so_far[location + 1:]:
        pieces = [tuple(t for t in h if t in set(g)) for h in part for g in new_groups]
        out.append(_canonical([p for p in pieces if p], position))
    return tuple(_canonical(p, position) if d < location else p for d, p in enumerate(out))


def _canonical(groups, position) -> Partition:
    ordered = [tuple(sorted(g, key=position.__getitem__)) for g in groups]
    return tuple(sorted(ordered, key=lambda g: position[g[0]]))


def _check(tree: Tree, location: int) -> None:
    if not is_nested(tree):
        raise ValueError(f"not a nested tree: {tree}")
    if not 0 <= location < len(tree):
        raise ValueError(f"location must be in [0, {len(tree)}), got {location}")

"""Task affinities for the two tree searches: RSA (Branched Multi-Task Networks) and FAFS.

Branched Multi-Task Networks (Vandenhende, Georgoulis, De Brabandere, Van Gool, BMVC 2020,
arXiv:1904.02920, Sec. 3), after Dwivedi & Roig's representation similarity analysis (CVPR 2019):
every task has a trained single-task network; at each candidate sharing location its features of
the same K held-out images give a K x K representation dissimilarity matrix (RDM, ``rdm``), and the
affinity of two tasks at that location is the Spearman rank correlation of the upper triangles of
their RDMs (``rsa_affinity``). The survey (Vandenhende et al., TPAMI 2021, Sec. 2.2.4) summarises it
the same way. The tree search uses the dissimilarity ``1 - affinity``.

Fully-adaptive Feature Sharing (FAFS; Lu, Kumar, Zhai, Cheng, Javidi, Feris, CVPR 2017,
arXiv:1611.05377, Sec. 3, grouping by concurrently simple or difficult examples): with
m_i^n = |p_i^n - g_i^n| the error margin of example n for task i, the indicator
e_i^n = 1[m_i^n >= E{m_i}] marks it difficult (``difficult``). The affinity of two tasks is
A(i, j) = P(e_i = 1, e_j = 1) + P(e_i = 0, e_j = 0) = E{e_i e_j + (1 - e_i)(1 - e_j)}
(``cooccurrence``), estimated during training as an exponentially decaying average over
mini-batches (``AffinityEMA``). The affinity of two branches k, l is the mean over k's tasks of
their smallest affinity to l's tasks, symmetrised (``branch_affinity``).

Sources used here: the FAFS authors' release (github.com/luyongxi/deep_share,
lib/solvers/classification_sw.py) and a public note restating the paper's equations; neither
paper's full text was at hand (section numbers are from memory), so every rule below that comes
from the release says so.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy.stats import rankdata


def rdm(features: np.ndarray) -> np.ndarray:
    """[K, K] representation dissimilarity matrix: 1 - Pearson correlation of two images' features.

    Args:
        features: [K, ...] one row of features per image (trailing axes are flattened, e.g. a
            [K, C, H, W] feature map), the same K images for every task.

    Entries lie in [0, 2]; the diagonal is 0. A constant feature vector has no defined
    correlation; here it counts as uncorrelated with every other image (dissimilarity 1, also
    between two constant images) - our choice, it neither rewards nor penalises the image in the
    rank correlation that follows. A vector counts as constant when its centred norm is at most
    1e-12 times its norm (float rounding of a mean).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"rdm needs features of shape [K >= 2, F...], got {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if not np.all(np.isfinite(x)):
        raise ValueError("rdm: features contain NaN or inf")
    centred = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    constant = norms <= 1e-12 * np.maximum(np.linalg.norm(x, axis=1), 1e-300)
    unit = np.zeros_like(centred)
    unit[~constant] = centred[~constant] / norms[~constant, None]
    corr = np.clip(unit @ unit.T, -1.0, 1.0)  # constant rows are zero vectors: correlation 0
    out = 1.0 - (corr + corr.T) / 2.0
    np.fill_diagonal(out, 0.0)
    return out


def rsa_affinity(rdms: np.ndarray) -> np.ndarray:
    """[T, T] task affinity at one location: Spearman correlation of the tasks' RDM upper triangles.

    Args:
        rdms: [T, K, K] one RDM per task, the same K images in the same order (K >= 3).

    Only the strict upper triangle (offset k = 1) enters, as in RSA. Spearman's rho is the
    Pearson correlation of the ranks, ties getting their average rank (scipy's ``rankdata``). A
    task whose upper triangle is constant has no ranking; its affinity to the others is set to 0
    (our choice). The diagonal is 1 and the result symmetric.
    """
    r = np.asarray(rdms, dtype=np.float64)
    if r.ndim != 3 or r.shape[1] != r.shape[2] or r.shape[1] < 3:
        raise ValueError(f"rsa_affinity needs rdms of shape [T, K, K] with K >= 3, got {r.shape}")
    rows, cols = np.triu_indices(r.shape[1], k=1)
    upper = r[:, rows, cols]
    if not np.all(np.isfinite(upper)):
        raise ValueError("rsa_affinity: RDMs contain NaN or inf")
    ranks = rankdata(upper, axis=1)
    ranks -= ranks.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(ranks, axis=1)
    flat = norms <= 1e-12 * upper.shape[1]
    unit = np.zeros_like(ranks)
    unit[~flat] = ranks[~flat] / norms[~flat, None]
    out = np.clip(unit @ unit.T, -1.0, 1.0)
    out = (out + out.T) / 2.0
    np.fill_diagonal(out, 1.0)
    return out


def difficult(errors: np.ndarray, means: np.ndarray, strict: bool = False) -> np.ndarray:
    """bool [K, T]: example n is difficult for task i when its error margin reaches the mean.

    FAFS's rule is e_i^n = 1[m_i^n >= E{m_i}] with m the error margin (for a binary attribute,
    |predicted probability - label|), and the mean E{m_i} is the running mean of the margins seen
    so far in training (in the release: over earlier mini-batches, before the current one is
    added). There is no extra offset; ``strict=True`` uses > instead of >= (an option, not FAFS).
    A NaN error (no label) is never difficult; callers that track missing labels pass them as NaN
    to ``AffinityEMA`` which leaves them out.

    Args:
        errors: [K, T] per-example, per-task error margins (any loss-like score: higher = worse).
        means: [T] the running mean error of every task.
    """
    e = np.asarray(errors, dtype=np.float64)
    m = np.asarray(means, dtype=np.float64)
    if e.ndim != 2 or m.shape != (e.shape[1],):
        raise ValueError(f"difficult needs errors [K, T] and means [T], got {e.shape} and {m.shape}")
    with np.errstate(invalid="ignore"):
        return e > m if strict else e >= m


def cooccurrence(difficult: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """[T, T] FAFS task affinity of one batch: P(both difficult) + P(both easy) over the examples.

    Args:
        difficult: bool [K, T].
        valid: optional bool [K, T], False where task i has no label for example n; a pair (i, j)
            is then averaged over the examples labelled for both, and is NaN if there are none.
    """
    d = np.asarray(difficult, dtype=bool)
    if d.ndim != 2 or d.shape[0] < 1:
        raise ValueError(f"cooccurrence needs a bool matrix [K >= 1, T], got {d.shape}")
    v = np.ones_like(d, dtype=np.float64) if valid is None else np.asarray(valid, dtype=np.float64)
    if v.shape != d.shape:
        raise ValueError(f"valid has shape {v.shape}, difficult has {d.shape}")
    hard = d * v
    easy = (1.0 - d) * v
    counts = v.T @ v
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (hard.T @ hard + easy.T @ easy) / np.maximum(counts, 1.0), np.nan)


class AffinityEMA:
    """FAFS's running estimates of the mean error margins and of the task affinity.

    Every ``update(errors)`` with a batch's [K, T] error margins (1) marks the difficult examples
    against the running mean margins from the batches before it (``difficult``), (2) folds the
    batch's ``cooccurrence`` and its mean margins into exponentially decaying averages:
    S <- decay * S + x, W <- decay * W + 1, estimate = S / W. Dividing by W (the sum of the
    weights) makes the estimate an average from the first batch on; this is how the authors'
    release (deep_share, ``_update_error_data``) accumulates, with decay 0.99 as the default of its
    ``--error_decay_factor`` (0.95 in its ``ModelParameter``). Each batch counts once, whatever K.

    Deviations, all ours: for the very first batch there is no running mean yet, so the batch's
    own mean is the threshold (the release starts the mean at 0, which marks every example of the
    first batch difficult). NaN errors are missing labels: left out of the means and of every pair
    they touch, whose weights then decay without a new term. ``threshold="batch"`` compares every
    batch with its own mean instead of the running one: for updates far apart in training (once
    per epoch), where the running mean of earlier, larger errors would mark every example easy.
    """

    def __init__(self, num_tasks: int, decay: float = 0.99, strict: bool = False, threshold: str = "running"):
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay} (FAFS release: 0.99)")
        if threshold not in ("running", "batch"):
            raise ValueError(f"threshold must be 'running' (the release) or 'batch', got {threshold!r}")
        self.num_tasks, self.decay, self.strict, self.threshold = num_tasks, float(decay), strict, threshold
        self._mean_sum = np.zeros(num_tasks)
        self._mean_w = np.zeros(num_tasks)
        self._aff_sum = np.zeros((num_tasks, num_tasks))
        self._aff_w = np.zeros((num_tasks, num_tasks))
        self.batches = 0

    def update(self, errors: np.ndarray) -> np.ndarray:
        """Fold in one batch of [K, T] error margins; return its bool [K, T] difficult matrix."""
        e = np.asarray(errors, dtype=np.float64)
        if e.ndim != 2 or e.shape[1] != self.num_tasks or e.shape[0] < 1:
            raise ValueError(f"update needs errors [K >= 1, {self.num_tasks}], got {e.shape}")
        valid = ~np.isnan(e)
        counts = valid.sum(axis=0)
        batch_mean = np.where(counts > 0, np.nansum(e, axis=0) / np.maximum(counts, 1), 0.0)
        seen = (self._mean_w > 0) & (self.threshold == "running")
        threshold = np.where(seen, self._mean_sum / np.where(seen, self._mean_w, 1.0), batch_mean)
        hard = difficult(e, threshold, self.strict) & valid
        co = cooccurrence(hard, valid)
        observed = ~np.isnan(co)
        self._aff_sum = self.decay * self._aff_sum + np.where(observed, co, 0.0)
        self._aff_w = self.decay * self._aff_w + observed
        has = counts > 0
        self._mean_sum = self.decay * self._mean_sum + np.where(has, batch_mean, 0.0)
        self._mean_w = self.decay * self._mean_w + has
        self.batches += 1
        return hard

    @property
    def mean_error(self) -> np.ndarray:
        """[T] running mean error margin (NaN for a task never labelled)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self._mean_w > 0, self._mean_sum / np.maximum(self._mean_w, 1e-300), np.nan)

    @property
    def affinity(self) -> np.ndarray:
        """[T, T] running task affinity A(i, j) (NaN for a pair never observed together)."""
        if self.batches == 0:
            raise ValueError("AffinityEMA.affinity: no batch has been added yet")
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self._aff_w > 0, self._aff_sum / np.maximum(self._aff_w, 1e-300), np.nan)


def branch_affinity(task_affinity: np.ndarray, branches: Sequence[Sequence[int]]) -> np.ndarray:
    """[B, B] FAFS branch affinity at a junction.

    With directed affinity Ã(k, l) = mean_{i in branch k} min_{j in branch l} A(i, j), the branch
    affinity is A_b(k, l) = (Ã(k, l) + Ã(l, k)) / 2. The paper defines it between two branches;
    the diagonal uses the same formula with k = l (the release does so), which is 1 for a
    single-task branch and the branch's own cohesion otherwise - ``separation_cost`` reads it.

    Args:
        task_affinity: [T, T] task affinities (e.g. ``AffinityEMA.affinity``).
        branches: the tasks (indices into ``task_affinity``) above each branch of the junction;
            non-empty and disjoint.
    """
    a = np.asarray(task_affinity, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"task_affinity must be square, got {a.shape}")
    groups = [list(map(int, b)) for b in branches]
    flat = [i for g in groups for i in g]
    if not groups or any(not g for g in groups) or len(set(flat)) != len(flat):
        raise ValueError(f"branches must be non-empty, disjoint lists of task indices, got {branches}")
    if min(flat) < 0 or max(flat) >= a.shape[0]:
        raise ValueError(f"branch task indices must be in [0, {a.shape[0]}), got {branches}")
    directed = np.array([[a[np.ix_(k, l)].min(axis=1).mean() for l in groups] for k in groups])
    return (directed + directed.T) / 2.0

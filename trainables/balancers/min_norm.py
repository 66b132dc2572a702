"""Min-norm point in the convex hull of task gradients, from their Gram matrix.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018, Sec. 3.2:
    min_{alpha in simplex} || sum_t alpha_t g_t ||^2 = alpha^T M alpha,   M = G G^T.
Two vectors have the closed form of their Algorithm 1; more use Frank-Wolfe (their
Algorithm 2) with the exact line search of Algorithm 1 on each step (plus away steps by default, see ``frank_wolfe``). Everything is computed
from M only, in float64 on the CPU (M is T x T, so this is one small host transfer per step).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def line_search(vv: float, vu: float, uu: float) -> float:
    """gamma in [0, 1] minimising ||gamma * v + (1 - gamma) * u||^2 (Algorithm 1).

    Args: vv = v.v, vu = v.u, uu = u.u.
    """
    if vu >= vv:  # moving from v towards u never shortens v
        return 1.0
    if vu >= uu:  # ... and symmetrically for u
        return 0.0
    # d/dgamma = 0:  gamma = (u - v).u / ||v - u||^2   (the denominator is > 0 here)
    return (uu - vu) / (vv + uu - 2.0 * vu)


def frank_wolfe(m: np.ndarray, max_iter: int = 250, tol: float = 1e-8, away_steps: bool = True) -> np.ndarray:
    """Min-norm weights of the Gram matrix ``m`` [T, T] by Frank-Wolfe (Algorithm 2).

    Algorithm 2 moves towards the vertex g_r with the smallest (M alpha)_r, with the exact line
    search of Algorithm 1. Plain FW converges as O(1/k) (at 250 iterations the weights can
    still be ~1e-2 off); with ``away_steps`` (Lacoste-Julien & Jaggi, NeurIPS 2015) it may also
    move weight away from the worst active vertex, which converges linearly on this problem.
    Stops when the FW duality gap is below ``tol`` times the current squared norm.
    """
    t = m.shape[0]
    alpha = np.full(t, 1.0 / t)  # the paper's initialisation
    for _ in range(max_iter):
        m_alpha = m @ alpha
        vv = float(alpha @ m_alpha)
        r = int(np.argmin(m_alpha))  # the vertex most aligned against the current point
        gap = vv - float(m_alpha[r])  # FW duality gap / 2: f(alpha) - f(opt) <= 2 * gap
        if gap <= tol * max(vv, 1e-300):
            break
        direction = -alpha.copy()
        direction[r] += 1.0
        max_step = 1.0
        if away_steps:
            active = np.flatnonzero(alpha > 0)
            a = int(active[np.argmax(m_alpha[active])])
            if float(m_alpha[a]) - vv > gap and alpha[a] < 1.0:  # away step is steeper
                direction = alpha.copy()
                direction[a] -= 1.0
                max_step = alpha[a] / (1.0 - alpha[a])
        # exact line search of the quadratic along the direction (Algorithm 1 in closed form)
        curvature = float(direction @ m @ direction)
        slope = float(direction @ m_alpha)
        step = max_step if curvature <= 0 else min(max(-slope / curvature, 0.0), max_step)
        alpha = alpha + step * direction
        alpha[alpha < 1e-15] = 0.0
        alpha /= alpha.sum()
    return alpha


def min_norm_weights(gram: Tensor, max_iter: int = 250, tol: float = 1e-8, away_steps: bool = True) -> Tensor:
    """alpha on the simplex minimising alpha^T gram alpha: closed form for T <= 2, else FW."""
    m = gram.detach().to("cpu", torch.float64).numpy()
    t = m.shape[0]
    if t == 1:
        alpha = np.ones(1)
    elif t == 2:
        gamma = line_search(m[0, 0], m[0, 1], m[1, 1])
        alpha = np.array([gamma, 1.0 - gamma])
    else:
        alpha = frank_wolfe(m, max_iter, tol, away_steps)
    return torch.as_tensor(alpha, dtype=gram.dtype, device=gram.device)

"""CAGrad: conflict-averse gradient descent.

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021, Eq. (3) and Algorithm 1. With g_0 = mean_i g_i, the update d solves
    max_d min_i <g_i, d>   s.t.  ||d - g_0|| <= c ||g_0||,
through its dual over the simplex (phi = c^2 ||g_0||^2, g_w = sum_i w_i g_i):
    w* = argmin_{w in simplex}  F(w) = <g_w, g_0> + sqrt(phi) ||g_w||,
    d  = g_0 + sqrt(phi) / ||g_w*|| * g_w*.
At the optimum min_i <g_i, d> = F(w*) (strong duality), which the tests check; c = 0 gives
d = g_0. Everything is a function of the Gram matrix M = G G^T (F(w) = w^T M 1/T +
sqrt(phi) sqrt(w^T M w)), so the solver is a few T x T operations: projected gradient descent
on the simplex with backtracking (``solve_dual`` below) instead of the official code's SciPy
SLSQP call.

Hyper-parameters:
    c (float >= 0, default 0.5): radius of the trust region around g_0.
    rescale (bool, default False): divide d by 1 + c^2 as the official code's default
        ``rescale=1`` does (the paper's Algorithm 1 does not).
    max_iter (int >= 1, default 200), tol (float >= 0, default 1e-10): dual solver stopping.
Heads follow their own losses; absent tasks are left out of the step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import torch
from torch import Tensor

from trainables.balancers.base import Balancer, check_choice, check_number
from trainables.plugins import BalancerInfo
from trainables.registry import register_balancer


@dataclass(frozen=True)
class CAGradParams:
    """Hyper-parameters of ``cagrad`` (see the module docstring)."""

    c: float = 0.5
    rescale: bool = False
    max_iter: int = 200
    tol: float = 1e-10

    def __post_init__(self) -> None:
        check_number("cagrad", "c", self.c, lambda v: v >= 0, "a number >= 0")
        check_choice("cagrad", "rescale", self.rescale, (True, False))
        check_number("cagrad", "max_iter", self.max_iter, lambda v: v >= 1, "an int >= 1", integer=True)
        check_number("cagrad", "tol", self.tol, lambda v: v >= 0, "a number >= 0")


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {w >= 0, sum w = 1} (sort-based, Duchi et al. ICML 2008)."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    k = np.arange(1, len(v) + 1)
    rho = np.flatnonzero(u - cumulative / k > 0)[-1]
    return np.maximum(v - cumulative[rho] / (rho + 1), 0.0)


def solve_dual(m: np.ndarray, c: float, max_iter: int = 200, tol: float = 1e-10) -> Tuple[np.ndarray, float]:
    """(w*, F(w*)) of CAGrad's dual for the Gram matrix ``m``."""
    t = m.shape[0]
    b = m.mean(axis=1)  # b_i = <g_i, g_0>
    sqrt_phi = c * math.sqrt(max(float(b.mean()), 0.0))  # c ||g_0||

    def value(w):
        return float(w @ b) + sqrt_phi * math.sqrt(max(float(w @ m @ w), 0.0) + 1e-30)

    def gradient(w):
        return b + sqrt_phi * (m @ w) / math.sqrt(max(float(w @ m @ w), 0.0) + 1e-30)

    w = np.full(t, 1.0 / t)
    f = value(w)
    step = 1.0 / max(float(np.trace(m)), 1e-30)
    for _ in range(max_iter):
        g = gradient(w)
        while True:  # backtracking on the projection arc (sufficient decrease)
            candidate = project_simplex(w - step * g)
            f_new = value(candidate)
            if f_new <= f + g @ (candidate - w) + 0.5 / step * float((candidate - w) @ (candidate - w)) or step < 1e-30:
                break
            step *= 0.5
        moved = float(np.abs(candidate - w).sum())
        w, f = candidate, f_new
        step *= 2.0  # let the step grow again
        if moved < tol:
            break
    return w, f


@register_balancer("cagrad")
class CAGrad(Balancer):
    """Conflict-averse gradient descent on the shared parameters (Liu et al. NeurIPS 2021)."""

    Params = CAGradParams
    INFO = BalancerInfo(needs_task_grads=True, grad_target="params", backward_per_task=True)

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        self.register_buffer("last_weights", torch.full((len(self.task_names),), 1.0 / len(self.task_names)))

    def grad_weights(self, gram: Tensor, losses: Dict[str, Tensor]) -> Tensor:
        m = gram.detach().to("cpu", torch.float64).numpy()
        t = m.shape[0]
        p = self.params
        coef = np.full(t, 1.0 / t)  # g_0
        if p.c > 0:
            w, _ = solve_dual(m, p.c, p.max_iter, p.tol)
            gw_norm = math.sqrt(max(float(w @ m @ w), 0.0))
            if gw_norm > 0:  # d = g_0 + c ||g_0|| / ||g_w|| g_w, with ||g_0||^2 = mean(M)
                coef = coef + p.c * math.sqrt(max(float(m.mean()), 0.0)) / gw_norm * w
        if p.rescale:
            coef = coef / (1.0 + p.c**2)
        out = torch.as_tensor(coef, dtype=gram.dtype, device=gram.device)
        with torch.no_grad():
            idx = torch.tensor([self.task_names.index(n) for n in self.present(losses)], device=self.last_weights.device)
            self.last_weights.zero_()
            self.last_weights[idx] = out.to(self.last_weights)
        return out

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        return sum(losses.values())

    def current_weights(self) -> Dict[str, float]:
        """Coefficients of the last shared update d = sum_i c_i g_i."""
        return self.per_task(self.last_weights)

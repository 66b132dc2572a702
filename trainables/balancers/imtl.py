"""IMTL: impartial multi-task learning by loss scaling (IMTL-L) and gradient balance (IMTL-G).

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021.
    IMTL-L (Sec. 3.2): learnable scales s_t, every task minimises e^{s_t} L_t - s_t (so the
        scaled loss is driven towards 1 in value; the s_t are ``nn.Parameter``s that the train
        loop's optimiser updates).
    IMTL-G (Sec. 3.1): the shared update g = sum_t alpha_t g_t has equal projections onto every
        unit task gradient u_t = g_t / ||g_t||. With D = [g_1 - g_2, ..., g_1 - g_T] and
        U = [u_1 - u_2, ..., u_1 - u_T] (rows), the closed form is
            alpha_{2:T} = g_1 U^T (D U^T)^{-1},   alpha_1 = 1 - sum_{t>=2} alpha_t.
    IMTL (``mode="both"``, Algorithm 1): IMTL-G on the gradients of the scaled losses
        e^{s_t} L_t; the heads and the s_t follow the scaled losses.
All inner products come from the Gram matrix of the task gradients (``solve`` below).

Gradients (``target``): "representation" (default) uses the gradients w.r.t. the shared feature
z, as the paper's Algorithm 1 does to save computation; "params" uses all shared parameters.
Heads follow their own (for "both": scaled) losses; absent tasks are left out of the step.

Hyper-parameters:
    mode ("l" | "g" | "both", default "both"): IMTL-L, IMTL-G, or both (the paper's IMTL).
    target ("representation" | "params", default "representation"): see above ("g"/"both").
    init_log_scale (float, default 0.0): initial s_t ("l"/"both").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from trainables.balancers.base import Balancer, check_choice, check_number
from trainables.plugins import BalancerInfo
from trainables.registry import register_balancer


@dataclass(frozen=True)
class IMTLParams:
    """Hyper-parameters of ``imtl`` (see the module docstring)."""

    mode: str = "both"
    target: str = "representation"
    init_log_scale: float = 0.0

    def __post_init__(self) -> None:
        check_choice("imtl", "mode", self.mode, ("l", "g", "both"))
        check_choice("imtl", "target", self.target, ("representation", "params"))
        check_number("imtl", "init_log_scale", self.init_log_scale)


def solve(gram: np.ndarray) -> np.ndarray:
    """IMTL-G's alpha [T] from the Gram matrix M = G G^T of the task gradients."""
    t = gram.shape[0]
    if t == 1:
        return np.ones(1)
    norms = np.sqrt(np.clip(np.diag(gram), 1e-24, None))
    proj = gram / norms[None, :]  # proj[i, j] = g_i . u_j
    # b_j = g_1 . (u_1 - u_j);  A[i, j] = (g_1 - g_i) . (u_1 - u_j),  i, j >= 2
    b = proj[0, 0] - proj[0, 1:]
    a = proj[0, 0] - proj[0, 1:][None, :] - proj[1:, 0][:, None] + proj[1:, 1:]
    rest = np.linalg.lstsq(a.T, b, rcond=None)[0]  # the row vector b^T A^{-1}
    return np.concatenate([[1.0 - rest.sum()], rest])


@register_balancer("imtl")
class IMTL(Balancer):
    """Impartial MTL: IMTL-L loss scales and/or IMTL-G gradient balance (Liu et al. ICLR 2021)."""

    Params = IMTLParams

    @classmethod
    def info_for(cls, params: IMTLParams) -> BalancerInfo:
        if params.mode == "l":
            return BalancerInfo()
        return BalancerInfo(needs_task_grads=True, grad_target=params.target,
                            backward_per_task=params.target == "params")

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        self.mode = self.params.mode
        t = len(self.task_names)
        if self.mode != "g":
            self.log_scales = nn.Parameter(torch.full((t,), float(self.params.init_log_scale)))
        self.register_buffer("last_weights", torch.ones(t))

    def _scales(self, tasks: Sequence[str]) -> Tensor:
        idx = [self.task_names.index(t) for t in tasks]
        return torch.exp(self.log_scales[idx])

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        if self.mode == "g":
            return sum(losses.values())
        present = self.present(losses)
        idx = [self.task_names.index(t) for t in present]
        scales = self._scales(present)
        return sum(scales[k] * losses[t] - self.log_scales[i] for k, (t, i) in enumerate(zip(present, idx)))

    def grad_weights(self, gram: Tensor, losses: Dict[str, Tensor]) -> Tensor:
        present = self.present(losses)
        k = torch.ones(len(present), dtype=torch.float64)
        if self.mode == "both":  # gradients of the scaled losses e^s L: k_t g_t
            k = self._scales(present).detach().to("cpu", torch.float64)
        m = gram.detach().to("cpu", torch.float64)
        alpha = torch.from_numpy(solve((k[:, None] * m * k[None, :]).numpy()))
        coef = (alpha * k).to(gram.device, gram.dtype)
        with torch.no_grad():
            idx = torch.tensor([self.task_names.index(t) for t in present], device=self.last_weights.device)
            self.last_weights.zero_()
            self.last_weights[idx] = coef.to(self.last_weights)
        return coef

    def current_weights(self) -> Dict[str, float]:
        """Loss scales e^s ("l"), or the last shared-update coefficients ("g", "both")."""
        if self.mode == "l":
            w = torch.exp(self.log_scales.detach())
        else:
            w = self.last_weights
        return self.per_task(w)

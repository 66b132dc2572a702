"""PCGrad: project each task gradient onto the normal plane of the gradients it conflicts with.

Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning",
NeurIPS 2020, Algorithm 1. For every task i, g_i^PC starts as g_i; for the other tasks j in a
random order, if g_i^PC . g_j < 0 then g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j. The
shared update is sum_i g_i^PC (``reduction="sum"``, the paper) or its mean. For two tasks each
projected gradient is orthogonal to the other task's gradient whenever they conflicted, so
g_1^PC . g_2 >= 0 and g_2^PC . g_1 >= 0 (the paper's Theorem 1 setting).

Implementation: every g_i^PC is a linear combination C_i G of the original gradients, and every
inner product above is C_i M_j with M = G G^T, so the surgery runs on the T x T Gram matrix
(exact, and exact under data parallelism). The random order comes from the balancer's own
generator (checkpointed), so runs are reproducible and every DDP worker draws the same order.
Task-specific parameters follow their own losses; absent tasks are left out of the step.

Hyper-parameters:
    reduction ("sum" | "mean", default "sum").
    seed (int or None, default None): seed of the task-order generator; None takes the run
        context's seed (the trial's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from trainables.balancers.base import Balancer, check_choice, check_number
from trainables.plugins import BalancerInfo
from trainables.registry import register_balancer


@dataclass(frozen=True)
class PCGradParams:
    """Hyper-parameters of ``pcgrad`` (see the module docstring)."""

    reduction: str = "sum"
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        check_choice("pcgrad", "reduction", self.reduction, ("sum", "mean"))
        if self.seed is not None:
            check_number("pcgrad", "seed", self.seed, lambda v: v >= 0, "an int >= 0", integer=True)


def surgery_coefficients(gram: np.ndarray, orders: Sequence[Sequence[int]]) -> np.ndarray:
    """C [T, T] with g_i^PC = sum_k C[i, k] g_k; ``orders[i]`` is task i's order of the others."""
    t = gram.shape[0]
    coef = np.eye(t)
    for i in range(t):
        for j in orders[i]:
            dot = float(coef[i] @ gram[:, j])  # g_i^PC . g_j
            if dot < 0 and gram[j, j] > 0:
                coef[i, j] -= dot / gram[j, j]
    return coef


@register_balancer("pcgrad")
class PCGrad(Balancer):
    """Gradient surgery on the shared parameters (Yu et al. NeurIPS 2020)."""

    Params = PCGradParams
    INFO = BalancerInfo(needs_task_grads=True, grad_target="params", backward_per_task=True)

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        seed = self.params.seed if self.params.seed is not None else self.context.seed
        self.generator = torch.Generator().manual_seed(seed)

    def grad_weights(self, gram: Tensor, losses: Dict[str, Tensor]) -> Tensor:
        t = gram.shape[0]
        orders = []
        for i in range(t):
            perm = torch.randperm(t, generator=self.generator).tolist()
            orders.append([j for j in perm if j != i])
        coef = surgery_coefficients(gram.detach().to("cpu", torch.float64).numpy(), orders)
        c = coef.sum(axis=0) / (t if self.params.reduction == "mean" else 1)
        return torch.as_tensor(c, dtype=gram.dtype, device=gram.device)

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        return sum(losses.values())

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state) -> None:
        self.generator.set_state(state["generator"].cpu())

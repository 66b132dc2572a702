"""Uncertainty weighting: task losses weighted by learnt homoscedastic uncertainty.

Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
Geometry and Semantics", CVPR 2018; the survey's Eq. (6) (Vandenhende et al., TPAMI 2021):
    L = sum_i 1 / (2 sigma_i^2) * L_i + log sigma_i.
We learn s_i = log sigma_i^2 (stable, unconstrained), so each task contributes
    regression form (default, every task):   L_i / (2 exp(s_i)) + s_i / 2
    classification form (Kendall Eq. 10):    L_i / exp(s_i)     + s_i / 2
With the losses held fixed the minimiser is exp(s_i) = L_i (regression form) or 2 L_i
(classification form), i.e. sigma_i^2 tracks the task's loss level.

Choice: the common implementation (MTAN, Auto-Lambda: L / (2 exp(s)) + s / 2, s = log sigma^2) uses the regression
form for every task, including cross-entropy ones; so does the survey's Eq. 6 as printed. That
is the default; ``classification_tasks`` switches chosen tasks to the paper's classification form.

The s_i are ``nn.Parameter``s: the train loop's optimiser (same lr as the network) updates them,
and they checkpoint with the balancer. Tasks absent from a batch contribute nothing that step.

Hyper-parameters:
    init_log_var (float, default -0.5): initial s_i = log sigma_i^2 (MTAN's -0.5; Auto-Lambda
        uses -0.7; Kendall et al. do not state one).
    classification_tasks (list of task names, default []): tasks that use the classification
        form L / sigma^2 + log sigma.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import Tensor, nn

from trainables.balancers.base import Balancer, check_number
from trainables.registry import register_balancer


@dataclass(frozen=True)
class UncertaintyParams:
    """Hyper-parameters of ``uncertainty`` (see the module docstring)."""

    init_log_var: float = -0.5
    classification_tasks: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_number("uncertainty", "init_log_var", self.init_log_var)


@register_balancer("uncertainty")
class Uncertainty(Balancer):
    """Homoscedastic uncertainty weighting (Kendall et al. CVPR 2018; survey Eq. 6)."""

    Params = UncertaintyParams

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        p = self.params
        self._check_known(p.classification_tasks, "classification_tasks")
        self.log_vars = nn.Parameter(torch.full((len(self.task_names),), float(p.init_log_var)))
        # 1/2 for the regression form, 1 for the classification form
        scale = [1.0 if t in p.classification_tasks else 0.5 for t in self.task_names]
        self.register_buffer("precision_scale", torch.tensor(scale), persistent=False)

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        total = 0.0
        for i, task in enumerate(self.task_names):
            if task in losses:
                s = self.log_vars[i]
                total = total + self.precision_scale[i] * torch.exp(-s) * losses[task] + 0.5 * s
        return total

    def current_weights(self) -> Dict[str, float]:
        w = self.precision_scale * torch.exp(-self.log_vars.detach())
        return self.per_task(w)

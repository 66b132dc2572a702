"""Miraliev et al.: loss weights learnt with the network, one per loss objective.

Miraliev, Abdigapporov, Kakani & Kim, "Real-Time Memory Efficient Multitask Learning Model for
Autonomous Driving", IEEE Transactions on Intelligent Vehicles 9(1), 2024 (IAL's reference [23],
"Miraliev et al." in IAL's Tables I-VII). IAL (Sec. II) describes it as training "the loss
weights of both multiple tasks and objectives simultaneously" - every loss objective (e.g. a
segmentation task's Dice and IoU terms) has its own learnt weight - and counts it among the
loss-level methods (the same training time as UW, Table II) with no hyper-parameter to tune.

Implemented (loss level; the s_k are ``nn.Parameter``s the train loop's optimiser updates):
    L = sum_k exp(-s_k) L_k + s_k,      w_k = exp(-s_k) = 1 / sigma_k^2,
i.e. homoscedastic-uncertainty weights (Kendall et al. CVPR 2018) written as 2x Kendall's
L_k / (2 sigma_k^2) + log sigma_k, so that the weights start at 1 (s_k = 0) - uniform weighting
at the start of training. With the losses held fixed the minimiser is w_k = 1 / L_k.

Not found in the available sources (the paper's text and code are not public to us; only its
abstract and IAL's one-paragraph description were): the exact form of the learnt weights and
their regulariser, their initial value and learning rate. We take Kendall's form, the most common
way to learn loss weights without their collapsing to 0, initialised at 1 and trained at the
network's learning rate. Deviation: this project's task contract gives one loss per task (a
task's own terms, and its deep-supervision levels, are summed before the balancer sees them), so every task is one
objective here and the method reduces to learnt per-task weights; it is then twice
``uncertainty``'s regression form with ``init_log_var=0`` (the same minimiser sigma^2 = L; the
weights are 1 / sigma^2 instead of 1 / (2 sigma^2), i.e. the loss scale differs by 2).
Auxiliary setting: IAL lists the method only in its Normal (multi-task) setting and the method
defines no primary task, so every task is weighted alike. Tasks absent from a batch contribute
nothing that step.

Hyper-parameters:
    init_log_weight (float, default 0.0): initial s_k (w_k = exp(-s_k) = 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
from torch import Tensor, nn

from trainables.balancers.base import Balancer, check_number
from trainables.registry import register_balancer


@dataclass(frozen=True)
class MiralievParams:
    """Hyper-parameters of ``miraliev`` (see the module docstring)."""

    init_log_weight: float = 0.0

    def __post_init__(self) -> None:
        check_number("miraliev", "init_log_weight", self.init_log_weight)


@register_balancer("miraliev")
class Miraliev(Balancer):
    """Learnt per-objective loss weights (Miraliev et al. T-IV 2024; IAL's [23])."""

    Params = MiralievParams

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        self.log_weights = nn.Parameter(torch.full((len(self.task_names),), float(self.params.init_log_weight)))

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        total = 0.0
        for i, task in enumerate(self.task_names):
            if task in losses:
                s = self.log_weights[i]
                total = total + torch.exp(-s) * losses[task] + s
        return total

    def current_weights(self) -> Dict[str, float]:
        w = torch.exp(-self.log_weights.detach())
        return self.per_task(w)

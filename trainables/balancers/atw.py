"""ATW: adaptive task weighting - uncertainty weights modulated by short- and long-term loss rates.

Chen, Zheng, Huang, Bai, Zhu & Ma, "UMT-Net: A Uniform Multi-Task Network With Adaptive Task
Weighting", IEEE Transactions on Intelligent Vehicles 9(1), 2024 (IAL's reference [24], "ATW" in
IAL's Tables I-VII). What the sources say: ATW "accounts for both short-term variation and
long-term statistics of task losses, leading to a more stable training process" (abstract); it
is "based on Uncertainty Weight" and "considers the long-term rate of change in the loss of each
task to balance the training speed across different tasks" (IAL Sec. II); loss level (UW's
training time, IAL Table II), no hyper-parameter tuned (IAL Sec. IV-B).

Implemented (loss level; the s_t are ``nn.Parameter``s, the rate weights are epoch state):
    L = sum_t lambda_t (L_t / (2 exp(s_t)) + s_t / 2)                  (UW, s_t = log sigma_t^2)
    lambda_t(e) = T softmax_t(r_t(e-1) / temperature),  T = number of tasks,
    r_t(e-1) = (r_short + r_long) / 2,
    r_short = L_t(e-1) / L_t(e-2)      (short-term variation, DWA's rate),
    r_long  = L_t(e-1) / L_t(0)        (long-term rate of change since the first epoch),
with L_t(e) the task's mean training loss of epoch e (``on_epoch_end``); lambda = 1 for the
first two epochs. A task whose loss falls more slowly, over the last epoch or since the start,
gets a larger lambda. lambda multiplies the whole UW term: multiplying only L_t / (2 sigma^2)
would be undone by sigma (the minimiser moves to sigma^2 = lambda L_t), so lambda would have no
effect at equilibrium.

Not found in the available sources (UMT-Net's text and code are not public to us; only its
abstract and IAL's description were): the equations of ATW. Our choices: epoch means as the
"statistics" (as DWA and the MTAN code); the long-term rate relative to the first epoch (as
GradNorm's inverse training rate); the two rates averaged; DWA's softmax with its temperature 2
to turn rates into weights summing to T; UW's regression form for every task, s_t initialised
at -0.5 (as ``uncertainty``). A task without labelled batches in an epoch keeps rate 1 for
the rates that need it; its L(0) is its first epoch with labels. Auxiliary setting: IAL lists ATW
only in its Normal (multi-task) setting and the method defines no primary task. Tasks absent from
a batch contribute nothing that step.

Hyper-parameters:
    temperature (float > 0, default 2.0): the softmax temperature (DWA's value).
    init_log_var (float, default -0.5): initial s_t.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
from torch import Tensor, nn

from trainables.balancers.base import Balancer, check_number
from trainables.plugins import BalancerInfo
from trainables.registry import register_balancer


@dataclass(frozen=True)
class ATWParams:
    """Hyper-parameters of ``atw`` (see the module docstring)."""

    temperature: float = 2.0
    init_log_var: float = -0.5

    def __post_init__(self) -> None:
        check_number("atw", "temperature", self.temperature, lambda v: v > 0, "a number > 0")
        check_number("atw", "init_log_var", self.init_log_var)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den where both are > 0, else 1 (no information)."""
    return torch.where((num > 0) & (den > 0), num / den.clamp_min(1e-300), torch.ones_like(num))


@register_balancer("atw")
class ATW(Balancer):
    """Adaptive task weighting (UMT-Net, Chen et al. T-IV 2024; IAL's [24])."""

    Params = ATWParams
    INFO = BalancerInfo(needs_epoch_losses=True)

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        t = len(self.task_names)
        self.log_vars = nn.Parameter(torch.full((t,), float(self.params.init_log_var)))
        self.register_buffer("first", torch.zeros(t, dtype=torch.float64))        # L(0) per task
        self.register_buffer("history", torch.zeros(2, t, dtype=torch.float64))   # L(e-2), L(e-1)
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("rate_weights", torch.ones(t))                       # lambda

    def on_epoch_end(self, epoch: int, mean_losses: Dict[str, float]) -> None:
        latest = torch.tensor([float(mean_losses.get(t, 0.0)) for t in self.task_names],
                              dtype=torch.float64, device=self.first.device)
        self.first.copy_(torch.where(self.first > 0, self.first, latest))
        self.history.copy_(torch.stack([self.history[1], latest]))
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:
            before, last = self.history[0], self.history[1]
            rate = 0.5 * (_ratio(last, before) + _ratio(last, self.first))
            lam = len(self.task_names) * torch.softmax(rate / self.params.temperature, dim=0)
            self.rate_weights.copy_(lam.to(self.rate_weights.dtype))

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        total = 0.0
        for i, task in enumerate(self.task_names):
            if task in losses:
                s = self.log_vars[i]
                total = total + self.rate_weights[i] * (0.5 * torch.exp(-s) * losses[task] + 0.5 * s)
        return total

    def current_weights(self) -> Dict[str, float]:
        """The effective loss weights lambda_t / (2 sigma_t^2), and lambda_t as ``rate/<task>``."""
        w = self.rate_weights * 0.5 * torch.exp(-self.log_vars.detach())
        out = self.per_task(w)
        out.update(self.per_task(self.rate_weights, "rate/"))
        return out

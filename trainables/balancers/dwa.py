"""Dynamic Weight Averaging: weights from the rate at which each task's loss falls.

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention" (MTAN), CVPR 2019,
Eq. (1); the survey's Eq. (8) (Vandenhende et al., TPAMI 2021):
    w_i(t) = N exp(r_i(t-1) / T) / sum_n exp(r_n(t-1) / T),   r_n(t-1) = L_n(t-1) / L_n(t-2),
with N the number of tasks and T the temperature.

Choices (as the MTAN reference code, github.com/lorenmt/mtan): t counts epochs and L_n(t) is the mean
training loss of task n over epoch t (the train loop passes it to ``on_epoch_end``); the
weights are 1 during the first two epochs, when L(t-2) does not exist yet. The epoch mean of a
task averages the batches that labelled it (partially labelled data); a task with no labelled
batch in epoch t-1 or t-2 (absent from ``mean_losses``, or a mean of 0) gets r = 1. Tasks absent
from a batch are left out of that step's sum; the weights stay as computed for the epoch.

Hyper-parameters:
    temperature (float > 0, default 2.0): T; the paper's value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
from torch import Tensor

from trainables.balancers.base import Balancer, check_number
from trainables.plugins import BalancerInfo
from trainables.registry import register_balancer


@dataclass(frozen=True)
class DWAParams:
    """Hyper-parameters of ``dwa`` (see the module docstring)."""

    temperature: float = 2.0

    def __post_init__(self) -> None:
        check_number("dwa", "temperature", self.temperature, lambda v: v > 0, "a number > 0")


@register_balancer("dwa")
class DWA(Balancer):
    """Dynamic weight averaging over epoch losses (Liu et al. CVPR 2019; survey Eq. 8)."""

    Params = DWAParams
    INFO = BalancerInfo(needs_epoch_losses=True)

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        t = len(self.task_names)
        self.register_buffer("history", torch.zeros(2, t, dtype=torch.float64))  # L(t-2), L(t-1)
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(t))

    def on_epoch_end(self, epoch: int, mean_losses: Dict[str, float]) -> None:
        latest = torch.tensor([float(mean_losses.get(t, 0.0)) for t in self.task_names], dtype=torch.float64)
        self.history.copy_(torch.stack([self.history[1], latest.to(self.history.device)]))
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:
            before, last = self.history[0], self.history[1]
            rate = torch.where((before > 0) & (last > 0), last / before.clamp_min(1e-300), torch.ones_like(last))
            w = len(self.task_names) * torch.softmax(rate / self.params.temperature, dim=0)
            self.weights.copy_(w.to(self.weights.dtype))

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        return sum(self.weights[i] * losses[t] for i, t in enumerate(self.task_names) if t in losses)

    def current_weights(self) -> Dict[str, float]:
        return self.per_task(self.weights)

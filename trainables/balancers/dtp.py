"""Dynamic Task Prioritization: focal-loss weights from each task's key performance indicator.

Guo, Haque, Huang, Yeung & Fei-Fei, "Dynamic Task Prioritization for Multitask Learning",
ECCV 2018; the survey's Eq. (9) (Vandenhende et al., TPAMI 2021):
    w_i(t) = -(1 - k_i(t))^gamma_i log k_i(t),     0 < k_i < 1,
with k_i a KPI of task i smoothed over steps, k_i(t) = a * kpi_i(t) + (1 - a) * k_i(t-1)
(the first observation initialises it). Harder tasks (low KPI) get higher weights. The
weights are constants for the backward pass.

The KPI needs more than a loss value for the paper's accuracy-style indicators, so it is an
option:
    kpi="loss" (default): kpi_i = exp(-L_i / scale_i). For cross-entropy losses (semseg, scene,
        edge) exp(-L) is the geometric mean of the probability given to the true label, a soft
        accuracy in (0, 1]; for regression losses (L1 depth, normals) it is a soft "within
        tolerance" score with tolerance ``kpi_scale`` in the loss's units. Works for every task
        and needs nothing from the step but the losses.
    kpi="accuracy": the balancer declares ``needs_outputs`` and the step passes the labelled
        samples' outputs and targets. Tasks with integer targets (classification /
        segmentation) use the batch accuracy of argmax over channels (labels outside [0, C)
        ignored); other tasks fall back to exp(-L / scale). A batch without a valid label leaves
        the task's KPI unchanged.
KPIs are clamped to [1e-6, 1] before the log. Per-worker KPIs under data parallelism (the
weights of a step may differ slightly between workers; DDP still averages the gradients).

Hyper-parameters:
    gamma (float >= 0 or task -> float, default 2.0): focusing parameter gamma_i (2 is the
        focal-loss default the form is taken from).
    kpi ("loss" | "accuracy", default "loss"): see above.
    kpi_scale (float > 0 or task -> float, default 1.0): scale_i of exp(-L_i / scale_i).
    ema_alpha (float in (0, 1], default 0.1): a, the weight of the newest batch KPI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Union

import torch
from torch import Tensor

from trainables.balancers.base import Balancer, check_choice, check_number
from trainables.plugins import BalancerInfo
from trainables.registry import register_balancer

PerTask = Union[float, Mapping[str, float]]


@dataclass(frozen=True)
class DTPParams:
    """Hyper-parameters of ``dtp`` (see the module docstring); per-task values are checked per task."""

    gamma: PerTask = 2.0
    kpi: str = "loss"
    kpi_scale: PerTask = 1.0
    ema_alpha: float = 0.1

    def __post_init__(self) -> None:
        check_choice("dtp", "kpi", self.kpi, ("loss", "accuracy"))
        check_number("dtp", "ema_alpha", self.ema_alpha, lambda v: 0 < v <= 1, "in (0, 1]")


@register_balancer("dtp")
class DTP(Balancer):
    """Dynamic task prioritisation by KPI (Guo et al. ECCV 2018; survey Eq. 9)."""

    Params = DTPParams

    @classmethod
    def info_for(cls, params: DTPParams) -> BalancerInfo:
        return BalancerInfo(needs_outputs=params.kpi == "accuracy")

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        p = self.params
        self.register_buffer("gamma", self._per_task(p.gamma, "gamma", lambda v: v >= 0, ">= 0"), persistent=False)
        self.register_buffer("kpi_scale", self._per_task(p.kpi_scale, "kpi_scale", lambda v: v > 0, "> 0"),
                             persistent=False)
        self.register_buffer("kpi_avg", torch.zeros(len(self.task_names)))
        self.register_buffer("kpi_seen", torch.zeros(len(self.task_names), dtype=torch.bool))
        self._batch_kpi: Dict[str, Tensor] = {}  # (kpi, valid) from observe_outputs, this step only

    def _per_task(self, value: PerTask, what: str, ok, requirement: str) -> Tensor:
        values = dict(value) if isinstance(value, Mapping) else {t: value for t in self.task_names}
        self._check_known(values, what)
        missing = [t for t in self.task_names if t not in values]
        if missing:
            raise ValueError(f"balancer 'dtp': {what} has no value for tasks {missing}")
        for task, v in values.items():
            check_number("dtp", f"{what}.{task}", v, ok, f"a number {requirement}")
        return torch.tensor([float(values[t]) for t in self.task_names])

    @torch.no_grad()
    def observe_outputs(self, outputs: Dict[str, Tensor], targets: Dict[str, Tensor]) -> None:
        self._batch_kpi = {}
        for task, pred in outputs.items():
            target = targets[task]
            if target.dtype.is_floating_point or target.dtype == torch.bool or pred.dim() < 2:
                continue  # regression-like: the loss-based KPI below
            valid = (target >= 0) & (target < pred.shape[1])
            hits = ((pred.argmax(dim=1) == target) & valid).sum()
            n = valid.sum()
            self._batch_kpi[task] = torch.stack([hits / n.clamp_min(1), (n > 0).to(hits.dtype)]).float()

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        idx = [self.task_names.index(t) for t in self.present(losses)]
        weights = self._update_kpis(idx, losses)
        self._batch_kpi = {}
        return sum(w * losses[self.task_names[i]] for w, i in zip(weights, idx))

    @torch.no_grad()
    def _update_kpis(self, idx, losses: Dict[str, Tensor]) -> Tensor:
        kpi, valid = [], []
        for i in idx:
            task = self.task_names[i]
            if task in self._batch_kpi:
                value, ok = self._batch_kpi[task].to(self.kpi_avg.device)
            else:
                value = torch.exp(-losses[task].detach().float() / self.kpi_scale[i])
                ok = torch.ones((), device=self.kpi_avg.device)
            kpi.append(value)
            valid.append(ok > 0)
        at = torch.tensor(idx, device=self.kpi_avg.device)
        kpi, valid = torch.stack(kpi), torch.stack(valid)
        old, seen = self.kpi_avg[at], self.kpi_seen[at]
        a = self.params.ema_alpha
        new = torch.where(seen, a * kpi + (1 - a) * old, kpi)
        self.kpi_avg[at] = torch.where(valid, new, old)
        self.kpi_seen[at] = seen | valid
        return self.focal_weights(self.kpi_avg[at], self.gamma[at], self.kpi_seen[at])

    @staticmethod
    def focal_weights(kpi: Tensor, gamma: Tensor, seen: Tensor) -> Tensor:
        """Eq. 9, w = -(1 - k)^gamma log k; 1 for a task without any KPI yet."""
        k = kpi.clamp(1e-6, 1.0)
        return torch.where(seen, -((1 - k) ** gamma) * torch.log(k), torch.ones_like(k))

    def current_weights(self) -> Dict[str, float]:
        w = self.focal_weights(self.kpi_avg, self.gamma, self.kpi_seen)
        return self.per_task(w)

"""Fixed loss weights: the weighted sum of survey Eq. 4.

Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI 2021,
Eq. (4): L_MTL = sum_i w_i * L_i, with the weights w_i set by hand (or by a search, see the
study's ``loss_weight_search``).

Hyper-parameters:
    weights: task name -> w_i (>= 0). Tasks not listed get 1.0 (uniform weighting by default).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Mapping

from torch import Tensor

from trainables.balancers.base import Balancer
from trainables.registry import register_balancer


@dataclass(frozen=True)
class FixedParams:
    """Hyper-parameters of ``fixed`` (see the module docstring)."""

    weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for task, w in self.weights.items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"balancer 'fixed': weights.{task} = {w!r} must be a finite number >= 0")


@register_balancer("fixed")
class Fixed(Balancer):
    """Weighted sum of task losses with constant weights (survey Eq. 4)."""

    Params = FixedParams

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        self._check_known(self.params.weights, "weights")
        self.weights = {t: float(self.params.weights.get(t, 1.0)) for t in self.task_names}

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        return sum(self.weights[t] * loss for t, loss in losses.items())

    def current_weights(self) -> Dict[str, float]:
        return dict(self.weights)

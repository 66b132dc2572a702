"""RLW: random loss weighting - fresh random task weights on the simplex at every step.

Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning", TMLR 2022 (Sec. 3): L = sum_t lambda_t L_t with lambda = f(lambda~),
lambda~ drawn from a distribution p each step and f a normalisation onto the simplex.
    "normal" (default, "RLW-Normal" in IAL's Table I): lambda = softmax(lambda~), lambda~ ~ N(0, I)
    "uniform": lambda = softmax(lambda~), lambda~ ~ U(0, 1)^T
    "dirichlet": lambda ~ Dirichlet(1, ..., 1) (already on the simplex)
"normal" is the authors' own code (LibMTL ``weighting/RLW.py``: softmax of ``torch.randn(T)``,
i.e. N(0, I)). The softmax ignores a common shift, so any mean (e.g. N(1, I)) gives the same
weights; only the standard deviation (1) matters.
Weights are drawn for all T tasks every step (so the random stream does not depend on which
labels a batch has) and renormalised over the tasks present. The draws come from the
balancer's own generator (checkpointed), so runs are reproducible and DDP workers agree.

Hyper-parameters:
    distribution ("normal" | "uniform" | "dirichlet", default "normal").
    seed (int or None, default None): generator seed; None takes the run context's seed (the
        trial's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

from trainables.balancers.base import Balancer, check_choice, check_number
from trainables.registry import register_balancer


@dataclass(frozen=True)
class RLWParams:
    """Hyper-parameters of ``rlw`` (see the module docstring)."""

    distribution: str = "normal"
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        check_choice("rlw", "distribution", self.distribution, ("normal", "uniform", "dirichlet"))
        if self.seed is not None:
            check_number("rlw", "seed", self.seed, lambda v: v >= 0, "an int >= 0", integer=True)


@register_balancer("rlw")
class RLW(Balancer):
    """Random loss weighting (Lin et al. TMLR 2022)."""

    Params = RLWParams

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        seed = self.params.seed if self.params.seed is not None else self.context.seed
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("weights", torch.full((len(self.task_names),), 1.0 / len(self.task_names)))

    def sample(self) -> Tensor:
        """One draw of lambda [T] on the simplex (CPU, float64)."""
        t = len(self.task_names)
        if self.params.distribution == "dirichlet":
            # Dirichlet(1) = normalised Exp(1) draws
            e = -torch.log1p(-torch.rand(t, generator=self.generator, dtype=torch.float64))
            return e / e.sum()
        if self.params.distribution == "uniform":
            raw = torch.rand(t, generator=self.generator, dtype=torch.float64)
        else:
            raw = torch.randn(t, generator=self.generator, dtype=torch.float64)
        return torch.softmax(raw, dim=0)

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        lam = self.sample()
        mask = torch.tensor([t in losses for t in self.task_names], dtype=torch.float64)
        lam = lam * mask / (lam * mask).sum().clamp_min(1e-300)
        self.weights.copy_(lam.to(self.weights))
        return sum(self.weights[i] * losses[t] for i, t in enumerate(self.task_names) if t in losses)

    def current_weights(self) -> Dict[str, float]:
        """The weights drawn at the last step."""
        return self.per_task(self.weights)

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state) -> None:
        self.generator.set_state(state["generator"].cpu())

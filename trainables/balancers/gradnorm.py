"""GradNorm: loss weights that equalise the tasks' gradient norms and training rates.

Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
Balancing in Deep Multitask Networks", ICML 2018; the survey's Eq. (7) (Vandenhende et al.,
TPAMI 2021). With W the chosen shared weights, at every step:
    G_i = || grad_W w_i L_i || = w_i n_i,      G_bar = mean_i G_i,
    r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0)),
    L_grad = sum_i | G_i - G_bar * r_i^alpha |    (GradNorm paper Eq. 2; target held constant)
so dL_grad / dw_i = sign(G_i - G_bar r_i^alpha) * n_i. The network is updated with
sum_i w_i(t) L_i; the weights take one step on L_grad and are renormalised to sum_i w_i = T.
The exponent alpha is the GradNorm paper's (its Eq. 2); the survey's printed Eq. 7 has none,
which is the special case alpha = 1.

Choices:
    - W is the last shared layer (``model.last_shared_module()``), the survey's cheaper variant
      (one extra backward through the heads only). That is the encoder's last conv (or linear)
      layer - the paper's "last shared layer of weights" - not the BatchNorm after it, whose
      per-channel scale and shift would make G_i depend on normalisation statistics rather
      than on the layer's weights. ``grad_params="shared"`` uses all shared parameters (what
      some libraries do; one batched backward through the encoder per task).
    - The weights have their own update rule: Adam (betas 0.9/0.999) with ``weight_lr``, kept
      in this balancer's buffers, so the step size does not depend on the scale of the gradient
      norms; ``weight_optimizer="sgd"`` takes plain gradient steps instead. Weights are clipped
      at 0 before the renormalisation.
    - L_i(0) is the loss of task i at the first step it is labelled (the paper's t = 0); tasks
      absent from a batch keep their weight and are left out of G_bar and r for that step.

Hyper-parameters:
    alpha (float >= 0, default 1.5): asymmetry; 1.5 is the paper's NYUv2 value (IAL tunes it
        near 1.5 for NYUv2 and uses 0 for Cityscapes).
    grad_params ("last_shared" | "shared", default "last_shared"): W above.
    weight_lr (float > 0, default 0.025): learning rate of the weights.
    weight_optimizer ("adam" | "sgd", default "adam").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

from trainables.balancers.base import Balancer, check_choice, check_number
from trainables.plugins import BalancerInfo
from trainables.registry import register_balancer


@dataclass(frozen=True)
class GradNormParams:
    """Hyper-parameters of ``gradnorm`` (see the module docstring)."""

    alpha: float = 1.5
    grad_params: str = "last_shared"
    weight_lr: float = 0.025
    weight_optimizer: str = "adam"

    def __post_init__(self) -> None:
        check_number("gradnorm", "alpha", self.alpha, lambda v: v >= 0, "a number >= 0")
        check_choice("gradnorm", "grad_params", self.grad_params, ("last_shared", "shared"))
        check_number("gradnorm", "weight_lr", self.weight_lr, lambda v: v > 0, "a number > 0")
        check_choice("gradnorm", "weight_optimizer", self.weight_optimizer, ("adam", "sgd"))


@register_balancer("gradnorm")
class GradNorm(Balancer):
    """Gradient normalisation (Chen et al. ICML 2018; survey Eq. 7)."""

    Params = GradNormParams

    @classmethod
    def info_for(cls, params: GradNormParams) -> BalancerInfo:
        return BalancerInfo(needs_task_grads=True, grad_target="params", grad_scope=params.grad_params,
                            backward_per_task=params.grad_params == "shared")

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        t = len(self.task_names)
        self.register_buffer("weights", torch.ones(t))
        self.register_buffer("initial_losses", torch.zeros(t))
        self.register_buffer("has_initial", torch.zeros(t, dtype=torch.bool))
        self.register_buffer("exp_avg", torch.zeros(t))  # Adam moments of the weights
        self.register_buffer("exp_avg_sq", torch.zeros(t))
        self.register_buffer("steps", torch.zeros(t))
        self._step_weights: Optional[Tensor] = None  # w(t) of the step in progress

    def combine_grads(self, grads: Tensor, losses: Dict[str, Tensor]) -> Tensor:
        idx = self._indices(losses)
        self._step_weights = self.weights.clone()
        direction = self._step_weights[idx].to(grads.dtype) @ grads  # the update of sum w_i(t) L_i
        self._update(idx, grads.norm(dim=1).to(self.weights.dtype),
                     torch.stack([losses[t] for t in self.present(losses)]).to(self.weights.dtype))
        return direction

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        w = self._step_weights if self._step_weights is not None else self.weights.clone()
        self._step_weights = None
        return sum(w[i] * losses[t] for i, t in enumerate(self.task_names) if t in losses)

    @torch.no_grad()
    def _update(self, idx: Tensor, norms: Tensor, losses: Tensor) -> None:
        """One step of the weights on Eq. 7, then renormalisation to sum T."""
        first = ~self.has_initial[idx]
        self.initial_losses[idx] = torch.where(first, losses, self.initial_losses[idx])
        self.has_initial[idx] = True
        w = self.weights[idx]
        grad_norms = w * norms  # G_i
        ratio = losses / self.initial_losses[idx].clamp_min(1e-12)  # L~_i
        rate = ratio / ratio.mean().clamp_min(1e-12)  # r_i
        target = grad_norms.mean() * rate ** self.params.alpha
        grad_w = torch.sign(grad_norms - target) * norms  # dL_grad/dw_i, target held constant
        if self.params.weight_optimizer == "adam":
            beta1, beta2, eps = 0.9, 0.999, 1e-8
            self.steps[idx] += 1
            self.exp_avg[idx] = beta1 * self.exp_avg[idx] + (1 - beta1) * grad_w
            self.exp_avg_sq[idx] = beta2 * self.exp_avg_sq[idx] + (1 - beta2) * grad_w**2
            m_hat = self.exp_avg[idx] / (1 - beta1 ** self.steps[idx])
            v_hat = self.exp_avg_sq[idx] / (1 - beta2 ** self.steps[idx])
            step = m_hat / (v_hat.sqrt() + eps)
        else:
            step = grad_w
        self.weights[idx] = (w - self.params.weight_lr * step).clamp_min(0.0)
        total = self.weights.sum()
        renormalised = self.weights * (len(self.task_names) / total.clamp_min(1e-12))
        self.weights.copy_(torch.where(total > 0, renormalised, torch.ones_like(renormalised)))

    def _indices(self, losses: Dict[str, Tensor]) -> Tensor:
        return torch.tensor([self.task_names.index(t) for t in self.present(losses)], device=self.weights.device)

    def current_weights(self) -> Dict[str, float]:
        return self.per_task(self.weights)

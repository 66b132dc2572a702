"""IAL: impartial auxiliary learning - uncertainty-trained decoders, primary-dominated encoder.

Impartial Auxiliary Learning (Li et al., "Unprejudiced Training Auxiliary Tasks Makes Primary Better: A Multi-Task Learning Perspective", Sec. III-C), for a study with one
primary task and auxiliary tasks T_aux:
    decoder stage (Eq. 3-5): every head and its uncertainty sigma_t follow
        L_dec = sum_t 1 / (2 sigma_t^2) L_t + log sigma_t,
        learnt as s_t = log sigma_t^2: L_t / (2 exp(s_t)) + s_t / 2 (the s_t are
        ``nn.Parameter``s the train loop's optimiser updates, like ``uncertainty``).
    encoder stage (Eq. 6-8, 10): at the shared feature z the encoder receives
        grad_z L = grad_z L_pri + sum_{t in T_aux} f(sigma_t) Norm(grad_z L_t),
        Norm(grad_z L_t) = ||grad_z L_pri|| / ||grad_z L_t|| * grad_z L_t,
    and back-propagates it through the encoder (Eq. 10). grad_target "representation".
    weight function (Eq. 9): f(sigma) = min(1, g(1 - sigma)), g: R -> [0, inf), sigma = the
        current exp(s_t / 2), a constant for the backward pass.

g is left open by the paper. Options (``g``, with ``g_scale`` = k):
    "linear" (default): g(x) = max(0, k x)        ->  f = clip(k (1 - sigma), 0, 1)
    "exp":              g(x) = max(0, e^{k x} - 1)
    "sigmoid":          g(x) = max(0, 2 sigmoid(k x) - 1)   (a sigmoid centred so g(0) = 0)
Why linear, k = 1: at the optimum of Eq. 3 sigma_t^2 = L_t, so f = 1 - sqrt(L_t): zero for an
auxiliary task whose loss is >= 1 (high uncertainty, Eq. 9's "weights decrease towards 0"),
near 1 only for a nearly solved task, and 0-0.55 for typical dense-prediction losses of
0.2-1, which matches the paper's report that the weights stay below about 0.6. It is also the
simplest g, with no extra constant to tune.

Other choices: a batch without the primary task gives grad_z L_pri = 0, so Eq. 8 scales every
auxiliary gradient to 0 and the encoder gets no update from that batch (the literal reading of
Eq. 7-8). An auxiliary task with a zero gradient contributes nothing. The paper initialises
"the task weightings" to 0.1 without saying which; we initialise s_t like ``uncertainty``
(-0.5, i.e. sigma = 0.78, f = 0.22 with the default g; ``init_log_var=log 5`` makes the
decoder weights 1 / (2 sigma^2) start at 0.1). The paper hand-tunes a separate learning rate for
the weightings; here they share the train loop's optimiser and learning rate.

Hyper-parameters:
    primary_task (str or None, default None): the primary task; the others are auxiliary. None
        takes the run context's primary task (the study's or experiment's ``primary_task``);
        one of the two is required (``BalancerInfo.needs_primary_task``, checked at plan time).
    g ("linear" | "exp" | "sigmoid", default "linear") and g_scale (float > 0, default 1.0).
    init_log_var (float, default -0.5): initial s_t = log sigma_t^2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from trainables.balancers.base import Balancer, check_choice, check_number
from trainables.plugins import BalancerInfo
from trainables.registry import register_balancer


@dataclass(frozen=True)
class IALParams:
    """Hyper-parameters of ``ial`` (see the module docstring); primary_task is checked by the balancer."""

    primary_task: Optional[str] = None
    g: str = "linear"
    g_scale: float = 1.0
    init_log_var: float = -0.5

    def __post_init__(self) -> None:
        check_choice("ial", "g", self.g, ("linear", "exp", "sigmoid"))
        check_number("ial", "g_scale", self.g_scale, lambda v: v > 0, "a number > 0")
        check_number("ial", "init_log_var", self.init_log_var)


@register_balancer("ial")
class IAL(Balancer):
    """Impartial auxiliary learning: Eq. 3-5 decoders, Eq. 7-9 encoder (one primary task)."""

    Params = IALParams
    INFO = BalancerInfo(needs_task_grads=True, grad_target="representation", needs_primary_task=True)

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        self.primary_task = self.resolve_primary_task(self.params.primary_task)
        self.log_vars = nn.Parameter(torch.full((len(self.task_names),), float(self.params.init_log_var)))

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        """The decoder-stage objective, Eq. 3 (with s = log sigma^2)."""
        total = 0.0
        for i, task in enumerate(self.task_names):
            if task in losses:
                s = self.log_vars[i]
                total = total + 0.5 * torch.exp(-s) * losses[task] + 0.5 * s
        return total

    def aux_weights(self, sigma: Tensor) -> Tensor:
        """f(sigma) = min(1, g(1 - sigma)), Eq. 9."""
        x = self.params.g_scale * (1.0 - sigma)
        if self.params.g == "linear":
            g = x
        elif self.params.g == "exp":
            g = torch.expm1(x)
        else:
            g = 2.0 * torch.sigmoid(x) - 1.0
        return g.clamp(0.0, 1.0)

    def grad_weights(self, gram: Tensor, losses: Dict[str, Tensor]) -> Tensor:
        """Coefficients of Eq. 7-8 over the present tasks: 1 for the primary, f(sigma_t) ratio_t else."""
        present = self.present(losses)
        if self.primary_task not in present:
            return torch.zeros(len(present), dtype=gram.dtype, device=gram.device)
        norms = gram.diagonal().clamp_min(0).sqrt()
        p = present.index(self.primary_task)
        idx = [self.task_names.index(t) for t in present]
        sigma = torch.exp(0.5 * self.log_vars.detach()[idx]).to(gram.dtype)
        ratio = torch.where(norms > 0, norms[p] / norms.clamp_min(1e-30), torch.zeros_like(norms))  # Eq. 8
        coef = self.aux_weights(sigma) * ratio
        coef[p] = 1.0
        return coef

    def current_weights(self) -> Dict[str, float]:
        """Encoder weights f(sigma_t) (1 for the primary) and decoder weights 1 / (2 sigma_t^2)."""
        s = self.log_vars.detach()
        enc = self.aux_weights(torch.exp(0.5 * s))
        out = {t: 1.0 if t == self.primary_task else float(enc[i]) for i, t in enumerate(self.task_names)}
        out.update(self.per_task(0.5 * torch.exp(-s), "decoder/"))
        return out

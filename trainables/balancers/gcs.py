"""GCS: gradient cosine similarity - an auxiliary gradient is used only while it agrees with the primary's.

Du, Czarnecki, Jayakumar, Farajtabar, Pascanu & Lakshminarayanan, "Adapting Auxiliary Losses
Using Gradient Similarity", arXiv:1812.02224, 2018 (Sec. 2, Algorithm 1 and its weighted
version). Auxiliary setting: one primary ("main") task, the others auxiliary. With g_p the
gradient of the primary loss and g_k that of auxiliary task k, both w.r.t. the shared
parameters, and cos_k = <g_p, g_k> / (||g_p|| ||g_k||), the shared parameters move along
    "unweighted" (default):  d = g_p + sum_k [cos_k > 0] g_k
    "weighted":              d = g_p + sum_k max(0, cos_k) g_k
The primary gradient is always used. The gate applies to the shared parameters only; every
head follows its own loss with weight 1 (an auxiliary head keeps learning while its task is
gated out). With several auxiliary tasks each is gated by its own cosine with the primary.
Both points as in the public re-implementation in AvivNavon/AuxiLearn
(``experiments/weight_methods.py``, ``GradCosine``, unweighted, cos > 0); the paper's own
text could not be read here (only its abstract and summaries), so its exact pseudo-code
(> 0 or >= 0, the head update) is not checked. IAL (Li et al., "Unprejudiced Training Auxiliary Tasks Makes Primary Better", Sec. II) describes
GCS as the "hard" gating and does not name a variant, so "unweighted" is the default.

Implementation: the cosines are read off the Gram matrix G G^T, so the direction is an exact
combination of the task gradients (``grad_weights``) and exact under data parallelism.

Choices where the sources are silent: a gradient of zero norm has cosine 0, so it is dropped
(both variants agree at cos = 0, where an auxiliary gradient is orthogonal to the primary's).
A batch without the primary task has g_p = 0: every cosine is 0, every auxiliary gradient is
dropped and the shared parameters get no update from that batch (the literal reading, as in
``ial``); the heads of the labelled tasks still train.

Hyper-parameters:
    primary_task (str or None, default None): the primary task; the others are auxiliary. None
        takes the run context's primary task; one of the two is required (the paper defines no
        multi-task variant).
    variant ("unweighted" | "weighted", default "unweighted"): the gate [cos > 0] or the scale
        max(0, cos).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

from trainables.balancers.base import Balancer, check_choice
from trainables.plugins import BalancerInfo
from trainables.registry import register_balancer


@dataclass(frozen=True)
class GCSParams:
    """Hyper-parameters of ``gcs`` (see the module docstring); primary_task is checked by the balancer."""

    primary_task: Optional[str] = None
    variant: str = "unweighted"

    def __post_init__(self) -> None:
        check_choice("gcs", "variant", self.variant, ("unweighted", "weighted"))


def cosines_to(gram: Tensor, p: int) -> Tensor:
    """cos(g_p, g_k) for every row k from the Gram matrix (0 where either gradient is zero)."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    denom = norms[p] * norms
    return torch.where(denom > 0, gram[p] / denom.clamp_min(1e-30), torch.zeros_like(denom)).clamp(-1.0, 1.0)


@register_balancer("gcs")
class GCS(Balancer):
    """Auxiliary gradients gated by their cosine with the primary gradient (Du et al. 2018)."""

    Params = GCSParams
    INFO = BalancerInfo(needs_task_grads=True, grad_target="params", backward_per_task=True, needs_primary_task=True)

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        self.primary_task = self.resolve_primary_task(self.params.primary_task, " (auxiliary learning)")
        self.register_buffer("weights", torch.ones(len(self.task_names)))  # coefficients of the last step

    def grad_weights(self, gram: Tensor, losses: Dict[str, Tensor]) -> Tensor:
        """1 for the primary, [cos_k > 0] or max(0, cos_k) for auxiliary task k (rows: present tasks)."""
        present = self.present(losses)
        if self.primary_task not in present:
            coef = torch.zeros(len(present), dtype=gram.dtype, device=gram.device)
        else:
            p = present.index(self.primary_task)
            cos = cosines_to(gram, p)
            coef = (cos > 0).to(gram.dtype) if self.params.variant == "unweighted" else cos.clamp_min(0)
            coef[p] = 1.0
        self.weights.zero_()
        idx = torch.tensor([self.task_names.index(t) for t in present], dtype=torch.long, device=self.weights.device)
        self.weights.index_copy_(0, idx, coef.detach().to(self.weights))
        return coef

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        """Every head follows its own loss."""
        return sum(losses[t] for t in self.present(losses))

    def current_weights(self) -> Dict[str, float]:
        """The shared-parameter coefficients of the last step (1 for every task before the first)."""
        return self.per_task(self.weights)

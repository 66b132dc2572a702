"""OL-AUX: auxiliary weights learnt online from how well each auxiliary gradient serves the primary task.

Lin, Baweja, Kantor & Held, "Adaptive Auxiliary Task Weighting for Reinforcement Learning",
NeurIPS 2019 (Sec. 4, Algorithm 1 "Learning with OL-AUX"). Auxiliary setting: one primary
("main") task, auxiliary tasks k with weights w_k. The model follows
    L(theta) = L_main(theta) + sum_k w_k L_aux,k(theta),      theta <- theta - alpha grad L,
so the shared parameters move along d = g_main + sum_k w_k g_k (g = per-task gradients w.r.t.
the shared parameters) and every auxiliary head along w_k grad L_aux,k. The weights are chosen
to decrease the primary loss N steps ahead: dL_main(theta_{t+N}) / dw_k is approximated by
-alpha sum_{j<N} <g_main(theta_{t+j}), g_k(theta_{t+j})>, and every N steps
    w_k <- w_k + beta * sum over the window of s_k,   s_k = <g_main, g_k>            ("dot")
                                                    or s_k = cos(g_main, g_k)        ("cosine",
the normalised variant: scale-free in the gradients' magnitudes). The paper's step on w is
beta_paper * alpha (alpha the model's learning rate); the balancer does not see the optimiser,
so ``beta`` here is that product. Within a window the direction uses the weights of the window's
start; the update takes effect from the first step of the next window (it is applied when
that step begins, so ``current_weights`` shows the new w from then on).

Implementation: s_k and d only need the Gram matrix G G^T, so the direction is an exact
combination of the task gradients (``grad_weights``), and every data-parallel worker gets the
same (averaged) gradients, hence the same weights. The dot products over the shared
parameters equal those over all parameters (a task's loss does not reach another task's
head); the cosine's norms are those of the shared-parameter gradients.

Choices where the sources are silent, and what could not be checked: the paper's text could
not be read here (only its abstract), so Algorithm 1 is as recalled and as the public
re-implementations have it (e.g. an LibMTL-derived OLAUX: weights from 1, updated every 5
steps from summed gradient cosines; ARML's comparison code: weights from 1). Defaults are
therefore N = 5, w_0 = 1 and beta = 0.01, the last our choice (not the paper's). The update
is not clipped (the paper's rule), so a harmful auxiliary task can get a negative weight, which
also makes its head ascend its own loss; ``clamp_at_zero`` keeps w >= 0 instead (as ARML's
comparison code does). A batch without the primary task has g_main = 0: it adds nothing to the
window's sums but counts as a step, and the shared parameters move along sum_k w_k g_k, the
literal reading of L (as ``ial``, the literal reading of the method's own equations).

Hyper-parameters:
    primary_task (str or None, default None): the primary task; None takes the run context's;
        one of the two is required (the paper defines no multi-task variant).
    beta (float > 0, default 0.01): the weights' step (the paper's beta times alpha).
    window (int >= 1, default 5): N, the steps summed per weight update.
    init_weight (float, default 1.0): w_k at the start, for every auxiliary task.
    similarity ("dot" | "cosine", default "dot"): s_k above.
    clamp_at_zero (bool, default False): keep w_k >= 0 after each update.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

from trainables.balancers.base import Balancer, check_choice, check_number
from trainables.balancers.gcs import cosines_to
from trainables.plugins import BalancerInfo
from trainables.registry import register_balancer


@dataclass(frozen=True)
class OLAuxParams:
    """Hyper-parameters of ``ol_aux`` (see the module docstring); primary_task is checked by the balancer."""

    primary_task: Optional[str] = None
    beta: float = 0.01
    window: int = 5
    init_weight: float = 1.0
    similarity: str = "dot"
    clamp_at_zero: bool = False

    def __post_init__(self) -> None:
        check_number("ol_aux", "beta", self.beta, lambda v: v > 0, "a number > 0")
        check_number("ol_aux", "window", self.window, lambda v: v >= 1, "an int >= 1", integer=True)
        check_number("ol_aux", "init_weight", self.init_weight)
        check_choice("ol_aux", "similarity", self.similarity, ("dot", "cosine"))
        check_choice("ol_aux", "clamp_at_zero", self.clamp_at_zero, (False, True))


@register_balancer("ol_aux")
class OLAux(Balancer):
    """Online learning of auxiliary task weights, Algorithm 1 (Lin et al. NeurIPS 2019)."""

    Params = OLAuxParams
    INFO = BalancerInfo(needs_task_grads=True, grad_target="params", backward_per_task=True, needs_primary_task=True)

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        self.primary_task = primary_task = self.resolve_primary_task(self.params.primary_task, " (auxiliary learning)")
        self.p = self.task_names.index(primary_task)
        weights = torch.full((len(self.task_names),), float(self.params.init_weight))
        weights[self.p] = 1.0
        self.register_buffer("weights", weights)                       # w_k (the primary's entry stays 1)
        self.register_buffer("window_sum", torch.zeros(len(self.task_names)))  # sum of s_k in this window
        self.register_buffer("window_steps", torch.zeros((), dtype=torch.long))

    def grad_weights(self, gram: Tensor, losses: Dict[str, Tensor]) -> Tensor:
        """1 for the primary, w_k for auxiliary task k (rows: present tasks); accumulates s_k."""
        if int(self.window_steps) == self.params.window:
            self._close_window()
        present = self.present(losses)
        idx = torch.tensor([self.task_names.index(t) for t in present], dtype=torch.long, device=self.weights.device)
        coef = self.weights[idx].to(gram.device, gram.dtype)
        if self.primary_task in present:
            p = present.index(self.primary_task)
            s = gram[p] if self.params.similarity == "dot" else cosines_to(gram, p)
            s = s.detach().to(self.window_sum).clone()
            s[p] = 0.0
            self.window_sum.index_add_(0, idx, s)
        self.window_steps += 1
        return coef

    def _close_window(self) -> None:
        """w <- w + beta * (window sum of s). Run at the start of the step after the N-th, so that
        ``combine`` (called after ``grad_weights`` within a step) sees the weights the shared
        direction used."""
        self.weights.add_(self.params.beta * self.window_sum)
        if self.params.clamp_at_zero:
            self.weights.clamp_(min=0.0)
        self.weights[self.p] = 1.0
        self.window_sum.zero_()
        self.window_steps.zero_()

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        """L_main + sum_k w_k L_aux,k for the heads (the weights are constants here)."""
        return sum(self.weights[self.task_names.index(t)] * losses[t] for t in self.present(losses))

    def current_weights(self) -> Dict[str, float]:
        """w_k in effect (1 for the primary task)."""
        return self.per_task(self.weights)

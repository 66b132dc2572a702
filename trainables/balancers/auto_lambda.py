"""Auto-Lambda: task weights learnt by a one-step look-ahead on a meta batch (bilevel).

Liu, James, Davison & Johns, "Auto-Lambda: Disentangling Dynamic Task Relationships", TMLR 2022
(authors' code: github.com/lorenmt/auto-lambda, ``auto_lambda.py``, ``trainer_dense.py``).
Learnable weights lambda_t; the network trains on sum_t lambda_t L_t(train batch), and lambda on
the primary tasks' loss on a meta batch after one virtual step of the network:
    theta'   = theta - a (mu m + grad_theta sum_t lambda_t L_t(theta; train) + wd theta)
    L_meta   = sum_{t primary} L_t(theta'; meta)
    dL_meta/dlambda_t = -a grad_theta' L_meta . grad_theta L_t(theta; train)
with a the network's current learning rate, mu m the SGD momentum term and wd its weight decay
(the code's ``virtual_step``). The Hessian-vector product is the code's central difference:
    d = grad_theta' L_meta,  R = radius / ||d||,  theta+- = theta +- R d,
    hypergrad_t = -a (L_t(theta+; train) - L_t(theta-; train)) / (2 R)
(grad_lambda sum_t lambda_t L_t is just the vector of losses). ``meta_update`` writes it into
``weights.grad``; the step's optimiser applies it. ``combine`` = sum_t lambda_t.detach() L_t, so
the weights are trained by the meta step only.

Modes: "multi_task" (default): every task is primary. "auxiliary": only the run context's primary
task enters L_meta (``needs_primary_task``). The code takes any subset of primary tasks; the
other subsets are not offered here.

Choices and deviations (where the code does something else, or says nothing):
    meta data: the code draws its meta batches from a reshuffled copy of the WHOLE training set;
        here they come from the seam's held-out ``meta_fraction`` of train (``trainables/meta.py``).
    optimiser of lambda: the code uses its own Adam (lr 1e-4 NYUv2, 3e-5 CityScapes, 3e-4
        CIFAR-100; no weight decay, constant rate). Here lambda is a group of the trial's
        optimiser at lr x ``lr_mult`` without weight decay (``param_groups``): under the default
        trial (Adam, lr 1e-4) and lr_mult 1 this is the code's NYUv2 meta optimiser, except that
        the trial's schedule also decays it; under SGD, lambda follows SGD (with the trial's
        momentum) - the hypergradient is scaled by a, so expect to raise lr_mult there. An
        absolute meta lr cannot be given: the balancer does not see the trial's lr when built.
    order: the code applies its meta step before the network's forward, so the network trains
        with the just-updated lambda; here ``meta_update`` only writes lambda's gradient and the
        one optimiser step moves both, so the network trains with lambda before this step's
        meta update (a lag of one step).
    Adam trial: like the code, the virtual step keeps its SGD form (no momentum term - Adam has
        none - and Adam's L2 weight decay).
    learning rate a, momentum, weight decay: those of the optimiser's first group (the model's;
        the code has one group). Parameters without a gradient in the virtual step count as a
        zero gradient (the step's own backward gives every head a zero one, too).
    constraints: the code does not clip or normalise lambda; neither do we (they may go negative).
    degenerate meta step: no primary task labelled in the meta batch, or d = 0 (the code would
        divide by zero): the hypergradient is 0. A task absent from the training batch has
        hypergradient 0 (its loss is undefined there).
    BatchNorm: the functional passes use copies of the buffers, so, unlike the code's extra
        forwards, the meta step leaves running statistics untouched.
    data parallel: each worker computes its own hypergradient on its batches; the step averages
        the balancer's gradients (no other collective).

Hyper-parameters:
    mode ("multi_task" | "auxiliary", default "multi_task").
    init_weight (float, default 0.1): initial lambda_t (the code's ``autol_init``).
    lr_mult (float > 0, default 1.0): lambda's learning rate relative to the trial's.
    meta_fraction (0 < f < 1, default 0.1): share of the training split held out as meta split.
    radius (float > 0, default 0.01): the finite-difference radius R ||d|| (the code's 0.01).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import torch
from torch import Tensor, nn

from trainables.balancers.base import Balancer, check_choice, check_number
from trainables.plugins import BalancerInfo
from trainables.registry import register_balancer


@dataclass(frozen=True)
class AutoLambdaParams:
    """Hyper-parameters of ``auto_lambda`` (see the module docstring)."""

    mode: str = "multi_task"
    init_weight: float = 0.1
    lr_mult: float = 1.0
    meta_fraction: float = 0.1
    radius: float = 0.01

    def __post_init__(self) -> None:
        check_choice("auto_lambda", "mode", self.mode, ("multi_task", "auxiliary"))
        check_number("auto_lambda", "init_weight", self.init_weight)
        check_number("auto_lambda", "lr_mult", self.lr_mult, lambda v: v > 0, "a number > 0")
        check_number("auto_lambda", "meta_fraction", self.meta_fraction, lambda v: 0 < v < 1, "in (0, 1)")
        check_number("auto_lambda", "radius", self.radius, lambda v: v > 0, "a number > 0")


@register_balancer("auto_lambda")
class AutoLambda(Balancer):
    """Auto-Lambda (Liu et al. TMLR 2022): weights from a finite-difference hypergradient."""

    Params = AutoLambdaParams

    @classmethod
    def info_for(cls, params: AutoLambdaParams) -> BalancerInfo:
        return BalancerInfo(needs_meta_batch=True, meta_fraction=params.meta_fraction,
                            needs_primary_task=params.mode == "auxiliary")

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        if self.params.mode == "auxiliary":
            primary = self.context.primary_task
            if primary not in self.task_names:
                raise ValueError(f"balancer 'auto_lambda': mode 'auxiliary' needs the run's primary_task among the "
                                 f"tasks {self.task_names}, got {primary!r}")
            self.primary_tasks = [primary]
        else:
            self.primary_tasks = list(self.task_names)
        self.weights = nn.Parameter(torch.full((len(self.task_names),), float(self.params.init_weight)))

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        lam = self.weights.detach()
        return sum(lam[i] * losses[t] for i, t in enumerate(self.task_names) if t in losses)

    def meta_update(self, ctx) -> None:
        self.weights.grad = self.hypergradient(ctx)

    def hypergradient(self, ctx) -> Tensor:
        """-a (L(theta+) - L(theta-)) / (2R) per task (see the module docstring); zeros when degenerate."""
        hyper = torch.zeros_like(self.weights.detach())
        names, params = list(ctx.params), list(ctx.params.values())
        lam = self.weights.detach()
        train = {t: l for t, l in ctx.losses(ctx.params, ctx.batch).items() if t in self.task_names}
        if not train:
            return hyper
        total = sum(lam[self.task_names.index(t)] * l for t, l in train.items())
        grads = torch.autograd.grad(total, params, allow_unused=True)
        lr, mu, wd = ctx.lr, ctx.momentum, ctx.weight_decay
        virtual = {}
        with torch.no_grad():  # theta' = theta - a (mu m + g + wd theta), the code's virtual_step
            for n, p, g in zip(names, params, grads):
                step = torch.zeros_like(p) if g is None else g.clone()
                buf = ctx.momentum_buffer(n) if mu else None
                if buf is not None:
                    step += mu * buf
                if wd:
                    step += wd * p
                virtual[n] = (p - lr * step).requires_grad_()
        meta = [l for t, l in ctx.losses(virtual, ctx.meta_batch).items() if t in self.primary_tasks]
        if not meta:
            return hyper
        d = torch.autograd.grad(sum(meta), list(virtual.values()), allow_unused=True)
        d = [torch.zeros_like(p) if g is None else g for g, p in zip(d, params)]
        norm = torch.sqrt(sum((g * g).sum() for g in d))
        if not torch.isfinite(norm) or norm == 0:
            return hyper
        r = self.params.radius / norm
        with torch.no_grad():
            plus = ctx.losses({n: p + r.to(p.dtype) * g for n, p, g in zip(names, params, d)}, ctx.batch)
            minus = ctx.losses({n: p - r.to(p.dtype) * g for n, p, g in zip(names, params, d)}, ctx.batch)
        for t in train:
            i = self.task_names.index(t)
            hyper[i] = -lr * (plus[t] - minus[t]) / (2 * r)
        return hyper

    def param_groups(self) -> List[Dict[str, Any]]:
        return [{"name": self.label(), "params": [self.weights], "lr_mult": self.params.lr_mult, "weight_decay": 0.0}]

    def current_weights(self) -> Dict[str, float]:
        return self.per_task(self.weights)

"""The regulariser side of a training step (``trainables/steps.py``): the views the model runs
on, and the gradient of the regularisers' terms at every balancer level.

The step runs the model once on the batch's image and every extra view the regularisers ask for
(``model_input``: concatenated along the batch), splits the outputs per view (``split_views``),
and hands them to the regularisers (``Regularised.total``). At the loss level the terms are added
to the balanced objective before its one backward pass. At the gradient levels the balancer
writes its own update, and ``regulariser_grads`` gives d(terms)/d(parameters) - through the
detached shared representation and the encoder when there is one - averaged over the workers,
to add to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from trainables.architectures.base import Predictions
from trainables.regularisers.base import Regulariser
from trainables.session import Session


@dataclass
class Regularised:
    """The step's regularisers, the views they need and, once computed, their terms."""

    modules: List[Regulariser]
    values: Dict[str, Tensor] = field(default_factory=dict)

    @property
    def views(self) -> int:
        return max((r.info.views for r in self.modules), default=1)

    @property
    def needs_features(self) -> bool:
        return any(r.info.needs_features for r in self.modules)

    @property
    def needs_model(self) -> bool:
        return any(r.info.needs_model for r in self.modules)

    def own_parameters(self) -> List[nn.Parameter]:
        return [p for r in self.modules for p in r.parameters() if p.requires_grad]

    def total(self, outputs: List[Mapping[str, Tensor]], batch, features) -> Optional[Tensor]:
        """The sum of every regulariser's terms (None without regularisers); keeps each term."""
        if not self.modules:
            return None
        total = None
        for reg in self.modules:
            for name, term in reg.terms(outputs, batch, features if reg.info.needs_features else None).items():
                if name in self.values:
                    raise ValueError(f"two regularisers return a term named {name!r}; give them different names")
                self.values[name] = term
                total = term if total is None else total + term
        return total


def model_input(batch, views: int) -> Tensor:
    """The images the model runs on: the batch's, then each extra view's, concatenated."""
    if views == 1:
        return batch["image"]
    extra = batch["views"]
    if extra.shape[1] < views - 1:
        raise ValueError(f"a regulariser needs {views} views, the batch has {extra.shape[1] + 1}")
    return torch.cat([batch["image"]] + [extra[:, k] for k in range(views - 1)])


def split_views(out: Mapping[str, Tensor], size: int, views: int) -> List[Mapping[str, Tensor]]:
    """Per view, the outputs of its ``size`` samples (view 0 keeps any intermediate predictions)."""
    if views == 1:
        return [out]
    parts = [{t: o[k * size:(k + 1) * size] for t, o in out.items()} for k in range(views)]
    aux = getattr(out, "aux", None)
    if aux:
        parts[0] = Predictions(parts[0], {t: [a[:size] for a in preds] for t, preds in aux.items()}, out.aux_weights)
    return parts


def first_view(z, size: int):
    return tuple(t[:size] for t in z) if isinstance(z, tuple) else z[:size]


def regulariser_grads(net, regs: Regularised, total: Optional[Tensor], zs, z_d, session: Session) -> List[Tuple[nn.Parameter, Tensor]]:
    """d(regulariser terms)/d(model parameters), averaged over the workers, to be added to .grad
    after the balancer has written its own; the regularisers' own parameters get theirs in .grad
    at once (the step averages them with the balancer's). With a shared representation the
    outputs hang off a detached z, so the terms' gradient w.r.t. z is carried through the
    encoder by one more vector-Jacobian product (the graphs are kept for the balancer)."""
    if total is None or not total.requires_grad:
        return []
    params = [p for p in net.parameters() if p.requires_grad]
    own = regs.own_parameters()
    grads = torch.autograd.grad(total, list(z_d) + params + own, retain_graph=True, allow_unused=True)
    gz, gp, go = grads[:len(z_d)], grads[len(z_d):len(z_d) + len(params)], grads[len(z_d) + len(params):]
    for p, g in zip(own, go):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
    gp = list(gp)
    if any(g is not None for g in gz):
        pairs = [(t, g) for t, g in zip(zs, gz) if g is not None]
        through = torch.autograd.grad([t for t, _ in pairs], params, grad_outputs=[g for _, g in pairs],
                                      retain_graph=True, allow_unused=True)
        gp = [a if b is None else (b if a is None else a + b) for a, b in zip(gp, through)]
    out = [(p, g if g is not None else torch.zeros_like(p)) for p, g in zip(params, gp)]
    if session.world_size > 1:
        flat = session.average_(torch.cat([g.flatten() for _, g in out]))
        offset, averaged = 0, []
        for p, _ in out:
            averaged.append((p, flat[offset:offset + p.numel()].view_as(p)))
            offset += p.numel()
        out = averaged
    return out

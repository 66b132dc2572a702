"""One optimisation step, served according to the balancer's declared needs.

The step branches on the balancer's metadata (``needs_task_grads``, ``grad_target``), never on
its name. Samples without a label for a task (partially labelled MTL) are dropped from that
task's loss through the batch's per-task mask.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch import Tensor, nn

from trainables.balancers.base import Balancer
from trainables.tasks.base import Task


def task_losses(out: Mapping[str, Tensor], tasks: Mapping[str, Task], batch) -> Dict[str, Tensor]:
    """Per-task losses over the samples labelled for each task; unlabelled tasks are absent."""
    losses = {}
    for name, task in tasks.items():
        keep = batch["mask"][name]
        if keep.any():
            losses[name] = task.loss(out[name][keep], batch["targets"][name][keep])
    return losses


def _keep_graph_connected(out: Mapping[str, Tensor], losses: Dict[str, Tensor]) -> Tensor:
    # A head whose task has no label in this batch must still take part in the backward pass:
    # DDP expects a gradient (here zero) for every parameter on every worker.
    return sum((0.0 * o.sum() for n, o in out.items() if n not in losses), torch.zeros((), device=next(iter(out.values())).device))


def training_step(model: nn.Module, balancer: Balancer, tasks: Mapping[str, Task], batch, optimizer) -> Dict[str, float]:
    """Forward, balance, backward, optimiser step; returns the per-task loss values."""
    optimizer.zero_grad(set_to_none=True)
    out = model(batch["image"])
    losses = task_losses(out, tasks, batch)
    if balancer.needs_task_grads:
        raise NotImplementedError(
            f"balancer {type(balancer).__name__} needs per-task gradients, which this train loop "
            "does not serve yet"
        )
    total = balancer.combine(losses) if losses else 0.0
    (total + _keep_graph_connected(out, losses)).backward()
    optimizer.step()
    return {name: float(loss.detach()) for name, loss in losses.items()}

"""The balancer contract: how per-task losses (and, for some methods, gradients) become one update.

A balancer is an ``nn.Module`` (so learnable weights and buffers checkpoint with the model)
built as ``cls(task_names, **typed_kwargs)``. It declares what it needs as metadata (class
attributes; a plug-in may override one per instance in ``__init__`` when an option changes it)
and the step (``trainables/steps.py``) serves that need generically - it never branches on a
balancer's name:

    needs_task_grads      per-task gradients are required (gradient-level methods)
    grad_target           "params" (w.r.t. the shared parameters) or "representation"
                          (w.r.t. the shared feature z, e.g. MGDA-UB, IAL)
    grad_scope            for "params": which shared parameters - "shared" (all) or
                          "last_shared" (``model.last_shared_module()``, GradNorm's cheap variant)
    extra_backward_passes backward passes through the shared encoder beyond the one of a
                          plain weighted sum (documentation and benchmark only)
    needs_epoch_losses    ``on_epoch_end`` receives the epoch's mean training loss per task
    needs_outputs         ``observe_outputs`` receives the labelled samples' detached outputs and
                          targets before ``combine`` (e.g. DTP's accuracy KPI)

Missing tasks: a task without a labelled sample in the batch is absent from ``losses``. Every
method combines the tasks present; ``present(losses)`` gives them in the balancer's task order,
which is also the row order of the gradient matrices below.

Gradient-level methods (``needs_task_grads``): for every step the step computes the per-task
gradients G (rows: ``present(losses)``; columns: the flattened scope - shared parameters or z),
then calls, in this order,
    1. ``combine_grads(G, losses) -> [D]``: the update direction of the scope (may update state).
       The default is ``grad_weights(G @ G.T, losses) @ G``: most methods only need the Gram
       matrix, which is what makes them exact and cheap under data parallelism (the step sums
       per-worker Gram matrices of representation gradients instead of gathering them).
    2. ``combine(losses) -> scalar``: the objective of everything outside the scope (the task
       heads, shared parameters outside ``grad_scope``) and of the balancer's own parameters.
       Its derivative w.r.t. L_t is the weight task t's head is trained with.
The ``losses`` given to ``combine_grads`` / ``grad_weights`` are detached.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn


class Balancer(nn.Module):
    needs_task_grads: ClassVar[bool] = False
    grad_target: ClassVar[Optional[str]] = None
    grad_scope: ClassVar[str] = "shared"
    extra_backward_passes: ClassVar[int] = 0
    needs_epoch_losses: ClassVar[bool] = False
    needs_outputs: ClassVar[bool] = False

    def __init__(self, task_names: Sequence[str]):
        super().__init__()
        if not task_names:
            raise ValueError("a balancer needs at least one task name")
        self.task_names = list(task_names)

    # -- loss level ---------------------------------------------------------------------------
    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        """The scalar training loss from the per-task losses of one step."""
        raise NotImplementedError(f"{type(self).__name__} does not combine losses")

    # -- gradient level -----------------------------------------------------------------------
    def combine_grads(self, grads: Tensor, losses: Dict[str, Tensor]) -> Tensor:
        """One update direction [D] from per-task gradients [T, D] (rows: ``present(losses)``)."""
        return self.grad_weights(grads @ grads.T, losses).to(grads.dtype) @ grads

    def grad_weights(self, gram: Tensor, losses: Dict[str, Tensor]) -> Tensor:
        """Coefficients c [T] of the direction c @ G, from the Gram matrix G @ G.T [T, T]."""
        raise NotImplementedError(f"{type(self).__name__} does not combine gradients")

    def has_grad_weights(self) -> bool:
        """Whether the direction is a combination with Gram-derived coefficients (DDP-exact)."""
        return type(self).grad_weights is not Balancer.grad_weights

    # -- hooks ----------------------------------------------------------------------------------
    def on_epoch_end(self, epoch: int, mean_losses: Dict[str, float]) -> None:
        """Called once per epoch when ``needs_epoch_losses`` is set."""

    def observe_outputs(self, outputs: Dict[str, Tensor], targets: Dict[str, Tensor]) -> None:
        """Called before ``combine`` when ``needs_outputs`` is set (labelled samples only)."""

    def current_weights(self) -> Dict[str, float]:
        """Task weights in effect, for logging (loss weights over time)."""
        return {}

    # -- helpers --------------------------------------------------------------------------------
    def present(self, losses: Dict[str, Tensor]) -> List[str]:
        """The tasks of ``losses`` in the balancer's order (the rows of gradient matrices)."""
        return [t for t in self.task_names if t in losses]

    def _check_known(self, mapping, what: str, name: str) -> None:
        unknown = sorted(set(mapping) - set(self.task_names))
        if unknown:
            raise ValueError(f"balancer {name!r}: {what} given for unknown tasks {unknown}; "
                             f"the study's tasks are {self.task_names}")

    def _weights_tensor(self, values: Dict[str, float], like: Tensor) -> Tensor:
        return torch.tensor([values[t] for t in self.task_names], dtype=like.dtype, device=like.device)


# -- validation helpers for the plug-ins' hyper-parameter dataclasses ------------------------------
def check_choice(balancer: str, field: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"balancer {balancer!r}: {field} must be one of {tuple(choices)}, got {value!r}")


def check_number(balancer: str, field: str, value: Any, ok: Callable[[float], bool] = lambda v: True,
                 requirement: str = "a finite number", integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"balancer {balancer!r}: {field} must be {requirement}, got {value!r}")

"""The balancer contract: how per-task losses become one update.

A balancer is an ``nn.Module`` (so learnable weights and buffers checkpoint with the model)
built as ``cls(task_names, **typed_kwargs)``. It declares what it needs as class metadata and
the train loop serves that need generically - it never branches on a balancer's name:

    needs_task_grads      per-task gradients are required (gradient-level methods)
    grad_target           "params" (w.r.t. the shared parameters) or "representation"
                          (w.r.t. the shared feature z, e.g. MGDA-UB, IAL)
    extra_backward_passes backward passes beyond the one of the combined loss (for the bench)
    needs_epoch_losses    ``on_epoch_end`` receives the epoch's mean training loss per task

Loss-level methods implement ``combine``; gradient-level ones also ``combine_grads``.
"""
from __future__ import annotations

from typing import ClassVar, Dict, Optional, Sequence

import torch
from torch import Tensor, nn


class Balancer(nn.Module):
    needs_task_grads: ClassVar[bool] = False
    grad_target: ClassVar[Optional[str]] = None
    extra_backward_passes: ClassVar[int] = 0
    needs_epoch_losses: ClassVar[bool] = False

    def __init__(self, task_names: Sequence[str]):
        super().__init__()
        if not task_names:
            raise ValueError("a balancer needs at least one task name")
        self.task_names = list(task_names)

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        """The scalar training loss from the per-task losses of one step."""
        raise NotImplementedError(f"{type(self).__name__} does not combine losses")

    def combine_grads(self, grads: Tensor, losses: Dict[str, Tensor]) -> Tensor:
        """Gradient-level methods: one update direction from per-task gradients [T, P]."""
        raise NotImplementedError(f"{type(self).__name__} does not combine gradients")

    def on_epoch_end(self, epoch: int, mean_losses: Dict[str, float]) -> None:
        """Called once per epoch when ``needs_epoch_losses`` is set."""

    def current_weights(self) -> Dict[str, float]:
        """Task weights in effect, for logging (loss weights over time)."""
        return {}

    def _weights_tensor(self, values: Dict[str, float], like: Tensor) -> Tensor:
        return torch.tensor([values[t] for t in self.task_names], dtype=like.dtype, device=like.device)

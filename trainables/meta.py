"""The meta-batch seam for bilevel balancers (``BalancerInfo.needs_meta_batch``, e.g. Auto-Lambda).

``fit`` holds out ``meta_fraction`` of the TRAINING split as a meta split (``split_meta``: a
seeded permutation; never val, which selects models, nor test), cycles a loader over it, and the
step calls ``balancer.meta_update(MetaContext)`` before the model's own update. The context gives
what a bilevel method needs without touching the model's state:

    losses(params, batch)   per-task losses of the model run functionally
                            (``torch.func.functional_call``) with ``params`` in place of its
                            parameters - e.g. after a virtual SGD step - on the labelled samples
    params                  the model's trainable parameters by name (the current point)
    lr, momentum, weight_decay, momentum_buffers   the optimiser's current state for a virtual step

BatchNorm running statistics are not updated by the functional passes (they run with a copy of
the buffers), so a meta update leaves the model exactly as it found it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from trainables.steps import labelled, task_losses
from trainables.tasks.base import Task


@dataclass
class MetaContext:
    """What ``Balancer.meta_update`` receives (see the module docstring)."""

    model: nn.Module                 # the bare model (DDP bypassed)
    tasks: Mapping[str, Task]
    batch: Mapping[str, Any]         # this step's training batch
    meta_batch: Mapping[str, Any]    # a batch of the meta split
    optimizer: torch.optim.Optimizer
    params: Dict[str, Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def momentum(self) -> float:
        return float(self.optimizer.param_groups[0].get("momentum", 0.0) or 0.0)

    @property
    def weight_decay(self) -> float:
        return float(self.optimizer.param_groups[0].get("weight_decay", 0.0) or 0.0)

    def momentum_buffer(self, name: str) -> Optional[Tensor]:
        """The SGD momentum buffer of parameter ``name`` (None before the first step, or for Adam)."""
        state = self.optimizer.state.get(self.params[name], {})
        return state.get("momentum_buffer")

    def losses(self, params: Mapping[str, Tensor], batch: Mapping[str, Any]) -> Dict[str, Tensor]:
        """Per-task losses (deep supervision included) of the model with ``params`` on ``batch``'s
        labelled samples; buffers are copied, so running statistics stay untouched."""
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        out = torch.func.functional_call(self.model, ({**dict(params), **buffers}), (batch["image"],))
        return task_losses(out, self.tasks, batch, labelled(out, self.tasks, batch))


def split_meta(dataset, fraction: float, seed: int) -> Tuple[Subset, Subset]:
    """(training part, meta part) of ``dataset``: ``round(fraction * N)`` items (at least one)
    chosen by a permutation seeded with ``seed``; both keep the dataset's item order."""
    n = len(dataset)
    k = max(1, int(round(fraction * n)))
    if k >= n:
        raise ValueError(f"meta split: {fraction} of {n} training items leaves none to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 104729)).tolist()
    meta = sorted(order[:k])
    train = sorted(order[k:])
    return Subset(dataset, train), Subset(dataset, meta)


def cycle(loader: DataLoader) -> Iterator[Any]:
    """Batches of ``loader`` forever (a new pass, reshuffled by its generator, when one ends)."""
    while True:
        yield from loader

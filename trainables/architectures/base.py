"""The multi-task model contract every architecture implements.

An architecture is built as

    ARCHITECTURES.get(name)(tasks, make_backbone, make_head, **params) -> MultiTaskModel

where ``tasks`` maps task name -> Task, ``make_backbone()`` returns a fresh backbone (see
``trainables.backbones``: ``stages``, ``stage_channels``, ``out_channels``, ...) and
``make_head(task, in_channels)`` a fresh head for that task. The caller (``trainables.models``)
decides which backbone and head; the architecture decides how many and how they connect.

What the train loop and the balancers rely on:
    forward(x) -> {task: output}: dense outputs at the input's H x W (bilinear,
        align_corners=False), image-level outputs [B, C].
    task_names: the tasks, in the order given.
    shared_parameters(): parameters every task uses (gradient-level balancers project on
        them); task_specific_parameters(task): the rest, split by task. Together they cover
        every parameter exactly once.
    has_shared_representation (class metadata): when True, ``encode(x) -> z`` gives the one
        shared feature tensor and ``decode(z, input_hw) -> {task: output}`` the outputs, with
        forward(x) == decode(encode(x), x.shape[-2:]). Balancers with grad_target
        "representation" (MGDA-UB, IAL) need it.
    last_shared_module(): the last shared layer (GradNorm's cheap variant takes gradient norms
        w.r.t. its weights).
    supports_multiple_tasks (class metadata): False for architectures that take exactly one task.
"""
from __future__ import annotations

from typing import Callable, ClassVar, Dict, Iterable, List, Mapping, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from trainables.tasks.base import Task

BackboneFactory = Callable[[], nn.Module]
HeadFactory = Callable[[Task, int], nn.Module]


class MultiTaskModel(nn.Module):
    """Base class of the architectures: stores the tasks, resizes outputs, checks the contract."""

    has_shared_representation: ClassVar[bool] = False
    supports_multiple_tasks: ClassVar[bool] = True

    def __init__(self, tasks: Mapping[str, Task]):
        super().__init__()
        if not tasks:
            raise ValueError(f"{type(self).__name__} needs at least one task, got none")
        for name, task in tasks.items():
            if task.name != name:
                raise ValueError(f"task registered under {name!r} has name {task.name!r}; they must match")
            if task.kind not in ("dense", "image"):
                raise ValueError(f"task {name!r} has kind {task.kind!r}; expected 'dense' or 'image'")
        self.tasks: Dict[str, Task] = dict(tasks)
        self.task_names: List[str] = list(tasks)

    # -- to implement ---------------------------------------------------------------------
    def shared_parameters(self) -> List[nn.Parameter]:
        raise NotImplementedError

    def task_specific_parameters(self, task: str) -> List[nn.Parameter]:
        raise NotImplementedError

    def last_shared_module(self) -> nn.Module:
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no single shared representation")

    def decode(self, z: Tensor, input_hw: Sequence[int]) -> Dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no single shared representation")

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        if not self.has_shared_representation:
            raise NotImplementedError(f"{type(self).__name__} must implement forward")
        return self.decode(self.encode(x), x.shape[-2:])

    # -- helpers for subclasses -----------------------------------------------------------
    def resize_outputs(self, outputs: Mapping[str, Tensor], input_hw: Sequence[int]) -> Dict[str, Tensor]:
        """Upsample dense outputs to ``input_hw`` (bilinear, align_corners=False)."""
        hw: Tuple[int, int] = (int(input_hw[0]), int(input_hw[1]))
        resized = {}
        for name, out in outputs.items():
            if self.tasks[name].kind == "dense" and tuple(out.shape[-2:]) != hw:
                out = F.interpolate(out, size=hw, mode="bilinear", align_corners=False)
            resized[name] = out
        return resized

    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise KeyError(f"unknown task {task!r}; this model's tasks are {self.task_names}")


def params_of(*modules: nn.Module) -> List[nn.Parameter]:
    """The parameters of ``modules``, each once, in module order."""
    seen, out = set(), []
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def last_parametrised_module(module: nn.Module) -> nn.Module:
    """The last submodule (in registration order) that owns parameters directly.

    For a ResNet's last stage this is the last block's last BatchNorm (``bn3`` of a
    Bottleneck); for ``tiny_cnn`` the last stage's BatchNorm.
    """
    last = None
    for m in module.modules():
        if any(True for _ in m.parameters(recurse=False)):
            last = m
    if last is None:
        raise ValueError(f"{type(module).__name__} has no parameters")
    return last


def last_stage(backbone: nn.Module) -> nn.Module:
    """The backbone's last stage, or the backbone itself when it exposes no ``stages``."""
    stages: Iterable[nn.Module] | None = getattr(backbone, "stages", None)
    return list(stages)[-1] if stages is not None else backbone

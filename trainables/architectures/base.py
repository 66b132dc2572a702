"""The multi-task model contract every architecture implements.

An architecture is built as

    ARCHITECTURES.get(name)(tasks, make_backbone, make_head, params) -> MultiTaskModel

where ``tasks`` maps task name -> Task, ``make_backbone()`` returns a fresh backbone (see
``trainables/backbones/base.py``: ``stages``, ``stage_channels``, ``features``, ...),
``make_head(task, in_channels, low_channels=None)`` a fresh head for that task (give
``low_channels``, the channels of the backbone's stride-4 features, when the architecture can
feed them; a head that needs them is refused without) and ``params`` an instance of the
architecture's ``Params`` dataclass (keyword arguments work too). The caller
(``trainables/build.py``) decides which backbone and head; the architecture decides how many
and how they connect. Its capabilities are a frozen ``ArchitectureInfo`` (``INFO``, or
``info_for(params)`` when a parameter changes them), readable without building the model.

What the train loop and the balancers rely on:
    forward(x) -> {task: output}: dense outputs at the input's H x W (bilinear,
        align_corners=False), image-level outputs [B, C]. With ``info.deep_supervision`` the
        output is a ``Predictions`` (still a dict of the final outputs) that also carries
        intermediate predictions ``aux`` = {task: [one per level]} and one loss weight per level
        (``aux_weights``); the step adds sum_k w_k * loss(aux_k) to each task's loss, so a
        balancer still sees one loss per task, and evaluation reads only the final outputs.
        Intermediate dense predictions may be at any resolution (the step upsamples them).
        With ``info.forward_per_task`` (ASTMT), ``forward(x, task=t)`` runs the network for
        task t alone and returns {t: output}; ``forward(x)`` runs every task, one pass each.
    task_names: the tasks, in the order given.
    shared_parameters(): parameters every task uses (gradient-level balancers project on
        them); task_specific_parameters(task): the rest, split by task. Together they cover
        every parameter exactly once.
    info.has_shared_representation: when True, ``encode(x) -> z`` gives the one shared
        feature tensor and ``decode(z, input_hw) -> {task: output}`` the outputs, with
        forward(x) == decode(encode(x), x.shape[-2:]), and every shared parameter lies in
        ``encode`` (the step trains what runs after z as task-specific). Balancers with
        grad_target "representation" (MGDA-UB, IAL) need it; the plan refuses the pair otherwise.
    last_shared_module(): the last shared layer with a weight matrix or kernel (a conv or a
        linear layer, not the BatchNorm after it) or, for soft-sharing models, the last mixing
        layer: GradNorm's cheap variant takes gradient norms w.r.t. its parameters.
    info.supports_multiple_tasks: False for architectures that take exactly one task.
    load_single_task(task, state): for ``info.init_from_single_task``: load a trained
        ``single_task`` network's state dict (``backbone.*``, ``heads.<task>.*``) into the part
        of this model that serves ``task``; keys that do not fit are a ValueError naming them.
    load_parent(state, parent_model): grow from a related model's trained weights (its state
        dict and ``ModelRef``), e.g. a branched tree from a coarser tree whose groups it refines.
    param_groups(): the parameters as optimiser groups with a learning-rate multiplier each
        (cross-stitch / NDDR units train at 100x the base rate); every parameter exactly once.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, Iterable, List, Mapping, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from trainables.plugins import ArchitectureInfo, Configurable
from trainables.tasks.base import Task

BackboneFactory = Callable[[], nn.Module]
HeadFactory = Callable[..., nn.Module]  # (task, in_channels, low_channels=None) -> head


class Predictions(dict):
    """A model's output: {task: final prediction} plus intermediate predictions for deep supervision.

    Attributes:
        aux: task -> [prediction at level 0, level 1, ...] (a task may have fewer levels than
            ``aux_weights``; dense ones at any resolution).
        aux_weights: the loss weight of each level, the same for every task (0 turns a level's
            supervision off without changing the graph: its gradient is exactly zero).
    """

    def __init__(self, final: Mapping[str, Tensor], aux: Mapping[str, Sequence[Tensor]] | None = None,
                 aux_weights: Sequence[float] = ()):
        super().__init__(final)
        self.aux: Dict[str, List[Tensor]] = {t: list(preds) for t, preds in (aux or {}).items()}
        self.aux_weights: Tuple[float, ...] = tuple(float(w) for w in aux_weights)
        for task, preds in self.aux.items():
            if task not in self:
                raise ValueError(f"intermediate predictions for {task!r}, which has no final prediction")
            if len(preds) > len(self.aux_weights):
                raise ValueError(f"task {task!r} has {len(preds)} levels of intermediate predictions but only "
                                 f"{len(self.aux_weights)} level weights were given")

    def __reduce__(self):  # keep aux through pickling (DDP and Ray never need it, but copies should)
        return (Predictions, (dict(self), self.aux, self.aux_weights))


def check_level_weights(weights: Sequence[float], levels: int, where: str) -> Tuple[float, ...]:
    """``weights`` as one float per level: a single value is used at every level."""
    weights = tuple(float(w) for w in weights)
    if len(weights) == 1:
        weights = weights * levels
    if len(weights) != levels:
        raise ValueError(f"{where}: {len(weights)} weights given for {levels} levels of intermediate predictions; "
                         f"give one value or {levels}")
    if any(w < 0 for w in weights):
        raise ValueError(f"{where}: weights must be >= 0, got {list(weights)}")
    return weights


class MultiTaskModel(nn.Module, Configurable):
    """Base class of the architectures: stores the tasks, resizes outputs, checks the contract."""

    INFO: ClassVar[ArchitectureInfo] = ArchitectureInfo()

    def __init__(self, tasks: Mapping[str, Task], params: Any = None, **kwargs: Any):
        super().__init__()
        self.params = self.resolve_params(params, kwargs)
        self.info: ArchitectureInfo = self.info_for(self.params)
        if not tasks:
            raise ValueError(f"{self.label()} needs at least one task, got none")
        if not self.info.supports_multiple_tasks and len(tasks) != 1:
            raise ValueError(f"{self.label()} takes exactly one task, got {len(tasks)}: {list(tasks)}; "
                             "train one model per task instead")
        for name, task in tasks.items():
            if task.name != name:
                raise ValueError(f"task registered under {name!r} has name {task.name!r}; they must match")
            if task.kind not in ("dense", "image"):
                raise ValueError(f"task {name!r} has kind {task.kind!r}; expected 'dense' or 'image'")
            if self.info.dense_only and task.kind != "dense":
                raise ValueError(f"{self.label()} exchanges information between per-pixel task features and takes "
                                 f"dense tasks only; task {name!r} is image-level")
        self.tasks: Dict[str, Task] = dict(tasks)
        self.task_names: List[str] = list(tasks)

    @classmethod
    def info_for(cls, params: Any) -> ArchitectureInfo:
        """The capabilities of this architecture with ``params`` (override when a parameter changes them)."""
        return cls.INFO

    has_shared_representation = property(lambda self: self.info.has_shared_representation)

    # -- to implement ---------------------------------------------------------------------
    def shared_parameters(self) -> List[nn.Parameter]:
        raise NotImplementedError

    def task_specific_parameters(self, task: str) -> List[nn.Parameter]:
        raise NotImplementedError

    def last_shared_module(self) -> nn.Module:
        raise NotImplementedError

    def load_single_task(self, task: str, state: Mapping[str, Tensor]) -> None:
        raise NotImplementedError(f"{self.label()} does not start from single-task networks")

    def load_parent(self, state: Mapping[str, Tensor], parent_model: Any) -> None:
        raise NotImplementedError(f"{self.label()} does not grow from another model")

    def param_groups(self) -> List[Dict[str, Any]]:
        """[{"name", "params", "lr_mult"}]: one group at the base learning rate by default."""
        return [{"name": "model", "params": [p for p in self.parameters()], "lr_mult": 1.0}]

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no single shared representation")

    def decode(self, z: Tensor, input_hw: Sequence[int]) -> Dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no single shared representation")

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        if not self.info.has_shared_representation:
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


def last_weight_layer(module: nn.Module) -> nn.Module:
    """The last submodule (in registration order) whose own ``weight`` is a matrix or a kernel.

    That is the last conv or linear layer, not a BatchNorm after it: for a ResNet's last stage
    the last block's last conv (``conv3`` of a Bottleneck, ``conv2`` of a BasicBlock); for
    ``tiny_cnn`` the last stage's second conv.
    """
    last = None
    for m in module.modules():
        weight = getattr(m, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() >= 2:
            last = m
    if last is None:
        raise ValueError(f"{type(module).__name__} has no conv or linear layer")
    return last


def last_stage(backbone: nn.Module) -> nn.Module:
    """The backbone's last stage, or the backbone itself when it exposes no ``stages``."""
    stages: Iterable[nn.Module] | None = getattr(backbone, "stages", None)
    return list(stages)[-1] if stages is not None else backbone

"""The builders: plug-in references (``trainables/plugins.py``) -> objects, for every kind.

The control plane (planning, complexity counting, reports) and the train loop build here and
nowhere else. Every plug-in's parameters go through ``params_of`` (``make_params``) against the plug-in's own
``Params`` dataclass before anything is allocated, so a bad key or value fails first and names
the plug-in; unknown names raise the registry's error, which lists the valid ones.

To count the size of a full-resolution model without allocating it, build it on the meta
device: ``with torch.device("meta"): model = build_model(tasks, ref)`` (see ``complexity.py``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from torch import nn

import trainables  # noqa: F401  (registers every built-in plug-in)
from trainables.architectures.base import MultiTaskModel
from trainables.balancers.base import Balancer
from trainables.datasets.base import DatasetInfo, make_tasks
from trainables.plugins import ArchitectureInfo, BalancerInfo, ModelRef, Plugin, RegulariserInfo, RunContext
from trainables.registry import ARCHITECTURES, BACKBONES, BALANCERS, DATASETS, HEADS, REGULARISERS, Registry
from trainables.tasks.base import Task

IMAGE_HEAD = Plugin("linear")  # the head of every image-level task (task.kind == "image")
Ref = Union[Plugin, str, Mapping[str, Any]]


def params_for(registry: Registry, ref: Ref, where: str = "") -> Any:
    """The checked ``Params`` instance of plug-in ``ref`` (unknown name or key: an error naming it)."""
    ref = Plugin.of(ref, where or registry.kind)
    return registry.get(ref.name).params_of(ref.params)


# -- datasets and tasks ---------------------------------------------------------------------------
def describe_dataset(ref: Ref) -> DatasetInfo:
    """What dataset ``ref`` offers (tasks, input size, batch sizes); reads no data."""
    ref = Plugin.of(ref, "dataset")
    return DATASETS.get(ref.name).describe(**ref.params)


def build_dataset(ref: Ref, root, split: str, tasks: Sequence[str], augment: bool = False):
    """The ``split`` of dataset ``ref`` under ``root`` serving ``tasks``."""
    ref = Plugin.of(ref, "dataset")
    return DATASETS.get(ref.name)(root=root, split=split, tasks=list(tasks), augment=augment, **ref.params)


def build_tasks(dataset: Ref, names: Sequence[str], auxiliary: Sequence[str] = ()) -> Dict[str, Task]:
    """Task plug-ins for ``names`` as dataset ``dataset`` describes them; those in ``auxiliary``
    get ``task.auxiliary = True`` (trained, not scored: architectures such as PAD-Net give them
    initial predictions only)."""
    info = describe_dataset(dataset)
    missing = [n for n in names if n not in info.tasks]
    if missing:
        raise ValueError(f"tasks: {missing} not offered by dataset {info.name!r}; it offers {sorted(info.tasks)}")
    tasks = make_tasks(info, names)
    for name in auxiliary:
        tasks[name].auxiliary = True
    return tasks


def primary_directions(tasks: Mapping[str, Task]) -> Dict[str, bool]:
    """"task/metric" -> higher_is_better, for each scored task's primary metric (auxiliary
    tasks are left out: they are not part of Delta_m)."""
    return {f"{n}/{t.primary_metric}": t.higher_is_better for n, t in tasks.items() if not t.auxiliary}


# -- models -----------------------------------------------------------------------------------------
def build_model(tasks: Mapping[str, Task], model: Union[ModelRef, Mapping[str, Any]] = ModelRef()) -> MultiTaskModel:
    """The architecture of ``model`` over ``tasks``: dense tasks get ``model.head``, image-level
    tasks the ``linear`` head. Every plug-in's parameters, and the pairs they form, are checked
    before anything is built; an impossible pair is a ValueError naming both plug-ins."""
    if not tasks:
        raise ValueError("build_model needs at least one task")
    if not isinstance(model, ModelRef):
        model = ModelRef(**model)
    arch_cls = ARCHITECTURES.get(model.architecture.name)
    arch_params = params_for(ARCHITECTURES, model.architecture)
    backbone_cls, backbone_params = BACKBONES.get(model.backbone.name), params_for(BACKBONES, model.backbone)
    head_cls, head_params = HEADS.get(model.head.name), params_for(HEADS, model.head)
    image_cls, image_params = HEADS.get(IMAGE_HEAD.name), params_for(HEADS, IMAGE_HEAD)
    a, b, h = model.architecture.name, model.backbone.name, model.head.name
    if (arch_cls.info_for(arch_params).needs_sequential_stages
            and not backbone_cls.info_for(backbone_params).sequential_stages):
        raise ValueError(f"architecture {a!r} mixes features between backbone stages, but backbone {b!r} has no "
                         "sequential stages; use a ResNet or tiny_cnn backbone")
    head_info = head_cls.info_for(head_params)
    low_level = head_info.low_level
    if arch_cls.info_for(arch_params).needs_multi_scale and len(set(_strides(backbone_cls, backbone_params))) < 4:
        raise ValueError(f"architecture {a!r} reads four scales of features, but backbone {b!r} has fewer distinct "
                         "strides; use hrnet18 or an undilated ResNet")

    def make_backbone() -> nn.Module:
        return backbone_cls(params=backbone_params)

    def make_head(task: Task, in_channels: int, low_channels: Optional[int] = None,
                  scale_channels: Optional[Sequence[int]] = None) -> nn.Module:
        if task.kind == "image":
            return image_cls(in_channels, task.out_channels, params=image_params)
        if head_info.multi_scale:
            if scale_channels is None:
                raise ValueError(f"head {h!r} reads every scale of the backbone's features, but architecture {a!r} "
                                 "feeds its heads one feature map; use a single-scale head (conv, aspp) or an "
                                 "architecture that feeds multi-scale features (mtl_baseline, single_task)")
            return head_cls(list(scale_channels), task.out_channels, params=head_params)
        if not low_level:
            return head_cls(in_channels, task.out_channels, params=head_params)
        if low_channels is None:
            raise ValueError(f"head {h!r} needs the backbone's stride-4 features, but architecture {a!r} on backbone "
                             f"{b!r} does not feed them to its heads (the backbone has no stage at output stride 4, "
                             "or the architecture has no such skip); use a ResNet backbone with an architecture that "
                             "feeds the skip (mtl_baseline, cross_stitch, ...) or a head without one (aspp, psp)")
        return head_cls(in_channels, task.out_channels, params=head_params, low_channels=low_channels)

    return arch_cls(dict(tasks), make_backbone, make_head, params=arch_params)


def _strides(backbone_cls, backbone_params) -> List[int]:
    """The backbone's stage strides, from a meta-device build (nothing allocated)."""
    import torch

    with torch.device("meta"):
        return list(backbone_cls(params=backbone_params).stage_strides)


def prepare_model(model: ModelRef) -> None:
    """Driver-side work a model needs before Ray starts (e.g. fetching pretrained backbone
    weights); a ValueError names the plug-in and the fix."""
    BACKBONES.get(model.backbone.name).prepare(params_for(BACKBONES, model.backbone))


def architecture_info(ref: Ref) -> ArchitectureInfo:
    """The capabilities of architecture ``ref``, from its class and params (nothing is built)."""
    ref = Plugin.of(ref, "architecture")
    return ARCHITECTURES.get(ref.name).info_for(params_for(ARCHITECTURES, ref))


# -- balancers --------------------------------------------------------------------------------------
def build_balancer(ref: Ref, task_names: Sequence[str], context: RunContext = RunContext()) -> Balancer:
    """Balancer ``ref`` over ``task_names``, told the run's ``context`` (primary task, seed)."""
    ref = Plugin.of(ref, "balancer")
    return BALANCERS.get(ref.name)(list(task_names), params=params_for(BALANCERS, ref), context=context)


def balancer_info(ref: Ref) -> BalancerInfo:
    """The needs of balancer ``ref``, from its class and params (nothing is built)."""
    ref = Plugin.of(ref, "balancer")
    return BALANCERS.get(ref.name).info_for(params_for(BALANCERS, ref))


# -- regularisers -----------------------------------------------------------------------------------
def build_regularisers(refs: Sequence[Ref], tasks: Mapping[str, Task], context: RunContext = RunContext()) -> nn.ModuleList:
    """Regularisers ``refs`` over ``tasks`` (the model's tasks, auxiliary ones included)."""
    built = nn.ModuleList()
    for i, ref in enumerate(refs):
        ref = Plugin.of(ref, f"regularisers[{i}]")
        built.append(REGULARISERS.get(ref.name)(dict(tasks), params=params_for(REGULARISERS, ref), context=context))
    return built


def regulariser_info(ref: Ref) -> RegulariserInfo:
    """The needs of regulariser ``ref``, from its class and params (nothing is built)."""
    ref = Plugin.of(ref, "regulariser")
    return REGULARISERS.get(ref.name).info_for(params_for(REGULARISERS, ref))

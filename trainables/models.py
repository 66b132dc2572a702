"""The adapter that builds a multi-task model from plug-in names and their parameters.

``build_model`` is the one place that turns a spec (architecture, backbone, head names and
their keyword arguments) into modules: dense tasks get the ``head`` plug-in, image-level tasks
(``task.kind == "image"``) get ``linear``. Unknown names raise the registry's error (which
lists the valid names); unknown keyword arguments raise ``TypeError`` and invalid values
``ValueError``, both naming the plug-in, before anything is built.

To count the size of a full-resolution model without allocating it, build it on the meta
device: ``with torch.device("meta"): model = build_model(...)`` (see ``complexity.py``).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Optional

from torch import nn

import trainables.architectures  # noqa: F401  (registers the plug-ins used below)
import trainables.backbones  # noqa: F401
import trainables.heads  # noqa: F401
from trainables.architectures.base import MultiTaskModel
from trainables.registry import ARCHITECTURES, BACKBONES, HEADS, Registry
from trainables.tasks.base import Task

IMAGE_HEAD = "linear"


def build_model(
    tasks: Mapping[str, Task],
    architecture: str = "mtl_baseline",
    backbone: str = "tiny_cnn",
    backbone_params: Optional[Dict[str, Any]] = None,
    head: str = "conv",
    head_params: Optional[Dict[str, Any]] = None,
    architecture_params: Optional[Dict[str, Any]] = None,
) -> MultiTaskModel:
    """Build ``architecture`` over ``tasks`` from registered plug-ins.

    Args:
        tasks: task name -> Task (each ``task.name`` equal to its key).
        architecture, backbone, head: registered names (``mtl list <kind>``).
        backbone_params, head_params, architecture_params: keyword arguments of those plug-ins.
            ``head_params`` apply to the dense tasks' heads only.
    """
    if not tasks:
        raise ValueError("build_model needs at least one task")
    backbone_params = dict(backbone_params or {})
    head_params = dict(head_params or {})
    architecture_params = dict(architecture_params or {})

    # Validate names and keyword names up front, so a bad spec fails before any allocation.
    arch_cls = ARCHITECTURES.get(architecture)
    _check_kwargs(ARCHITECTURES, architecture, arch_cls, architecture_params, n_positional=3)
    _check_kwargs(BACKBONES, backbone, BACKBONES.get(backbone), backbone_params, n_positional=0)
    _check_kwargs(HEADS, head, HEADS.get(head), head_params, n_positional=2)
    if any(task.kind == "image" for task in tasks.values()):
        HEADS.get(IMAGE_HEAD)

    def make_backbone() -> nn.Module:
        return _build(BACKBONES, backbone, **backbone_params)

    def make_head(task: Task, in_channels: int) -> nn.Module:
        if task.kind == "image":
            return _build(HEADS, IMAGE_HEAD, in_channels, task.out_channels)
        return _build(HEADS, head, in_channels, task.out_channels, **head_params)

    return _build(ARCHITECTURES, architecture, dict(tasks), make_backbone, make_head, **architecture_params)


def _build(registry: Registry, name: str, *args: Any, **params: Any) -> Any:
    """``registry.get(name)(*args, **params)``, with errors that name the plug-in."""
    factory = registry.get(name)
    _check_kwargs(registry, name, factory, params, n_positional=len(args))
    try:
        return factory(*args, **params)
    except (TypeError, ValueError) as err:
        label = f"{registry.kind} {name!r}"
        if str(err).startswith(label) or str(err).startswith(f"{name}:"):
            raise
        cls = TypeError if isinstance(err, TypeError) else ValueError
        raise cls(f"{label}: {err}") from err


def _check_kwargs(
    registry: Registry, name: str, factory: Callable[..., Any], params: Mapping[str, Any], n_positional: int
) -> None:
    """Raise TypeError naming the plug-in if ``params`` has keywords ``factory`` does not take."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # not introspectable: let the call itself complain
        return
    accepted = []
    positional_left = n_positional
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return
        if p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL):
            positional_left -= 1
            continue
        if p.kind is p.POSITIONAL_OR_KEYWORD and positional_left > 0:
            positional_left -= 1
            continue
        accepted.append(p.name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(
            f"{registry.kind} {name!r} got unknown parameter(s) {unknown}; "
            f"valid parameters: {', '.join(accepted) or '(none)'}"
        )

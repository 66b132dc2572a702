"""What every plug-in kind shares: one reference type, typed parameters, capabilities, a run context.

``Plugin(name, params)`` is how a plug-in is named everywhere - in a study spec, in a dataset's
description of its tasks, in ``TrialConfig`` and in the builders (``trainables/build.py``).
``ModelRef`` groups the three plug-ins that make a model (architecture, backbone, head) into one
value. Each plug-in class declares ``Params``, a frozen dataclass that is the single source of
its keyword arguments; ``make_params`` is the one check of a plug-in's keyword arguments for every
kind (unknown keys are rejected with the accepted ones listed). Balancers and architectures also
declare their capabilities as frozen ``BalancerInfo`` / ``ArchitectureInfo`` values, computed from
class + params without building anything, so a plan can reject an impossible pair before Ray
starts. ``RunContext`` carries what a run knows and a plug-in may use (the primary task, the
seed), passed explicitly instead of guessed from constructor signatures.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple

from trainables.schema import ConfigError, from_plain, to_plain


@dataclass(frozen=True)
class Plugin:
    """A registered plug-in by name, with its parameters (keys of the plug-in's ``Params``)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name: a plug-in name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.params, Mapping):
            raise ConfigError(f"params: expected a mapping of parameter names to values, got {self.params!r}")
        object.__setattr__(self, "params", dict(self.params))

    @classmethod
    def coerce(cls, value: Any, where: str = "plug-in") -> Any:
        """The shorthand "fixed" for {name: fixed}; everything else is left to ``from_plain``."""
        return {"name": value} if isinstance(value, str) else value

    @classmethod
    def of(cls, value: Any, where: str = "plug-in") -> "Plugin":
        """A Plugin from a Plugin, a name, or a {name, params} mapping."""
        return from_plain(cls, cls.coerce(value, where), where)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "params": to_plain(self.params)}


@dataclass(frozen=True)
class ModelRef:
    """The model's identity: an architecture over a backbone, with a head per dense task.

    Image-level tasks always get the ``linear`` head (see ``trainables/build.py``).
    """

    architecture: Plugin = Plugin("mtl_baseline")
    backbone: Plugin = Plugin("tiny_cnn")
    head: Plugin = Plugin("conv")

    def __post_init__(self) -> None:
        for name in ("architecture", "backbone", "head"):
            object.__setattr__(self, name, Plugin.of(getattr(self, name), name))

    def to_dict(self) -> Dict[str, Any]:
        return {"architecture": self.architecture.to_dict(), "backbone": self.backbone.to_dict(),
                "head": self.head.to_dict()}


@dataclass(frozen=True)
class RunContext:
    """What a run tells the plug-ins that use it.

    Attributes:
        primary_task: the study's (or experiment's) primary task; the others are auxiliary.
        seed: the trial's seed (plug-ins with their own random streams seed them from it).
    """

    primary_task: Optional[str] = None
    seed: int = 0


@dataclass(frozen=True)
class NoParams:
    """The ``Params`` of a plug-in without parameters."""


def make_params(params_cls: type, values: Any, label: str):
    """The one check of a plug-in's keyword arguments, for every kind.

    Args:
        params_cls: the plug-in's frozen ``Params`` dataclass.
        values: a mapping of keyword arguments, or an instance of ``params_cls`` (kept).
        label: names the plug-in in errors, e.g. "balancer 'mgda'".
    Raises:
        ConfigError naming the plug-in and the key, listing the accepted keys for an unknown one.
    """
    if isinstance(values, params_cls):
        return values
    return from_plain(params_cls, dict(values or {}), label)


class Configurable:
    """Mixin of plug-in classes: ``Params`` declares the keyword arguments; ``params_of`` checks
    a mapping of them (or passes a ``Params`` instance through); ``resolve_params`` takes either
    a ``Params`` instance or the keyword arguments (never both)."""

    Params: ClassVar[type] = NoParams
    plugin_kind: ClassVar[str] = "plug-in"  # set by the registry at registration
    plugin_name: ClassVar[str] = ""

    @classmethod
    def label(cls) -> str:
        return f"{cls.plugin_kind} {cls.plugin_name or cls.__name__!r}"

    @classmethod
    def params_of(cls, values: Any):
        return make_params(cls.Params, values, cls.label())

    @classmethod
    def resolve_params(cls, params: Any = None, kwargs: Optional[Mapping[str, Any]] = None):
        if params is not None and kwargs:
            raise TypeError(f"{cls.label()}: give params or keyword arguments, not both")
        return cls.params_of(params if params is not None else kwargs)


# -- capabilities ---------------------------------------------------------------------------------
GRAD_TARGETS = (None, "params", "representation")
GRAD_SCOPES = ("shared", "last_shared")


@dataclass(frozen=True)
class RegulariserInfo:
    """What a regulariser needs from the step and the data (``trainables/regularisers/base.py``).

    Attributes:
        views: images per training sample the step runs the model on: 1 is the (augmented)
            training image itself; V > 1 adds V - 1 photometric re-augmentations of it (same
            geometry, so they share its labels), made by the ``Views`` dataset wrapper and run
            through the model in the same forward pass (consistency regularisation: 2).
        needs_features: the model's shared representation z of view 0 (MTPSL's feature
            regulariser); the plan refuses it on an architecture without one.
        needs_teachers: the study's cached single-task networks of each task, trained on the
            same labels, as frozen teachers (MuST's pseudo-labels).
        extra_labels: labels the training split must load besides the model's tasks' (MGM's
            image-level "scene" label); they reach ``batch["targets"]`` / ``batch["mask"]`` but
            no loss of the model. The plan checks that the dataset offers them.
        needs_model: the bare model is handed over before training (``Regulariser.attach``), to
            run its encoder on images of the regulariser's own (augmented views, generated
            images); like ``needs_features`` the step then bypasses DDP and averages itself.
        weak_stream: a second stream of training batches, cycled, of the images that keep no
            label of the model's tasks (MGM_r's weakly labelled real images); it is handed to
            ``update`` and ``extend_batch``.
    """

    views: int = 1
    needs_features: bool = False
    needs_teachers: bool = False
    extra_labels: Tuple[str, ...] = ()
    needs_model: bool = False
    weak_stream: bool = False

    def summary(self) -> str:
        parts = [f"{self.views} views" if self.views > 1 else "one view"]
        parts += [text for flag, text in ((self.needs_features, "needs the shared features"),
                                          (self.needs_teachers, "needs single-task teachers"),
                                          (self.needs_model, "runs the model's encoder itself"),
                                          (self.weak_stream, "reads the images without dense labels"))
                  if flag]
        if self.extra_labels:
            parts.append(f"needs label(s) {', '.join(self.extra_labels)}")
        return "; ".join(parts)


@dataclass(frozen=True)
class BalancerInfo:
    """What a balancer needs from the step (``trainables/steps.py`` branches on these only).

    Attributes:
        needs_task_grads: per-task gradients are required (gradient-level methods).
        grad_target: "params" (w.r.t. the shared parameters) or "representation" (w.r.t. the
            shared feature z; needs an architecture with a shared representation); None for
            loss-level methods.
        grad_scope: for "params": "shared" (all shared parameters) or "last_shared" (the last
            shared layer, ``model.last_shared_module()``).
        backward_per_task: one backward pass through the shared encoder per task, i.e. T - 1
            more than a weighted sum needs (documentation and benchmark).
        needs_epoch_losses: ``on_epoch_end`` receives each task's mean training loss of the epoch.
        needs_outputs: ``observe_outputs`` receives the labelled samples' outputs and targets.
        needs_primary_task: the run context must name a primary task (auxiliary learning).
        needs_meta_batch: bilevel methods (Auto-Lambda): every step first calls
            ``meta_update(MetaContext)`` with a batch of a meta split that ``fit`` carves out of
            the training split (``meta_fraction`` of it; never val, which selects models), a
            functional forward of the model and the optimiser's state.
        meta_fraction: the share of the training split held out as the meta split.
    """

    needs_task_grads: bool = False
    grad_target: Optional[str] = None
    grad_scope: str = "shared"
    backward_per_task: bool = False
    needs_epoch_losses: bool = False
    needs_outputs: bool = False
    needs_primary_task: bool = False
    needs_meta_batch: bool = False
    meta_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.meta_fraction < 1.0:
            raise ValueError(f"meta_fraction {self.meta_fraction!r} must be in (0, 1)")
        if self.grad_target not in GRAD_TARGETS:
            raise ValueError(f"grad_target {self.grad_target!r} is not one of {GRAD_TARGETS}")
        if self.needs_task_grads != (self.grad_target is not None):
            raise ValueError("needs_task_grads and grad_target go together: a gradient-level balancer names "
                             "its grad_target, a loss-level one has none")
        if self.grad_scope not in GRAD_SCOPES:
            raise ValueError(f"grad_scope {self.grad_scope!r} is not one of {GRAD_SCOPES}")

    def summary(self) -> str:
        if not self.needs_task_grads:
            parts = ["loss level"]
        elif self.grad_target == "representation":
            parts = ["task gradients w.r.t. the shared representation"]
        else:
            parts = ["task gradients w.r.t. the " + ("last shared layer" if self.grad_scope == "last_shared"
                                                     else "shared parameters")]
        if self.backward_per_task:
            parts.append("+(T-1) encoder backward passes")
        parts += [text for flag, text in ((self.needs_epoch_losses, "epoch losses"), (self.needs_outputs, "outputs"),
                                          (self.needs_primary_task, "a primary task"),
                                          (self.needs_meta_batch, f"a meta batch ({self.meta_fraction:g} of train)")) if flag]
        return "; ".join(parts)


@dataclass(frozen=True)
class ArchitectureInfo:
    """What an architecture offers to the step and the plan.

    Attributes:
        has_shared_representation: ``encode(x) -> z`` gives the shared features (a tensor, or a
            tuple of tensors) and ``decode(z, hw)`` the outputs (representation-level balancers
            need it).
        supports_multiple_tasks: False for architectures that take exactly one task.
        init_from_single_task: the model starts from the study's single-task networks
            (``load_single_task``); the study passes each task's best cached baseline.
        needs_sequential_stages: the model mixes or attends between the backbone's stages
            (``BackboneInfo.sequential_stages``).
        accepts_grouping: the model's shape (its ``tree`` parameter) can come from a task-grouping
            search run by the study before training (``ExperimentSpec.grouping``).
        deep_supervision: the model's output carries intermediate predictions
            (``Predictions.aux``) that the step adds to each task's loss with per-level weights.
        forward_per_task: the model serves one task per forward pass (``forward(x, task=t)``;
            ASTMT's attentive single-tasking): the step runs the tasks one at a time on the
            bare model and averages the gradients itself.
        needs_multi_scale: the model reads several of the backbone's feature maps
            (``features(x)``: MTI-Net's four HRNet scales).
        dense_only: every task must be a dense (per-pixel) task: the model exchanges
            information between tasks' feature maps (PAD-Net, PAP-Net, JTRL, MTI-Net).
        task_count: the exact number of tasks (auxiliary ones included) the model takes, e.g.
            2 for JTRL's alternating pair; None: any number.
    """

    has_shared_representation: bool = False
    supports_multiple_tasks: bool = True
    init_from_single_task: bool = False
    needs_sequential_stages: bool = False
    accepts_grouping: bool = False
    deep_supervision: bool = False
    forward_per_task: bool = False
    needs_multi_scale: bool = False
    dense_only: bool = False
    task_count: Optional[int] = None

    def summary(self) -> str:
        parts = ["shared representation" if self.has_shared_representation else "no single shared representation",
                 "multi-task" if self.supports_multiple_tasks else "one task only"]
        parts += [text for flag, text in ((self.init_from_single_task, "starts from the single-task networks"),
                                          (self.needs_sequential_stages, "needs sequential backbone stages"),
                                          (self.accepts_grouping, "shape from a grouping search"),
                                          (self.deep_supervision, "deep supervision"),
                                          (self.forward_per_task, "one forward pass per task"),
                                          (self.needs_multi_scale, "reads multi-scale features"),
                                          (self.dense_only, "dense tasks only"),
                                          (self.task_count is not None, f"exactly {self.task_count} tasks")) if flag]
        return "; ".join(parts)


__all__ = ["ArchitectureInfo", "BalancerInfo", "RegulariserInfo", "ConfigError", "Configurable", "ModelRef", "NoParams", "Plugin",
           "RunContext", "make_params"]

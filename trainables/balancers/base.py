"""The balancer contract: how per-task losses (and, for some methods, gradients) become one update.

A balancer is an ``nn.Module`` (so learnable weights and buffers checkpoint with the model)
built as ``cls(task_names, params, context)``: ``params`` is an instance of the balancer's own
frozen ``Params`` dataclass (the single source of its hyper-parameters; keyword arguments work
too, ``cls(task_names, alpha=1.0)``) and ``context`` the run's ``RunContext`` (primary task,
seed). What a balancer needs from the step is its frozen ``BalancerInfo``
(``trainables/plugins.py``), computed from class + params by ``info_for`` without building the
balancer, so a plan can check a balancer against an architecture before anything runs. The step
(``trainables/steps.py``) serves those needs generically - it never branches on a name:

    needs_task_grads / grad_target   per-task gradients w.r.t. the shared parameters ("params")
                                     or the shared feature z ("representation", e.g. MGDA-UB, IAL)
    grad_scope                       for "params": all shared parameters or the last shared layer
    needs_epoch_losses               ``on_epoch_end`` gets each task's mean training loss
    needs_outputs                    ``observe_outputs`` gets the labelled outputs and targets
    needs_primary_task               the context names a primary task (auxiliary learning)

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

from torch import Tensor, nn

from trainables.plugins import BalancerInfo, Configurable, RunContext


class Balancer(nn.Module, Configurable):
    INFO: ClassVar[BalancerInfo] = BalancerInfo()

    def __init__(self, task_names: Sequence[str], params: Any = None, context: Optional[RunContext] = None,
                 **kwargs: Any):
        super().__init__()
        if not task_names:
            raise ValueError(f"{self.label()}: a balancer needs at least one task name")
        self.task_names = list(task_names)
        self.params = self.resolve_params(params, kwargs)
        self.context = context or RunContext()
        self.info: BalancerInfo = self.info_for(self.params)

    @classmethod
    def info_for(cls, params: Any) -> BalancerInfo:
        """The capabilities of this balancer with ``params`` (override when a parameter changes them)."""
        return cls.INFO

    # read-only views of ``info``, for readers of a built balancer
    needs_task_grads = property(lambda self: self.info.needs_task_grads)
    grad_target = property(lambda self: self.info.grad_target)
    grad_scope = property(lambda self: self.info.grad_scope)
    needs_epoch_losses = property(lambda self: self.info.needs_epoch_losses)
    needs_outputs = property(lambda self: self.info.needs_outputs)

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

    # -- bilevel methods --------------------------------------------------------------------------
    def meta_update(self, ctx: "MetaContext") -> None:  # noqa: F821  (trainables/meta.py)
        """With ``needs_meta_batch``: called every step before the model's update, after the
        gradients were zeroed; writes the balancer's own gradients (e.g. Auto-Lambda's
        hypergradient of its task weights) for the step's optimiser to apply."""
        raise NotImplementedError(f"{self.label()} declares needs_meta_batch but has no meta_update")

    def param_groups(self) -> List[Dict[str, Any]]:
        """[{"name", "params", "lr_mult", "weight_decay"}]: the balancer's own parameters (task
        weights, log-variances) at the base rate and without weight decay, which would pull them
        towards 0 (uncertainty's log-variances, Auto-Lambda's weights)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"name": self.label(), "params": params, "lr_mult": 1.0, "weight_decay": 0.0}] if params else []

    # -- hooks ----------------------------------------------------------------------------------
    def on_epoch_end(self, epoch: int, mean_losses: Dict[str, float]) -> None:
        """Called once per epoch when ``needs_epoch_losses`` is set."""

    def observe_outputs(self, outputs: Dict[str, Tensor], targets: Dict[str, Tensor]) -> None:
        """Called before ``combine`` when ``needs_outputs`` is set (labelled samples only)."""

    def current_weights(self) -> Dict[str, float]:
        """Task weights in effect, for logging (loss weights over time)."""
        return {}

    # -- helpers --------------------------------------------------------------------------------
    def per_task(self, values: Tensor, prefix: str = "") -> Dict[str, float]:
        """A vector over ``task_names`` as {prefix + task: value} (``current_weights``' form)."""
        values = values.detach()
        return {f"{prefix}{t}": float(values[i]) for i, t in enumerate(self.task_names)}

    def present(self, losses: Dict[str, Tensor]) -> List[str]:
        """The tasks of ``losses`` in the balancer's order (the rows of gradient matrices)."""
        return [t for t in self.task_names if t in losses]

    def resolve_primary_task(self, given: Optional[str], why: str = "") -> str:
        """The primary task: ``given`` (the balancer's own parameter) or else the run's; an error
        naming the fix when there is none, or when it is not one of the tasks."""
        primary_task = given or self.context.primary_task
        if primary_task is None:
            raise ValueError(f"{self.label()}: primary_task is required{why} - set the study's primary_task or the "
                             f"balancer parameter primary_task to one of {self.task_names}")
        if primary_task not in self.task_names:
            raise ValueError(f"{self.label()}: primary_task {primary_task!r} is not one of the tasks {self.task_names}")
        return primary_task

    def _check_known(self, mapping, what: str) -> None:
        unknown = sorted(set(mapping) - set(self.task_names))
        if unknown:
            raise ValueError(f"{self.label()}: {what} given for unknown tasks {unknown}; "
                             f"the study's tasks are {self.task_names}")


# -- validation helpers for the plug-ins' hyper-parameter dataclasses ------------------------------
def check_choice(balancer: str, field: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"balancer {balancer!r}: {field} must be one of {tuple(choices)}, got {value!r}")


def check_number(balancer: str, field: str, value: Any, ok: Callable[[float], bool] = lambda v: True,
                 requirement: str = "a finite number", integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"balancer {balancer!r}: {field} must be {requirement}, got {value!r}")

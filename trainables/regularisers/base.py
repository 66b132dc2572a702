"""The regulariser contract: cross-task losses on every output, added outside the balancer.

A regulariser is an ``nn.Module`` built as ``cls(tasks, params, context)``: ``tasks`` maps task
name -> Task (the study's tasks, auxiliary ones included), ``params`` an instance of its frozen
``Params`` dataclass (keyword arguments work too) and ``context`` the run's ``RunContext``. What
it needs from the step is its frozen ``RegulariserInfo`` (``trainables/plugins.py``), readable
from class + params without building it: how many views of each training image
(``views``), the shared features (``needs_features``), frozen single-task teachers
(``needs_teachers``).

Every training step, after the forward pass, the step calls

    terms(outputs, batch, features=None) -> {term name: scalar tensor, already weighted}

with ``outputs`` a list of one {task: prediction} per view (view 0 is the training image the
supervised losses read; every view covers the WHOLE batch - labelled and unlabelled samples
alike), ``batch`` the batch with ``targets`` and the per-task label ``mask``, and ``features``
the shared representation z of view 0 (a tensor or tuple) when ``needs_features``. The terms are
summed and added to the objective outside the balancer: at every balancer level their gradient
is added to the parameters' (``trainables/steps.py``). A term of a batch where it has nothing to
compare (no unlabelled sample, no labelled pair) is a zero that still depends on the outputs.

A regulariser may own learnable modules (mapping networks, an auto-encoder): they are its
parameters, trained by the run's optimiser at ``lr_mult`` times the base rate
(``param_groups``), saved in the checkpoint, moved to the run's device and averaged over
data-parallel workers like the balancer's - ``fit``'s components table does all four.
Teachers (``needs_teachers``) are set with ``set_teachers({task: model})`` before training;
they are frozen and excluded from ``parameters()``'s optimiser groups and from the checkpoint.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from trainables.plugins import Configurable, RegulariserInfo, RunContext
from trainables.tasks.base import Task


class Regulariser(nn.Module, Configurable):
    """Base class of the regularisers (see the module docstring)."""

    INFO: ClassVar[RegulariserInfo] = RegulariserInfo()

    def __init__(self, tasks: Mapping[str, Task], params: Any = None, context: Optional[RunContext] = None,
                 **kwargs: Any):
        super().__init__()
        if not tasks:
            raise ValueError(f"{self.label()}: a regulariser needs at least one task")
        self.tasks: Dict[str, Task] = dict(tasks)
        self.task_names: List[str] = list(tasks)
        self.params = self.resolve_params(params, kwargs)
        self.context = context or RunContext()
        self.info: RegulariserInfo = self.info_for(self.params)

    @classmethod
    def info_for(cls, params: Any) -> RegulariserInfo:
        """The needs of this regulariser with ``params`` (override when a parameter changes them)."""
        return cls.INFO

    def terms(self, outputs: Sequence[Mapping[str, Tensor]], batch: Mapping[str, Any],
              features: Any = None) -> Dict[str, Tensor]:
        raise NotImplementedError

    def param_groups(self) -> List[Dict[str, Any]]:
        """[{"name", "params", "lr_mult"}]: its own modules at the base learning rate by default."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"name": self.label(), "params": params, "lr_mult": 1.0}] if params else []

    def set_teachers(self, teachers: Mapping[str, nn.Module]) -> None:
        raise NotImplementedError(f"{self.label()} does not use teachers")


def zero_like_outputs(outputs: Mapping[str, Tensor]) -> Tensor:
    """A zero that depends on every output (DDP expects the same graph on every worker)."""
    return sum((0.0 * o.sum() for o in outputs.values()), torch.zeros((), device=next(iter(outputs.values())).device))


def unlabelled(batch: Mapping[str, Any], task: str) -> Tensor:
    """The boolean mask of the samples without a label for ``task``."""
    return ~batch["mask"][task]

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

Components with their own optimisers (MGM's generator and discriminator): a regulariser may keep
modules out of ``param_groups`` and train them with optimisers of its own, built by
``optimizers()`` once the regulariser sits on the run's device (own learning rates, betas,
schedules). ``fit`` then, every training step, before the model's step:

    update(batch, weak, epoch) -> {name: float}   its own alternating updates (e.g. 2 D/G
                                                   iterations); logged as train/reg/<name>
    extend_batch(batch, weak, epoch) -> batch      may append samples (``append_samples``: e.g.
                                                   generated images with a scene label and no
                                                   dense label - the per-task mask says so)

``weak`` is a batch of the ``weak_stream`` (None without it). The checkpoint holds every own
optimiser's state next to the modules', so a resumed trial continues every component; under
data parallelism ``update`` averages its gradients with ``self.session.average_grads_``.
``attach(model, session, image_hw, label_tasks)`` hands over the bare model (``needs_model``), the
session, the training images' (height, width) and the Task of every ``extra_labels`` label before
training, so modules whose size depends on them can be built there; the model and session are kept
out of the module tree (not saved, not moved twice).
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

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

    # -- components with their own optimisers (see the module docstring) --------------------
    def attach(self, model: nn.Module, session: Any, image_hw: Tuple[int, int],
               label_tasks: Optional[Mapping[str, Task]] = None) -> None:
        """Keep the bare model and the session, outside the module tree."""
        self.__dict__["_attached"] = (model, session)

    @property
    def model(self) -> nn.Module:
        attached = self.__dict__.get("_attached")
        if attached is None:
            raise RuntimeError(f"{self.label()}: the model is attached by fit before training")
        return attached[0]

    @property
    def session(self) -> Any:
        attached = self.__dict__.get("_attached")
        if attached is None:
            from trainables.session import Session

            return Session()
        return attached[1]

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        """Its own optimisers (name -> optimiser) over modules kept out of ``param_groups``."""
        return {}

    def update(self, batch: Mapping[str, Any], weak: Optional[Mapping[str, Any]], epoch: int) -> Dict[str, float]:
        """Its own updates before the model's step; returns values to log."""
        return {}

    def extend_batch(self, batch: Dict[str, Any], weak: Optional[Mapping[str, Any]], epoch: int) -> Dict[str, Any]:
        """The batch the model's step trains on (default: unchanged)."""
        return batch

    def artifacts(self, images: Tensor, labels: Mapping[str, Tensor], folder: str, stem: str) -> List[str]:
        """Files for the user written after a study, from a trained state (MGM: a grid of generated
        images); ``images`` / ``labels`` are a few validation samples. Default: none."""
        return []


def append_samples(batch: Mapping[str, Any], images: Tensor, targets: Mapping[str, Tensor]) -> Dict[str, Any]:
    """``batch`` with ``images`` appended, labelled only for ``targets``' tasks.

    Every other task of the batch gets a zero placeholder of its label's shape and dtype with a
    False mask, so no supervised loss or metric ever reads it; per-sample tensors outside
    ``targets``/``mask`` (e.g. ``index``) are padded with -1. Extra views are not extended (a
    regulariser that appends samples runs on one view)."""
    n = images.shape[0]
    unknown = sorted(set(targets) - set(batch["targets"]))
    if unknown:
        raise ValueError(f"append_samples: the batch has no task {unknown}; its tasks are {sorted(batch['targets'])}")
    out: Dict[str, Any] = {"image": torch.cat([batch["image"], images.to(batch["image"].dtype)])}
    out["targets"], out["mask"] = {}, {}
    for task, label in batch["targets"].items():
        extra = targets.get(task)
        if extra is None:
            extra = torch.zeros((n,) + tuple(label.shape[1:]), dtype=label.dtype, device=label.device)
        out["targets"][task] = torch.cat([label, extra.to(label.dtype)])
        out["mask"][task] = torch.cat([batch["mask"][task], torch.full((n,), task in targets, dtype=torch.bool,
                                                                        device=label.device)])
    for key, value in batch.items():
        if key in out or key in ("targets", "mask"):
            continue
        if key == "views":
            raise ValueError("append_samples: a batch with extra views cannot take appended samples")
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch["image"].shape[0]:
            out[key] = torch.cat([value, torch.full((n,) + tuple(value.shape[1:]), -1, dtype=value.dtype,
                                                    device=value.device)])
        else:
            out[key] = value
    return out


def zero_like_outputs(outputs: Mapping[str, Tensor]) -> Tensor:
    """A zero that depends on every output (DDP expects the same graph on every worker)."""
    return sum((0.0 * o.sum() for o in outputs.values()), torch.zeros((), device=next(iter(outputs.values())).device))


def unlabelled(batch: Mapping[str, Any], task: str) -> Tensor:
    """The boolean mask of the samples without a label for ``task``."""
    return ~batch["mask"][task]

"""MuST: pseudo-labels from frozen single-task teachers for the labels a sample lacks.

Ghiasi, Zoph, Cubuk, Le & Lin, "Multi-Task Self-Training for Learning General Representations",
ICCV 2021, Sec. 3 (baseline of Nishi et al., JTR, CVPR 2024, supplementary Table 9). MuST trains
one specialised teacher per task, lets each teacher label the images that lack its task's label,
then trains one multi-task student on real and pseudo-labels together, each task with its own
loss and loss weight w_t:

    L = sum_t w_t [ sum_{x labelled for t} L^t(y^t(x), y^t) + sum_{x not labelled for t} L^t(y^t(x), p^t(x)) ]

with p^t(x) the pseudo-label of teacher t on x: hard labels for classification and segmentation
(argmax), the teacher's raw prediction for depth and surface normals (``Task.pseudo_label``).
In the partially labelled setting the teachers are the study's cached single-task networks,
trained on the same partial labels (``RegulariserInfo(needs_teachers=True)``; ``fit`` loads them
and calls ``set_teachers`` before training). The first sum is the study's supervised loss; this
regulariser is the second: for each task t and the samples of the batch without t's label,
teacher t predicts on the same (augmented) training image, without gradient and in eval mode,
and the term is t's own loss between the student's predictions on those samples and the
pseudo-labels, times ``weight * task_weights[t]``. The teacher runs on those samples only.

Choices and deviations:
  * pseudo-labels are made on the fly from the training image of the step (so they follow its
    augmentation) instead of once for the whole dataset before training; with a frozen teacher
    in eval mode the two agree up to the augmentation;
  * each task's term is its loss averaged over its unlabelled samples of the batch (the same
    reduction as its supervised loss over the labelled ones), not over the whole batch;
  * no confidence threshold on the segmentation pseudo-labels (every pixel gets its argmax);
  * depth pseudo-labels are used raw, so a pixel where the teacher predicts a depth <= the depth
    task's ``min_depth`` is invalid in the loss, as a missing depth would be;
  * the loss weights: MuST tunes one per task for its own task mix; they are exposed here
    (``task_weights``, default 1 for every task), since neither MuST's numbers nor JTR's
    reproduction (which publishes none) carry over to the study's tasks.

Teachers are not submodules: they are kept in a plain attribute that ``nn.Module`` does not
register, so they are never in ``parameters()`` (hence in no optimiser group) nor in
``state_dict()`` (the checkpoint). They are frozen (``requires_grad_(False)``) and put in eval
mode by ``set_teachers``; the caller moves them to the run's device (``fit`` does) and
``.to(...)`` on this regulariser moves them too.

Hyper-parameters:
    weight (float >= 0, default 1.0): the weight of every pseudo-label term.
    task_weights (task -> float >= 0, default {}): per-task loss weights w_t; tasks not listed get 1.0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Sequence

import torch
from torch import Tensor, nn

from trainables.plugins import RegulariserInfo
from trainables.registry import register_regulariser
from trainables.regularisers.base import Regulariser, unlabelled


@dataclass(frozen=True)
class MuSTParams:
    """Hyper-parameters of ``must`` (see the module docstring)."""

    weight: float = 1.0
    task_weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, w in (("weight", self.weight), *((f"task_weights.{t}", v) for t, v in self.task_weights.items())):
            if isinstance(w, bool) or not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"must: {name} must be a finite number >= 0, got {w!r}")


@register_regulariser("must")
class MuST(Regulariser):
    """Pseudo-labels from frozen single-task teachers for every missing task label (MuST, ICCV 2021)."""

    Params = MuSTParams
    INFO = RegulariserInfo(needs_teachers=True)

    def __init__(self, tasks, params=None, context=None, **kwargs):
        super().__init__(tasks, params, context, **kwargs)
        unknown = sorted(set(self.params.task_weights) - set(self.task_names))
        if unknown:
            raise ValueError(f"must: task_weights names unknown task(s) {unknown}; the tasks are {self.task_names}")
        self.weights = {t: self.params.weight * float(self.params.task_weights.get(t, 1.0)) for t in self.task_names}
        # a plain dict set past nn.Module.__setattr__: never a submodule (no optimiser, no checkpoint)
        self.__dict__["_teachers"] = {}

    def set_teachers(self, teachers: Mapping[str, nn.Module]) -> None:
        """One frozen network per task, mapping images [B, 3, H, W] to {task: prediction} (a
        single-task model) or to the prediction itself; frozen and put in eval mode here."""
        missing = [t for t in self.task_names if t not in teachers]
        unknown = sorted(set(teachers) - set(self.task_names))
        if missing or unknown:
            raise ValueError(f"must: set_teachers needs exactly one teacher per task {self.task_names}; "
                             f"missing {missing}, unknown {unknown} (the study passes each task's cached "
                             "single-task network as teacher_checkpoints)")
        self._teachers.clear()
        self._teachers.update({t: teachers[t].eval().requires_grad_(False) for t in self.task_names})

    @property
    def teachers(self) -> Dict[str, nn.Module]:
        return dict(self._teachers)

    def _apply(self, fn, recurse=True):
        # .to(device) / .double() on the regulariser carries the unregistered teachers along
        super()._apply(fn, recurse)
        if recurse:
            for teacher in self._teachers.values():
                teacher._apply(fn)
        return self

    @torch.no_grad()
    def pseudo_labels(self, task: str, images: Tensor) -> Tensor:
        """Teacher ``task``'s pseudo-labels for ``images`` (eval mode, no gradient)."""
        teacher = self._teachers[task]
        if teacher.training:  # a caller may have switched it back to training
            teacher.eval()
        out = teacher(images)
        if isinstance(out, Mapping):
            if task not in out:
                raise KeyError(f"must: the teacher of {task!r} predicts {sorted(out)}, not {task!r}")
            out = out[task]
        return self.tasks[task].pseudo_label(out)

    def terms(self, outputs: Sequence[Mapping[str, Tensor]], batch: Mapping[str, Any],
              features: Any = None) -> Dict[str, Tensor]:
        if not self._teachers:
            raise RuntimeError("must: no teachers; call set_teachers({task: single-task network}) before training")
        student, images = outputs[0], batch["image"]
        out: Dict[str, Tensor] = {}
        for task in self.task_names:
            missing = unlabelled(batch, task)
            pred = student[task]
            if not bool(missing.any()):
                out[f"must/{task}"] = 0.0 * pred.sum()  # nothing to pseudo-label: a zero with a graph
                continue
            target = self.pseudo_labels(task, images[missing])
            out[f"must/{task}"] = self.weights[task] * self.tasks[task].loss(pred[missing], target)
        return out

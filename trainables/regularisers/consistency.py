"""Consistency regularisation: an unlabelled task's prediction on one view should match another's.

Nishi, Kim, Li & Pfister (JTR), "Joint-Task Regularization for Partially Labeled Multi-Task
Learning", CVPR 2024, Eq. 2 (after Sajjadi et al. 2016, Laine & Aila 2017, Sohn et al. 2020):

    L = (1 / |D|) sum_x [ sum_{t in T_x} L^t(y^t(x), y^t) / |T_x|
                          + sum_{t in U_x} L_u(y^t(A(x)), y^t(A(x))) / |U_x| ]

with T_x the tasks labelled for image x, U_x the others and A a random augmentation. The first
sum is the study's supervised loss (balanced as usual); this regulariser is the second: for every
task t and every sample without t's label, t's own loss between its prediction on view 1 (a
photometric re-augmentation of the training image, ``RegulariserInfo.views = 2``) and a target
made from its prediction on view 0 (``Task.pseudo_label``: the hard class for classification
tasks, the detached prediction for regression), averaged per sample over its unlabelled tasks
and over the batch, times ``weight``.

Deviations: L_u is each task's supervised loss against the other view's pseudo-label (JTR's Eq. 2
leaves L_u open); the target view is detached (a "stop-gradient" teacher, as in FixMatch), so
the gradient reaches the model through view 1 only; the two views share the training
image's geometric augmentation and differ photometrically (``trainables/datasets/views.py``), so
their dense predictions align pixel by pixel.

Hyper-parameters:
    weight (float >= 0, default 1.0): the term's weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Sequence

import torch
from torch import Tensor

from trainables.plugins import RegulariserInfo
from trainables.registry import register_regulariser
from trainables.regularisers.base import Regulariser, zero_like_outputs


@dataclass(frozen=True)
class ConsistencyParams:
    """Hyper-parameters of ``consistency`` (see the module docstring)."""

    weight: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.weight, (int, float)) and self.weight >= 0):
            raise ValueError(f"consistency: weight must be a number >= 0, got {self.weight!r}")


@register_regulariser("consistency")
class Consistency(Regulariser):
    """Consistency between two views' predictions of each task, on the samples without its label (JTR Eq. 2)."""

    Params = ConsistencyParams
    INFO = RegulariserInfo(views=2)

    def terms(self, outputs: Sequence[Mapping[str, Tensor]], batch: Mapping[str, Any],
              features: Any = None) -> Dict[str, Tensor]:
        view0, view1 = outputs[0], outputs[1]
        masks = [~batch["mask"][t] for t in self.task_names]  # unlabelled samples, per task
        n_unlabelled = torch.stack(masks).sum(0)  # |U_x| per sample
        total = zero_like_outputs(view1)
        batch_size = n_unlabelled.numel()
        for task, missing in zip(self.task_names, masks):
            if not bool(missing.any()):
                continue
            per_sample = torch.stack([self.tasks[task].loss(view1[task][i:i + 1], self.tasks[task].pseudo_label(
                view0[task][i:i + 1])) for i in torch.nonzero(missing).flatten().tolist()])
            total = total + (per_sample / n_unlabelled[missing].to(per_sample.dtype)).sum() / batch_size
        return {"consistency": self.params.weight * total}

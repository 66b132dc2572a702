"""Image-level classification (e.g. NYUD scene type): cross-entropy, top-1 / top-5 accuracy.

Survey: Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey",
TPAMI 2021 - image-level tasks appear as auxiliary tasks (Sec. 2.4) and in the CelebA /
image-classification settings the survey discusses; the metric is plain accuracy.

Formats:
    pred: logits [B, C]; target: LongTensor [B] of class indices in [0, C).

Loss: ``F.cross_entropy(pred, target, label_smoothing=label_smoothing)`` (mean over samples).

Metric state: [n, #top-1 correct, #top-k correct] in float64 with k = min(5, C):
    top1 = 100 * #top-1 correct / n,  top5 = 100 * #top-k correct / n
(the key stays ``top5`` when C < 5, where it is top-C = 100). Ties in the logits are broken
by ``torch.topk``'s order. An empty state gives NaN for both keys.

Hyper-parameters (``SceneParams``):
    num_classes (int, >= 2): C, the number of classes.
    label_smoothing (float in [0, 1), default 0.0): cross-entropy label smoothing.

Primary metric: ``top1``, higher is better.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.registry import register_task
from trainables.tasks.base import Task


@dataclass(frozen=True)
class SceneParams:
    """Parameters of ``scene`` (see the module docstring)."""

    num_classes: int
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        c, ls = self.num_classes, self.label_smoothing
        if isinstance(c, bool) or not isinstance(c, int) or c < 2:
            raise ValueError(f"scene: num_classes must be an int >= 2, got {c!r}")
        if isinstance(ls, bool) or not isinstance(ls, (int, float)) or not 0 <= ls < 1:
            raise ValueError(f"scene: label_smoothing must be a float in [0, 1), got {ls!r}")


@register_task("scene")
class Scene(Task):
    """Image-level classification (cross-entropy; top-1 / top-5 accuracy)."""

    Params = SceneParams
    kind = "image"
    primary_metric = "top1"
    higher_is_better = True

    @property
    def num_classes(self) -> int:
        return self.params.num_classes

    @property
    def k(self) -> int:
        """The k of the top-k accuracy reported as ``top5``: min(5, C)."""
        return min(5, self.params.num_classes)

    @property
    def out_channels(self) -> int:
        return self.num_classes

    def _check(self, pred: Tensor, target: Tensor) -> None:
        if pred.dim() != 2 or pred.shape[1] != self.num_classes:
            raise ValueError(
                f"{self.name}: pred must be [B, {self.num_classes}], got {tuple(pred.shape)}"
            )
        if target.shape != pred.shape[:1]:
            raise ValueError(
                f"{self.name}: target must be [B] = [{pred.shape[0]}], got {tuple(target.shape)}"
            )

    def pseudo_label(self, pred: Tensor) -> Tensor:
        """The most likely class (a hard label)."""
        return pred.detach().argmax(1)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        self._check(pred, target)
        return F.cross_entropy(pred, target.long(), label_smoothing=self.params.label_smoothing)

    def metric_state(self, device: torch.device | str = "cpu") -> Tensor:
        return torch.zeros(3, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update_metric(self, state: Tensor, pred: Tensor, target: Tensor) -> None:
        self._check(pred, target)
        topk = pred.topk(self.k, dim=1).indices  # [B, k], best first
        hit = topk == target.long().unsqueeze(1)
        n = torch.tensor(float(target.shape[0]), dtype=torch.float64, device=hit.device)
        counts = [n, hit[:, 0].sum().to(torch.float64), hit.any(dim=1).sum().to(torch.float64)]
        state += torch.stack(counts).to(state.device)

    def compute_metric(self, state: Tensor) -> Dict[str, float]:
        n, c1, ck = (float(v) for v in state.detach().to("cpu", torch.float64))
        if n <= 0:
            return {"top1": float("nan"), "top5": float("nan")}
        return {"top1": 100.0 * c1 / n, "top5": 100.0 * ck / n}

    def predict(self, pred: Tensor) -> Tensor:
        """Class probabilities (softmax); ``argmax(1)`` gives the class."""
        return pred.softmax(dim=1)

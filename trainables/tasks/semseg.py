"""Semantic segmentation: per-pixel cross-entropy, mIoU from a split-level confusion matrix.

Survey: Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey",
TPAMI 2021 - the "Seg (mIoU)" columns of Tables 3-9 (NYUD-v2, PASCAL-Context).

Formats:
    pred: logits [B, C, H, W]; target: LongTensor [B, H, W], ``ignore_index`` = unlabelled.

Loss: ``F.cross_entropy`` with ``ignore_index`` (mean over the non-ignored pixels, weighted
by ``class_weights`` the way torch weights its mean). A batch whose pixels are all ignored
gives a loss of exactly 0 (with a gradient graph) instead of torch's NaN.

Metric state: the C x C confusion matrix ``cm[gt, pred]`` (float64 counts), so the split's
numbers are exact under a data-parallel SUM all-reduce.
    miou      = 100 * mean_c  cm[c,c] / (sum_j cm[c,j] + sum_i cm[i,c] - cm[c,c]),
                averaged over the classes whose union (the denominator) is > 0 on the split, i.e.
                classes that neither occur in the ground truth nor are ever predicted are left
                out of the mean instead of counting as IoU 0 or 1 (on a full benchmark split every
                class occurs, so this only matters for small / smoke splits).
    pixel_acc = 100 * trace(cm) / sum(cm).
Target labels outside [0, C) other than ``ignore_index`` are not counted in the metric (the
loss raises for them, as torch does). An empty state gives NaN for both keys.

Hyper-parameters (``SemSegParams``):
    num_classes (int, >= 2): C, the number of classes (channels of the head).
    ignore_index (int, default 255): target value that is ignored by loss and metric.
    class_weights (sequence of C floats >= 0, default None): per-class loss weights.

Primary metric: ``miou``, higher is better.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.registry import register_task
from trainables.tasks.base import Task


@dataclass(frozen=True)
class SemSegParams:
    """Parameters of ``semseg`` (see the module docstring); ``task`` names the type in errors."""

    num_classes: int
    ignore_index: int = 255
    class_weights: Optional[Tuple[float, ...]] = None
    task: ClassVar[str] = "semseg"

    def __post_init__(self) -> None:
        c, ignore, w = self.num_classes, self.ignore_index, self.class_weights
        if isinstance(c, bool) or not isinstance(c, int) or c < 2:
            raise ValueError(f"{self.task}: num_classes must be an int >= 2, got {c!r}")
        if isinstance(ignore, bool) or not isinstance(ignore, int):
            raise ValueError(f"{self.task}: ignore_index must be an int, got {ignore!r}")
        if 0 <= ignore < c:
            raise ValueError(f"{self.task}: ignore_index must lie outside the class range [0, {c}), got {ignore}")
        if w is not None:
            weights = torch.as_tensor(list(w), dtype=torch.float32)
            if weights.shape != (c,) or not torch.isfinite(weights).all() or (weights < 0).any():
                raise ValueError(f"{self.task}: class_weights must be {c} finite floats >= 0, got {list(w)!r}")
            object.__setattr__(self, "class_weights", tuple(float(x) for x in w))


@register_task("semseg")
class SemSeg(Task):
    """Semantic segmentation (cross-entropy; mIoU / pixel accuracy from a confusion matrix)."""

    Params = SemSegParams
    kind = "dense"
    primary_metric = "miou"
    higher_is_better = True

    def __init__(self, name: Optional[str] = None, params=None, **kwargs):
        super().__init__(name, params, **kwargs)
        w = self.params.class_weights
        self._weights = None if w is None else torch.tensor(w, dtype=torch.float32)

    @property
    def num_classes(self) -> int:
        return self.params.num_classes

    @property
    def ignore_value(self) -> float:
        return float(self.params.ignore_index)

    def ignored(self, target: Tensor) -> Tensor:
        return target == self.params.ignore_index

    @property
    def out_channels(self) -> int:
        return self.num_classes

    def _check(self, pred: Tensor, target: Tensor) -> None:
        if pred.dim() != 4 or pred.shape[1] != self.num_classes:
            raise ValueError(
                f"{self.name}: pred must be [B, {self.num_classes}, H, W], got {tuple(pred.shape)}"
            )
        if target.shape != (pred.shape[0],) + tuple(pred.shape[2:]):
            raise ValueError(
                f"{self.name}: target must be [B, H, W] matching pred {tuple(pred.shape)}, "
                f"got {tuple(target.shape)}"
            )

    def pseudo_label(self, pred: Tensor) -> Tensor:
        """The most likely class per pixel (a hard label)."""
        return pred.detach().argmax(1)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        self._check(pred, target)
        target = target.long()
        per_pixel = F.cross_entropy(pred, target, ignore_index=self.params.ignore_index, reduction="none")
        valid = target != self.params.ignore_index
        if self._weights is None:
            denom = valid.sum()
        else:
            w = self._weights.to(device=pred.device, dtype=per_pixel.dtype)
            per_pixel = per_pixel * w[torch.where(valid, target, 0)] * valid
            denom = (w[torch.where(valid, target, 0)] * valid).sum()
        # clamp: an all-ignored batch has sum 0 and gives 0 rather than 0/0 (no host sync).
        return per_pixel.sum() / denom.clamp_min(1e-12).to(per_pixel.dtype)

    def metric_state(self, device: torch.device | str = "cpu") -> Tensor:
        return torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update_metric(self, state: Tensor, pred: Tensor, target: Tensor) -> None:
        self._check(pred, target)
        c = self.num_classes
        label = pred.argmax(dim=1).reshape(-1)
        gt = target.reshape(-1).long()
        valid = (gt >= 0) & (gt < c)
        # Invalid pixels go to an extra bin c*c that is dropped (no boolean indexing -> no sync).
        idx = torch.where(valid, gt * c + label, torch.full_like(gt, c * c))
        counts = torch.bincount(idx, minlength=c * c + 1)[: c * c]
        state += counts.view(c, c).to(state.dtype)

    def compute_metric(self, state: Tensor) -> Dict[str, float]:
        cm = state.detach().to("cpu", torch.float64)
        total = cm.sum()
        if total <= 0:
            return {"miou": float("nan"), "pixel_acc": float("nan")}
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        miou = (tp[present] / union[present]).mean()
        return {"miou": 100.0 * float(miou), "pixel_acc": 100.0 * float(tp.sum() / total)}

    def predict(self, pred: Tensor) -> Tensor:
        """Class probabilities (softmax over channels); ``argmax(1)`` gives the label map."""
        return pred.softmax(dim=1)

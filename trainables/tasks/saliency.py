"""Saliency detection: (balanced) binary cross-entropy, max F-measure and the survey's mIoU.

Survey: Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey",
TPAMI 2021 - the "Sal" columns of the PASCAL tables (Tables 8 and 9). Those columns are
headed "Sal (mIoU)": the survey's code (from ASTMT, Maninis et al., CVPR 2019) scores saliency
with both an mIoU and a maxF and the tables print the mIoU. Both are computed here; which one
is primary is the ``primary`` argument (the PASCAL loader asks for "miou" so that Delta_m
matches the tables).

Formats:
    pred: logits [B, 1, H, W]; target: FloatTensor [B, 1, H, W] in {0, 1} (distilled maps
    binarised at 0.5 by the loader), ``ignore_index`` (255) = ignored pixel (e.g. the padding
    of a rotation).

Loss (``loss="balanced"``, default): the survey code's HED-style balanced BCE
(``BalancedCrossEntropyLoss`` without a fixed weight): with w = #negative / #valid pixels of
the batch (no gradient through w) and p = sigmoid(x),
    L = ( w * sum_pos -log p + (1 - w) * sum_neg -log(1 - p) ) / #valid,
so the rarer class weighs more. ``loss="bce"``: plain BCE averaged over the valid pixels.
A batch without valid pixels gives exactly 0.

Metrics (state: float64, sum-reducible, two parts):
  1. Pixel-pooled histograms of p over ``num_bins`` bins for positive / negative valid pixels
     - exactly ``edge.py``'s state, updated and read by its code (an ``Edge`` helper):
         maxf = 100 * max_t F1(P_t, R_t), P/R pooled over every valid pixel of the split
                (the usual threshold-free maxF; = edge's "odsf"),
         ap   = 100 * step-wise area under that PR curve.
  2. The survey code's per-image protocol at the thresholds T (default the survey's 15,
     linspace(0.2, 0.9, 15)), a pixel predicted salient iff p > t: per image IoU_t (1 when
     both prediction and ground truth are empty), precision_t (0 for an empty prediction) and
     recall_t (0 for an empty ground truth); state [n_images, sum IoU_t, sum P_t, sum R_t]:
         miou     = 100 * max_t mean_images IoU_t          (the tables' "Sal (mIoU)")
         maxf_img = 100 * max_t F1(mean P_t, mean R_t)     (the survey code's "maxF")
     Images without a valid pixel are not counted.
  F1 = 2 P R / (P + R) throughout (beta^2 = 1, as the survey code; the saliency literature's
  F_beta with beta^2 = 0.3 is not offered). An empty state gives NaN for every key.

Hyper-parameters (``SaliencyParams``):
    loss ("balanced" | "bce", default "balanced"): the training loss above.
    ignore_index (float outside [0, 1], default 255): target value of ignored pixels.
    num_bins (int >= 2, default 1000): histogram bins of maxf / ap.
    thresholds (non-empty sequence of floats in (0, 1), default the survey's 15): T.
    primary ("maxf" | "miou", default "maxf"): the primary metric.

Primary metric: ``maxf`` (or ``miou``), higher is better.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.registry import register_task
from trainables.tasks.edge import Edge, check_ignore_index, check_num_bins
from trainables.tasks.masked import MaskedDense

SURVEY_THRESHOLDS = tuple(round(0.2 + 0.05 * i, 10) for i in range(15))  # np.linspace(0.2, 0.9, 15)
PRIMARY = ("maxf", "miou")


@dataclass(frozen=True)
class SaliencyParams:
    """Parameters of ``saliency`` (see the module docstring)."""

    loss: str = "balanced"
    ignore_index: float = 255
    num_bins: int = 1000
    thresholds: Tuple[float, ...] = SURVEY_THRESHOLDS
    primary: str = "maxf"

    def __post_init__(self) -> None:
        if self.loss not in ("balanced", "bce"):
            raise ValueError(f"saliency: loss must be one of 'balanced', 'bce', got {self.loss!r}")
        check_ignore_index("saliency", self.ignore_index)
        check_num_bins("saliency", self.num_bins)
        ts = self.thresholds
        if (not isinstance(ts, (list, tuple)) or not ts
                or any(isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1 for t in ts)):
            raise ValueError(f"saliency: thresholds must be a non-empty list of floats in (0, 1), got {ts!r}")
        object.__setattr__(self, "thresholds", tuple(float(t) for t in ts))
        if self.primary not in PRIMARY:
            raise ValueError(f"saliency: primary must be one of {', '.join(map(repr, PRIMARY))}, got {self.primary!r}")


@register_task("saliency")
class Saliency(MaskedDense):
    """Saliency (balanced BCE; pixel-pooled maxF / AP and the survey's per-image mIoU)."""

    Params = SaliencyParams
    primary_metric = "maxf"
    higher_is_better = True

    def __init__(self, name: Optional[str] = None, params=None, **kwargs):
        super().__init__(name, params, **kwargs)
        self.primary_metric = self.params.primary  # per instance: the dataset chooses (see the docstring)
        # The pixel-pooled half of the metric is edge.py's histogram state and code.
        self._hist = Edge(self.name, ignore_index=self.params.ignore_index, num_bins=self.params.num_bins)

    @property
    def ignore_value(self) -> float:
        return float(self.params.ignore_index)

    def valid_mask(self, target: Tensor) -> Tensor:
        return self._hist.valid_mask(target)

    @property
    def out_channels(self) -> int:
        return 1

    def pseudo_label(self, pred: Tensor) -> Tensor:
        """1 where the saliency probability exceeds 0.5 (a hard label)."""
        return (pred.detach() > 0).to(pred.dtype)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        valid, y = self._valid(pred, target)
        y = (y >= 0.5).to(pred.dtype)
        n_valid = valid.sum().clamp_min(1).to(pred.dtype)
        pos_term, neg_term = y * F.logsigmoid(pred), (1 - y) * F.logsigmoid(-pred)
        if self.params.loss == "balanced":
            w = ((1 - y) * valid).sum().to(pred.dtype) / n_valid  # fraction of negatives
            per_pixel = -(w * pos_term + (1 - w) * neg_term)
        else:
            per_pixel = -(pos_term + neg_term)
        per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
        return per_pixel.sum() / n_valid

    def metric_state(self, device: torch.device | str = "cpu") -> Tensor:
        """[2 * num_bins histogram | n_images | sum IoU_t | sum P_t | sum R_t] (K = #thresholds)."""
        size = 2 * self.params.num_bins + 1 + 3 * len(self.params.thresholds)
        return torch.zeros(size, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update_metric(self, state: Tensor, pred: Tensor, target: Tensor) -> None:
        nb, k = self.params.num_bins, len(self.params.thresholds)
        self._hist.update_metric(state[: 2 * nb].view(2, nb), pred, target)
        valid, y = self._valid(pred, target)
        b = pred.shape[0]
        valid = valid.reshape(b, -1)
        gt = (y.reshape(b, -1) >= 0.5) & valid
        prob = torch.sigmoid(pred.double()).reshape(b, -1)
        counted = valid.any(dim=1)
        n_gt = gt.sum(dim=1).double()
        iou, prec, rec = [], [], []
        for t in self.params.thresholds:
            hit = (prob > t) & valid
            tp = (hit & gt).sum(dim=1).double()
            n_hit = hit.sum(dim=1).double()
            union = n_hit + n_gt - tp
            iou.append(torch.where(union > 0, tp / union.clamp_min(1), torch.ones_like(tp)))
            prec.append(torch.where(n_hit > 0, tp / n_hit.clamp_min(1), torch.zeros_like(tp)))
            rec.append(torch.where(n_gt > 0, tp / n_gt.clamp_min(1), torch.zeros_like(tp)))
        per_image = torch.stack(iou + prec + rec, dim=1) * counted[:, None]  # [B, 3K]
        head = torch.cat([counted.sum().double().view(1), per_image.sum(dim=0)])
        state[2 * nb: 2 * nb + 1 + 3 * k] += head.to(state.dtype)

    def compute_metric(self, state: Tensor) -> Dict[str, float]:
        s = state.detach().to("cpu", torch.float64)
        nb, k = self.params.num_bins, len(self.params.thresholds)
        pooled = self._hist.compute_metric(s[: 2 * nb].view(2, nb))
        out = {"maxf": pooled["odsf"], "ap": pooled["ap"]}
        n = float(s[2 * nb])
        if n <= 0:
            return {**out, "miou": float("nan"), "maxf_img": float("nan")}
        iou, p, r = (s[2 * nb + 1 + i * k: 2 * nb + 1 + (i + 1) * k] / n for i in range(3))
        f = torch.where(p + r > 0, 2 * p * r / (p + r).clamp_min(1e-300), torch.zeros_like(p))
        return {**out, "miou": 100.0 * float(iou.max()), "maxf_img": 100.0 * float(f.max())}

    def predict(self, pred: Tensor) -> Tensor:
        """Saliency probabilities sigmoid(pred)."""
        return torch.sigmoid(pred)

"""Edge detection: balanced BCE loss, pixel-exact ODS F-measure and AP from histograms.

Survey: Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey",
TPAMI 2021 - the "Edge (odsF)" columns of the PASCAL-Context tables (Tables 4, 6, 8).

Formats:
    pred: logits [B, 1, H, W]; target: FloatTensor [B, 1, H, W] in {0, 1}, ``ignore_index``
    (255) = ignored pixel.

Loss: the survey code's balanced (class-weighted) binary cross-entropy with a fixed positive
weight w, averaged over the valid pixels:
    L = mean_valid -( w * y * log p + (1 - w) * (1 - y) * log(1 - p) ),  p = sigmoid(x),
computed with ``logsigmoid`` (log p = logsigmoid(x), log(1-p) = logsigmoid(-x)) for stability.
A batch without valid pixels gives exactly 0.

Metric (threshold-free, sum-reducible): two histograms of p = sigmoid(pred) over ``num_bins``
uniform bins on [0, 1] - one for positive (y >= 0.5) and one for negative valid pixels.
For each threshold t_k = k / num_bins, a pixel is predicted an edge iff its bin is >= k:
    TP_k = #pos in bins >= k, FP_k = #neg in bins >= k, P_k = TP_k / (TP_k + FP_k),
    R_k = TP_k / #pos, F_k = 2 P_k R_k / (P_k + R_k) (0 where TP_k = 0).
    odsf = 100 * max_k F_k    - one threshold for the whole split ("optimal dataset scale").
    ap   = 100 * sum_k (R_k - R_{k+1}) P_k  - step-wise area under the PR curve (thresholds
           in descending order, as sklearn's average_precision_score with the bins as scores).
IMPORTANT: the matching is pixel-exact - a predicted edge pixel counts only if the ground truth
is an edge at that very pixel. The BSDS / seism ODS used by the survey (maxDist = 0.0075 of the
image diagonal, bipartite matching after non-maximum suppression) tolerates small localisation
errors, so these numbers are lower than, and not comparable in absolute value with, the
survey's odsF; use them for relative comparisons (Delta_m) within this code base. Probabilities
are quantised to the bins, so thresholds finer than 1 / num_bins are not seen.
A state without positive pixels gives NaN for both keys.

Hyper-parameters (``EdgeParams``):
    pos_weight (float in (0, 1), default 0.95): w, weight of the positive (edge) term.
    ignore_index (float, default 255): target value of ignored pixels.
    num_bins (int >= 2, default 1000): histogram bins of the metric.

Primary metric: ``odsf``, higher is better.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.registry import register_task
from trainables.tasks.masked import MaskedDense


@dataclass(frozen=True)
class EdgeParams:
    """Parameters of ``edge`` (see the module docstring)."""

    pos_weight: float = 0.95
    ignore_index: float = 255
    num_bins: int = 1000

    def __post_init__(self) -> None:
        w, ignore, nb = self.pos_weight, self.ignore_index, self.num_bins
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < 1:
            raise ValueError(f"edge: pos_weight must be a float in (0, 1), got {w!r}")
        check_ignore_index("edge", ignore)
        check_num_bins("edge", nb)


def check_ignore_index(task: str, value) -> None:
    """A binary map's ignore marker: a finite number outside the labels' range [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or 0 <= value <= 1:
        raise ValueError(f"{task}: ignore_index must be a finite number outside [0, 1], got {value!r}")


def check_num_bins(task: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"{task}: num_bins must be an int >= 2, got {value!r}")


@register_task("edge")
class Edge(MaskedDense):
    """Edge detection (balanced BCE; pixel-exact ODS F and AP from probability histograms)."""

    Params = EdgeParams
    primary_metric = "odsf"
    higher_is_better = True

    @property
    def ignore_value(self) -> float:
        return float(self.params.ignore_index)

    @property
    def out_channels(self) -> int:
        return 1

    def valid_mask(self, target: Tensor) -> Tensor:
        return (target != self.params.ignore_index) & torch.isfinite(target)

    def pseudo_label(self, pred: Tensor) -> Tensor:
        """1 where the edge probability exceeds 0.5 (a hard label)."""
        return (pred.detach() > 0).to(pred.dtype)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        valid, y = self._valid(pred, target)
        y = y.to(pred.dtype)
        w = self.params.pos_weight
        per_pixel = -(w * y * F.logsigmoid(pred) + (1 - w) * (1 - y) * F.logsigmoid(-pred))
        per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
        return per_pixel.sum() / valid.sum().clamp_min(1).to(per_pixel.dtype)

    def metric_state(self, device: torch.device | str = "cpu") -> Tensor:
        """[2, num_bins]: row 0 counts positive pixels per probability bin, row 1 negatives."""
        return torch.zeros(2, self.params.num_bins, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update_metric(self, state: Tensor, pred: Tensor, target: Tensor) -> None:
        valid, y = self._valid(pred, target)
        nb = self.params.num_bins
        prob = torch.sigmoid(pred.double()).reshape(-1)
        b = (prob * nb).floor().long().clamp(0, nb - 1)
        # Row 0 = positives, row 1 = negatives; invalid pixels go to a dropped bin 2 * nb.
        row = torch.where(y.reshape(-1) >= 0.5, 0, 1)
        idx = torch.where(valid.reshape(-1), row * nb + b, torch.full_like(b, 2 * nb))
        counts = torch.bincount(idx, minlength=2 * nb + 1)[: 2 * nb]
        state += counts.view(2, nb).to(state.dtype)

    def compute_metric(self, state: Tensor) -> Dict[str, float]:
        h = state.detach().to("cpu", torch.float64)
        n_pos = float(h[0].sum())
        if n_pos <= 0:
            return {"odsf": float("nan"), "ap": float("nan")}
        # Reverse cumulative sums: index k = counts in bins >= k (threshold t_k = k / num_bins).
        tp = h[0].flip(0).cumsum(0).flip(0)
        fp = h[1].flip(0).cumsum(0).flip(0)
        pred_pos = tp + fp
        precision = torch.where(pred_pos > 0, tp / pred_pos.clamp_min(1), torch.zeros_like(tp))
        recall = tp / n_pos
        denom = precision + recall
        f = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300), 0.0)
        # Step-wise AP: recall gained when lowering the threshold from t_{k+1} to t_k, times P_k.
        recall_next = torch.cat([recall[1:], recall.new_zeros(1)])
        ap = ((recall - recall_next) * precision).sum()
        return {"odsf": 100.0 * float(f.max()), "ap": 100.0 * float(ap)}

    def predict(self, pred: Tensor) -> Tensor:
        """Edge probabilities sigmoid(pred)."""
        return torch.sigmoid(pred)

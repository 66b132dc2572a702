"""Surface normal estimation: L1 between unit vectors, angular-error metrics in degrees.

Survey: Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey",
TPAMI 2021 - the "Norm (mErr)" columns of the PASCAL-Context tables (Tables 4, 6, 8).

Formats:
    pred: [B, 3, H, W], unnormalised; target: [B, 3, H, W] unit vectors, where an all-zero
    vector (or any non-finite component) marks an invalid pixel.

Loss (``loss="l1"``, default): the survey code's normals loss - normalise the prediction
(``F.normalize(pred, dim=1, eps)``) and take the L1 distance to the target averaged over the
valid *elements* (3 per valid pixel), i.e. sum_valid |n_hat - n| / (3 * n_valid_pixels).
``loss="cosine"``: mean over valid pixels of 1 - cos(pred, target). Both are invariant to
scaling ``pred`` by a positive constant. A batch without valid pixels gives exactly 0.

Metric: the angular error e = acos(<n_hat, n / |n|>) in degrees on the valid pixels. State
(float64, sum-reducible): [sum e, sum e^2, n, #e < 11.25, #e < 22.5, #e < 30, hist(3600)] where
hist counts e in 0.05-degree bins over [0, 180].
    mean_angle   = sum e / n                         (exact)
    rmse_angle   = sqrt(sum e^2 / n)                 (exact)
    within_T     = 100 * #(e < T) / n, T in {11.25, 22.5, 30}     (exact, strict "<")
    median_angle = the 50% quantile from the histogram, linearly interpolated inside its bin:
                   an approximation, off by at most the bin width of 0.05 degrees.
An empty state gives NaN for every key.

Hyper-parameters:
    loss ("l1" | "cosine", default "l1"): the training loss above.
    eps (float > 0, default 1e-12): ``F.normalize``'s eps for the prediction.

Primary metric: ``mean_angle``, lower is better.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.registry import register_task
from trainables.tasks.masked import MaskedDense

BIN_DEG = 0.05  # median resolution, degrees
N_BINS = 3600  # 180 / BIN_DEG
THRESHOLDS = (11.25, 22.5, 30.0)
_HEAD = 3 + len(THRESHOLDS)  # state entries before the histogram


@register_task("normals")
class Normals(MaskedDense):
    """Surface normals (L1 on unit vectors; mean / median / RMSE angle and within-T)."""

    primary_metric = "mean_angle"
    higher_is_better = False

    def __init__(self, name: str = "normals", *, loss: str = "l1", eps: float = 1e-12):
        super().__init__(name)
        if loss not in ("l1", "cosine"):
            raise ValueError(f"normals: loss must be one of 'l1', 'cosine', got {loss!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < 1):
            raise ValueError(f"normals: eps must be a float in (0, 1), got {eps!r}")
        self.loss_type = loss
        self.eps = float(eps)

    @property
    def out_channels(self) -> int:
        return 3

    def valid_mask(self, target: Tensor) -> Tensor:
        """Per pixel [B, 1, H, W]: finite and not the zero vector."""
        return torch.isfinite(target).all(dim=1, keepdim=True) & (target != 0).any(dim=1, keepdim=True)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        valid, gt = self._valid(pred, target)
        gt = gt.to(pred.dtype)
        n_hat = F.normalize(pred, dim=1, eps=self.eps)
        n_valid = valid.sum().clamp_min(1).to(pred.dtype)
        if self.loss_type == "l1":
            err = torch.where(valid, (n_hat - gt).abs(), torch.zeros_like(pred))
            return err.sum() / (3 * n_valid)
        cos = (n_hat * F.normalize(gt, dim=1, eps=self.eps)).sum(dim=1, keepdim=True)
        return torch.where(valid, 1 - cos, torch.zeros_like(cos)).sum() / n_valid

    def metric_state(self, device: torch.device | str = "cpu") -> Tensor:
        return torch.zeros(_HEAD + N_BINS, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update_metric(self, state: Tensor, pred: Tensor, target: Tensor) -> None:
        valid, gt = self._valid(pred, target)
        valid = valid.reshape(-1)
        cos = (F.normalize(pred.double(), dim=1) * F.normalize(gt.double(), dim=1)).sum(dim=1)
        ang = torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0))).reshape(-1)
        ang = torch.where(valid, ang, torch.zeros_like(ang))
        head = [ang.sum(), ang.square().sum(), valid.sum().to(torch.float64)]
        head += [((ang < t) & valid).sum().to(torch.float64) for t in THRESHOLDS]
        # Invalid pixels go to an extra bin N_BINS that is dropped (no boolean indexing).
        idx = (ang / BIN_DEG).floor().long().clamp(0, N_BINS - 1)
        idx = torch.where(valid, idx, torch.full_like(idx, N_BINS))
        hist = torch.bincount(idx, minlength=N_BINS + 1)[:N_BINS]
        state[:_HEAD] += torch.stack(head)
        state[_HEAD:] += hist.to(torch.float64)

    def compute_metric(self, state: Tensor) -> Dict[str, float]:
        s = state.detach().to("cpu", torch.float64)
        total, total_sq, n = float(s[0]), float(s[1]), float(s[2])
        keys = ["mean_angle", "median_angle", "rmse_angle"] + [f"within_{t:g}" for t in THRESHOLDS]
        if n <= 0:
            return {k: float("nan") for k in keys}
        out = {"mean_angle": total / n, "median_angle": _hist_median(s[_HEAD:], n)}
        out["rmse_angle"] = math.sqrt(total_sq / n)
        for i, t in enumerate(THRESHOLDS):
            out[f"within_{t:g}"] = 100.0 * float(s[3 + i]) / n
        return out

    def predict(self, pred: Tensor) -> Tensor:
        """Unit normal vectors."""
        return F.normalize(pred, dim=1, eps=self.eps)


def _hist_median(hist: Tensor, n: float) -> float:
    """50% quantile of a 0.05-degree histogram, linear inside the bin that holds it."""
    cum = hist.cumsum(0)
    half = n / 2.0
    k = int(torch.searchsorted(cum, torch.tensor([half], dtype=cum.dtype)).item())
    k = min(k, N_BINS - 1)
    before = float(cum[k - 1]) if k > 0 else 0.0
    in_bin = float(hist[k])
    frac = (half - before) / in_bin if in_bin > 0 else 0.0
    return (k + frac) * BIN_DEG

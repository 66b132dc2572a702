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
    median_angle = numpy's median (the mean of the two middle order statistics; the middle
                   one for odd n), each order statistic located in its 0.05-degree bin and
                   placed inside it by its rank among the bin's counts. Both estimates lie in
                   the bin that holds the true value, so the error is below the bin width,
                   |median_angle - median| < 0.05 degrees, for any number of pixels.
An empty state gives NaN for every key.

Geometry (the data pipeline's augmentation, see ``base.Task``): mirroring the image negates
the x component; an in-plane rotation of the image by a rotates (nx, ny) by -a in image
coordinates (y down), as the survey code's rotation; resampling is bilinear and renormalised,
with the validity (non-zero vectors) resampled nearest so that invalid zeros never blend in.

Hyper-parameters (``NormalsParams``):
    loss ("l1" | "cosine", default "l1"): the training loss above.
    eps (float > 0, default 1e-12): ``F.normalize``'s eps for the prediction.

Primary metric: ``mean_angle``, lower is better.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.registry import register_task
from trainables.tasks.base import Warp
from trainables.tasks.masked import MaskedDense

BIN_DEG = 0.05  # median resolution, degrees
N_BINS = 3600  # 180 / BIN_DEG
THRESHOLDS = (11.25, 22.5, 30.0)
_HEAD = 3 + len(THRESHOLDS)  # state entries before the histogram


@dataclass(frozen=True)
class NormalsParams:
    """Parameters of ``normals`` (see the module docstring)."""

    loss: str = "l1"
    eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.loss not in ("l1", "cosine"):
            raise ValueError(f"normals: loss must be one of 'l1', 'cosine', got {self.loss!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not (0 < self.eps < 1):
            raise ValueError(f"normals: eps must be a float in (0, 1), got {self.eps!r}")


@register_task("normals")
class Normals(MaskedDense):
    """Surface normals (L1 on unit vectors; mean / median / RMSE angle and within-T)."""

    Params = NormalsParams
    primary_metric = "mean_angle"
    higher_is_better = False
    ignore_value = 0.0  # the zero vector

    @property
    def out_channels(self) -> int:
        return 3

    def valid_mask(self, target: Tensor) -> Tensor:
        """Per pixel [B, 1, H, W]: finite and not the zero vector."""
        return torch.isfinite(target).all(dim=1, keepdim=True) & (target != 0).any(dim=1, keepdim=True)

    def hflip(self, target: Tensor) -> Tensor:
        """Mirrored map, x component negated."""
        out = target.flip(-1)
        out[0].neg_()
        return out

    def rotate(self, target: Tensor, angle: float) -> Tensor:
        """(nx, ny) rotated with an image rotated by ``angle`` degrees (see the docstring)."""
        a = math.radians(angle)
        n = target
        nx, ny = n[0] * math.cos(a) + n[1] * math.sin(a), n[1] * math.cos(a) - n[0] * math.sin(a)
        return torch.stack([nx, ny, n[2]])

    def resample(self, target: Tensor, warp: Warp, inside: Optional[Tensor] = None) -> Tensor:
        """Bilinear and renormalised; zero where the nearest source vector is invalid or the
        pixel comes from outside the image."""
        valid = warp(self.valid_mask(target[None])[0].float(), "nearest") > 0.5
        if inside is not None:
            valid = valid & inside
        n = F.normalize(warp(target, "bilinear"), dim=0)
        return torch.where(valid, n, torch.zeros_like(n))

    def pseudo_label(self, pred: Tensor) -> Tensor:
        """The predicted direction as a unit vector (the teacher's raw output, normalised)."""
        return F.normalize(pred.detach(), dim=1, eps=self.params.eps)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        valid, gt = self._valid(pred, target)
        gt = gt.to(pred.dtype)
        eps = self.params.eps
        n_hat = F.normalize(pred, dim=1, eps=eps)
        n_valid = valid.sum().clamp_min(1).to(pred.dtype)
        if self.params.loss == "l1":
            err = torch.where(valid, (n_hat - gt).abs(), torch.zeros_like(pred))
            return err.sum() / (3 * n_valid)
        cos = (n_hat * F.normalize(gt, dim=1, eps=eps)).sum(dim=1, keepdim=True)
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
        return F.normalize(pred, dim=1, eps=self.params.eps)


def _hist_median(hist: Tensor, n: float) -> float:
    """numpy's median from a 0.05-degree histogram of n values: the mean of the order statistics
    of ranks floor((n - 1) / 2) and floor(n / 2) (0-based), each estimated inside its bin at the
    centre of its rank's share, (bin + (rank - count before + 0.5) / count in bin) * width."""
    cum = hist.cumsum(0)
    estimates = []
    for rank in (math.floor((n - 1) / 2), math.floor(n / 2)):
        b = min(int(torch.searchsorted(cum, torch.tensor([float(rank)], dtype=cum.dtype), right=True)), N_BINS - 1)
        before = float(cum[b - 1]) if b > 0 else 0.0
        estimates.append((b + (rank - before + 0.5) / float(hist[b])) * BIN_DEG)
    return sum(estimates) / 2

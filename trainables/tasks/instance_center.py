"""Instance-centre regression: the survey's proxy for instance segmentation on Cityscapes.

Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
Geometry and Semantics", CVPR 2018, Sec. 3.2 (each pixel of an instance regresses the vector
to its instance's centroid, L1 loss; "Instance Mean Error [px]"); used by the survey
(Vandenhende et al., TPAMI 2021, Sec. 4.2.2) as the "I (px)" column of Table 4.

Formats:
    pred: [B, 2, H, W] offsets (dy, dx) in pixels of the input; target: FloatTensor
    [B, 2, H, W], (dy, dx) from the pixel to its instance's centroid on instance pixels and
    NaN elsewhere. A pixel is valid when both target components are finite. NaN is the ignore
    marker because every finite value, negative or large, is a possible offset.

Loss: L1 averaged over the valid elements (2 per valid pixel):
    sum_valid (|dy_hat - dy| + |dx_hat - dx|) / (2 * n_valid);
invalid targets are replaced before the subtraction, so no NaN reaches the gradient. A batch
without valid pixels gives exactly 0, with a gradient graph.

Metric state (float64, sum-reducible): [sum e, sum e^2, sum (|ddy| + |ddx|), n_valid] with
e = ||pred - target||_2 per valid pixel, so
    mean_error = sum e / n_valid             (px; the primary metric, survey "I (px)")
    rmse       = sqrt(sum e^2 / n_valid)
    l1         = sum (|ddy| + |ddx|) / n_valid
are exact under a data-parallel SUM all-reduce. An empty state gives NaN for every key.

Geometry (the data pipeline's augmentation, see ``base.Task``): mirroring the image negates dx;
a zoom-crop with exact factors (fy, fx) multiplies (dy, dx) by them.

Hyper-parameters: none.

Primary metric: ``mean_error``, lower is better.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
from torch import Tensor

from trainables.registry import register_task
from trainables.tasks.masked import MaskedDense


@register_task("instance_center")
class InstanceCenter(MaskedDense):
    """Instance-centre offsets (masked L1 loss; mean L2 offset error in px)."""

    primary_metric = "mean_error"
    higher_is_better = False
    ignore_value = float("nan")

    @property
    def out_channels(self) -> int:
        return 2

    def valid_mask(self, target: Tensor) -> Tensor:
        """Per pixel [B, 1, H, W]: both components finite."""
        return torch.isfinite(target).all(dim=1, keepdim=True)

    def hflip(self, target: Tensor) -> Tensor:
        """Mirrored map, dx negated."""
        out = target.flip(-1)
        out[1].neg_()
        return out

    def zoom(self, target: Tensor, s: float, factors: Tuple[float, float]) -> Tensor:
        """Offsets in px of the zoomed image: (dy, dx) * (fy, fx)."""
        return target * torch.tensor(factors).view(2, 1, 1)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.masked_l1(pred, target)  # / (2 * n_valid): the elements of the valid pixels

    def metric_state(self, device: torch.device | str = "cpu") -> Tensor:
        return torch.zeros(4, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update_metric(self, state: Tensor, pred: Tensor, target: Tensor) -> None:
        valid, _, diff = self.masked_diff(pred, target)
        l2 = diff.square().sum(dim=1).sqrt()
        state += torch.stack([l2.sum(), l2.square().sum(), diff.abs().sum(), valid.sum().to(torch.float64)])

    def compute_metric(self, state: Tensor) -> Dict[str, float]:
        e, e2, l1, n = (float(v) for v in state.detach().to("cpu", torch.float64))
        if n <= 0:
            return {"mean_error": float("nan"), "rmse": float("nan"), "l1": float("nan")}
        return {"mean_error": e / n, "rmse": math.sqrt(e2 / n), "l1": l1 / n}

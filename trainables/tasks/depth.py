"""Monocular depth estimation: masked L1 loss, RMSE pooled over the valid pixels of the split.

Survey: Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey",
TPAMI 2021 - the "D (rmse)" columns of the NYUD-v2 tables (Tables 3, 5, 7, 9).

Formats:
    pred: [B, 1, H, W] metres; target: FloatTensor [B, 1, H, W] metres. A target pixel is
    valid when it is finite and > ``min_depth``; 0 therefore marks missing depth.

Loss: L1 averaged over the valid pixels of the batch, sum |pred - gt| / n_valid (a batch
without valid pixels gives exactly 0, with a gradient graph).

Metric state: [sum (pred-gt)^2, sum |pred-gt|, sum |pred-gt|/gt, n_valid] in float64, so
    rmse    = sqrt(sum (pred-gt)^2 / n_valid)        (pooled over all valid pixels of the split,
                                                      not a mean of per-image RMSEs)
    l1      = sum |pred-gt| / n_valid
    abs_rel = sum |pred-gt| / gt / n_valid
are exact under a data-parallel SUM all-reduce. An empty state gives NaN for every key.

Hyper-parameters:
    min_depth (float >= 0, default 0.0): targets <= min_depth are invalid.

Primary metric: ``rmse``, lower is better.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor

from trainables.registry import register_task
from trainables.tasks.masked import MaskedDense


@register_task("depth")
class Depth(MaskedDense):
    """Depth (masked L1 loss; pooled RMSE, abs-rel and L1 over valid pixels)."""

    primary_metric = "rmse"
    higher_is_better = False

    def __init__(self, name: str = "depth", *, min_depth: float = 0.0):
        super().__init__(name)
        if isinstance(min_depth, bool) or not isinstance(min_depth, (int, float)) or not (
            math.isfinite(min_depth) and min_depth >= 0
        ):
            raise ValueError(f"depth: min_depth must be a finite float >= 0, got {min_depth!r}")
        self.min_depth = float(min_depth)

    @property
    def out_channels(self) -> int:
        return 1

    def valid_mask(self, target: Tensor) -> Tensor:
        return torch.isfinite(target) & (target > self.min_depth)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.masked_l1(pred, target)

    def metric_state(self, device: torch.device | str = "cpu") -> Tensor:
        return torch.zeros(4, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update_metric(self, state: Tensor, pred: Tensor, target: Tensor) -> None:
        valid, gt, diff = self.masked_diff(pred, target)
        rel = torch.where(valid, diff.abs() / torch.where(valid, gt, 1.0), torch.zeros_like(gt))
        state += torch.stack(
            [diff.square().sum(), diff.abs().sum(), rel.sum(), valid.sum().to(torch.float64)]
        )

    def compute_metric(self, state: Tensor) -> Dict[str, float]:
        sq, ab, rel, n = (float(v) for v in state.detach().to("cpu", torch.float64))
        if n <= 0:
            return {"rmse": float("nan"), "abs_rel": float("nan"), "l1": float("nan")}
        return {"rmse": math.sqrt(sq / n), "abs_rel": rel / n, "l1": ab / n}

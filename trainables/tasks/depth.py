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

Evaluation clamp: the survey's evaluation code sets ``pred[pred <= 0] = 1e-9`` before it
computes the metrics (a metric depth is positive); ``eval_clamp`` does the same in
``update_metric`` only - every metric above sees the clamped prediction, the loss never does.

Geometry (the data pipeline's augmentation, see ``base.Task``): a zoom-crop that enlarges the
image s times brings the scene s times closer, so metric depth is divided by s and a disparity
map (larger = nearer; Cityscapes) multiplied by s.

Hyper-parameters (``DepthParams``):
    min_depth (float >= 0, default 0.0): targets <= min_depth are invalid.
    disparity (bool, default False): the target is a disparity (set by the datasets that serve
        one, e.g. Cityscapes); only the zoom rule depends on it.
    eval_clamp (float >= 0 or None, default 1e-9, the survey's): value that replaces
        predictions <= 0 in the metrics; None disables the clamp.
    primary ("rmse" | "l1" | "abs_rel", default "rmse"): the primary metric (Delta_m, model
        selection, the table's column); a dataset whose paper reports another sets it, e.g. MGM's
        mean absolute error ("l1") on its NYUv2.

Primary metric: ``primary`` (``rmse`` by default), lower is better.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from trainables.registry import register_task
from trainables.tasks.masked import MaskedDense


PRIMARY = ("rmse", "l1", "abs_rel")


@dataclass(frozen=True)
class DepthParams:
    """Parameters of ``depth`` (see the module docstring)."""

    min_depth: float = 0.0
    disparity: bool = False
    eval_clamp: Optional[float] = 1e-9
    primary: str = "rmse"

    def __post_init__(self) -> None:
        if self.primary not in PRIMARY:
            raise ValueError(f"depth: primary must be one of {', '.join(map(repr, PRIMARY))}, got {self.primary!r}")
        if not _finite(self.min_depth) or self.min_depth < 0:
            raise ValueError(f"depth: min_depth must be a finite float >= 0, got {self.min_depth!r}")
        if not isinstance(self.disparity, bool):
            raise ValueError(f"depth: disparity must be a bool, got {self.disparity!r}")
        if self.eval_clamp is not None and (not _finite(self.eval_clamp) or self.eval_clamp < 0):
            raise ValueError(f"depth: eval_clamp must be a finite float >= 0 or None, got {self.eval_clamp!r}")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@register_task("depth")
class Depth(MaskedDense):
    """Depth (masked L1 loss; pooled RMSE, abs-rel and L1 over valid pixels)."""

    Params = DepthParams
    primary_metric = "rmse"
    higher_is_better = False
    ignore_value = 0.0  # invalid for every min_depth >= 0

    def __init__(self, name: Optional[str] = None, params=None, **kwargs):
        super().__init__(name, params, **kwargs)
        self.primary_metric = self.params.primary  # per instance: the dataset chooses (module docstring)

    @property
    def out_channels(self) -> int:
        return 1

    def valid_mask(self, target: Tensor) -> Tensor:
        return torch.isfinite(target) & (target > self.params.min_depth)

    def zoom(self, target: Tensor, s: float, factors: Tuple[float, float]) -> Tensor:
        """Metric depth / s (the scene comes s times closer); disparity * s."""
        return target * s if self.params.disparity else target / s

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.masked_l1(pred, target)

    def metric_state(self, device: torch.device | str = "cpu") -> Tensor:
        return torch.zeros(4, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update_metric(self, state: Tensor, pred: Tensor, target: Tensor) -> None:
        clamp = self.params.eval_clamp
        if clamp is not None:  # the survey's pred[pred <= 0] = 1e-9
            pred = torch.where(pred <= 0, torch.full_like(pred, clamp), pred)
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

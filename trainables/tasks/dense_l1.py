"""Generic dense regression with an L1 loss: one task type for every per-pixel map scored by L1.

Used for the Taskonomy maps that are plain regression targets - edge texture, edge occlusion,
reshading, z-buffer depth - rather than seven near-identical copies. JTR (Nishi et al.,
CVPR 2024, Sec. 4.1): "For the four additional tasks in the Taskonomy experiment [edge
occlusion, reshading, 2D keypoints, edge texture], we use L1-norm loss following Standley et
al. ... we use absolute error (aErr)"; survey (Vandenhende et al., TPAMI 2021) Table 5: the
"D (L1)", "E (L1)" and "K (L1)" columns on Taskonomy. ``keypoints`` is this task under its
own name (``trainables/tasks/keypoints.py``).

Formats:
    pred: [B, C, H, W]; target: FloatTensor [B, C, H, W]. A target *element* is invalid when
    it is not finite (NaN marks "no label here") or equals ``invalid_value`` (e.g. 0.0 for a
    depth map in the repository's depth format, where 0 = missing).

Loss: L1 averaged over the valid elements of the batch, sum |pred - gt| / n_valid; a batch
without valid elements gives exactly 0 (with a gradient graph). Invalid targets are replaced
by 0 *before* the difference, so no NaN reaches the gradient.

Metric state: [sum |pred - gt|, sum (pred - gt)^2, n_valid] in float64, so
    l1   = sum |pred - gt| / n_valid        (pooled over every valid element of the split)
    rmse = sqrt(sum (pred - gt)^2 / n_valid)
are exact under a data-parallel SUM all-reduce. An empty state gives NaN for both keys.

Hyper-parameters (``DenseL1Params``):
    channels (int >= 1, default 1): C, channels of the map (and of the head).
    invalid_value (float or None, default None): target value that marks an invalid element,
        besides non-finite values.

Primary metric: ``l1``, lower is better.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

import torch
from torch import Tensor

from trainables.registry import register_task
from trainables.tasks.masked import MaskedDense


@dataclass(frozen=True)
class DenseL1Params:
    """Parameters of ``dense_l1`` (see the module docstring); ``task`` names the type in errors."""

    channels: int = 1
    invalid_value: Optional[float] = None
    task: ClassVar[str] = "dense_l1"

    def __post_init__(self) -> None:
        c, v = self.channels, self.invalid_value
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"{self.task}: channels must be an int >= 1, got {c!r}")
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ValueError(f"{self.task}: invalid_value must be a finite number or None, got {v!r}")


@register_task("dense_l1")
class DenseL1(MaskedDense):
    """Dense regression map (masked L1 loss; pooled L1 and RMSE over valid elements)."""

    Params = DenseL1Params
    primary_metric = "l1"
    higher_is_better = False

    @property
    def ignore_value(self) -> float:
        v = self.params.invalid_value
        return float("nan") if v is None else float(v)

    @property
    def out_channels(self) -> int:
        return self.params.channels

    def valid_mask(self, target: Tensor) -> Tensor:
        valid = torch.isfinite(target)
        if self.params.invalid_value is not None:
            valid = valid & (target != self.params.invalid_value)
        return valid

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.masked_l1(pred, target)

    def metric_state(self, device: torch.device | str = "cpu") -> Tensor:
        return torch.zeros(3, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update_metric(self, state: Tensor, pred: Tensor, target: Tensor) -> None:
        valid, _, diff = self.masked_diff(pred, target)
        state += torch.stack([diff.abs().sum(), diff.square().sum(), valid.sum().to(torch.float64)])

    def compute_metric(self, state: Tensor) -> Dict[str, float]:
        ab, sq, n = (float(v) for v in state.detach().to("cpu", torch.float64))
        if n <= 0:
            return {"l1": float("nan"), "rmse": float("nan")}
        return {"l1": ab / n, "rmse": math.sqrt(sq / n)}

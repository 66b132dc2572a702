"""2-D keypoints as a dense regression map (Taskonomy "keypoints2d"): L1 loss, L1 metric.

Survey: Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey",
TPAMI 2021 - Table 5, column "K (L1)" on Taskonomy (printed x100); JTR (Nishi et al., CVPR
2024) Table 3 "KeyP." (aErr, L1 loss following Standley et al., ICML 2020). Taskonomy's 2-D
keypoints (Zamir et al., CVPR 2018) are a per-pixel heat map of SURF-like interest points, so
the task is the generic masked-L1 regression of ``dense_l1.py`` under its own name: same
formats, loss, metric state and hyper-parameters (``channels`` default 1, ``invalid_value``).

Formats: pred [B, 1, H, W]; target FloatTensor [B, 1, H, W] (the PNG value / its dtype's
maximum, in [0, 1]; NaN = no label).

Primary metric: ``l1``, lower is better.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainables.registry import register_task
from trainables.tasks.dense_l1 import DenseL1, DenseL1Params


@dataclass(frozen=True)
class KeypointsParams(DenseL1Params):
    """``dense_l1``'s parameters under this type's name."""

    task: ClassVar[str] = "keypoints"


@register_task("keypoints")
class Keypoints(DenseL1):
    """2-D keypoint heat map (masked L1 loss; pooled L1 / RMSE), Taskonomy "keypoints2d"."""

    Params = KeypointsParams

"""Human part segmentation: 6 body parts + background, cross-entropy, mIoU (PASCAL-Context).

Survey: Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey",
TPAMI 2021 - the "Parts (mIoU)" columns of Tables 8 and 9 (PASCAL). The labels are the
PASCAL-Part person annotations (Chen et al., CVPR 2014) grouped as in the survey's code (from
ASTMT, Maninis et al., CVPR 2019) into 0 background, 1 head, 2 torso, 3 upper arms, 4 lower
arms (with hands), 5 upper legs, 6 lower legs (with feet); see
``trainables/datasets/pascal_context.py``.

Formats, loss and metric are those of ``semseg`` (this class reuses it): pred logits
[B, C, H, W]; target LongTensor [B, H, W] in [0, C) or ``ignore_index``; per-pixel
cross-entropy (the survey code's ``SoftMaxwithLoss``, ignore 255); mIoU and pixel accuracy
from a split-level confusion matrix over the C classes, background included. Images without
a person carry no label (the dataset's mask is False) and so never enter loss or metric - the
survey code achieves the same by setting such targets to 255 everywhere.

Hyper-parameters (``HumanPartsParams``):
    num_classes (int >= 2, default 7): 6 parts + background.
    ignore_index (int, default 255), class_weights (default None): as in ``semseg``.

Primary metric: ``miou``, higher is better.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainables.registry import register_task
from trainables.tasks.semseg import SemSeg, SemSegParams


@dataclass(frozen=True)
class HumanPartsParams(SemSegParams):
    """``semseg``'s parameters with 6 parts + background as the default number of classes."""

    num_classes: int = 7
    task: ClassVar[str] = "human_parts"


@register_task("human_parts")
class HumanParts(SemSeg):
    """Human part segmentation (6 parts + background; cross-entropy, confusion-matrix mIoU)."""

    Params = HumanPartsParams

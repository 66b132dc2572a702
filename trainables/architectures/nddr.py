"""NDDR-CNN: one network per task, fused after each stage by 1x1-conv dimensionality reduction.

Gao, Ma, Zhao, Liu & Yuille, "NDDR-CNN: Layerwise Feature Fusing in Multi-Task CNNs by Neural
Discriminative Dimensionality Reduction", CVPR 2019; Vandenhende et al., "Multi-Task Learning
for Dense Prediction Tasks: A Survey", TPAMI 2021, Sec. 2.2.2 and Fig. 3 (Tables 3-5,
"NDDR-CNN" rows).

The cross-stitch network (``cross_stitch.py``, same towers, heads, initialisation from the
single-task networks and parameter split) with a different unit. After each chosen stage s the
T task features [B, C, H, W] are concatenated to [B, T*C, H, W], and each task i gets

    x~_i = ReLU(BN_i(W_i * concat(x_1, ..., x_T)))      W_i: 1x1 conv T*C -> C, no bias

initialised as the survey code does: W_i's block on task i's channels alpha * I, on every other
task's beta * I (a cross-stitch unit with scalar weights), BN weight 1 and bias 0. A unit's
conv and BN train at ``lr_mult`` x the base rate (the survey code puts every parameter of its
NDDR layers in the 100 x group). ``last_shared_module()`` is the last layer's convs (every
task's loss passes through them, each through its own W_i), not the BatchNorms after them.

Size on NYUD-v2 (dilated ResNet-50, ASPP heads, semseg + depth, 480 x 640). A layer at C
channels adds T * (T*C*C + 2*C) parameters and T*T*C*C MACs per pixel of its stage:
    params: 4 * (64^2 + 256^2 + 512^2 + 1024^2 + 2048^2) + 4 * 3,904 = 22.31 M
            -> 79.29 + 22.31 = 101.6 M (survey Table 3: 101)
    MACs:   4 * (64^2 + 256^2) * 120*160 + 4 * (512^2 + 1024^2 + 2048^2) * 60*80 = 111.0 G
            -> 383.4 + 111.0 = 494.4 G (survey: 413, which is 383 + 30.5 G, the layers without
            layer4's 80.5 G; the survey's Cityscapes row, 266 + 106 = 372 G, does count layer4's.)

Hyper-parameters:
    stages (list of stage indices or None, default None = every stage including the stem, as
        the survey code's ``nddr_stages``: conv (= our stem, max-pool included), layer1..4).
    alpha (float, default 0.9): initial diagonal weight on a task's own features.
    beta (float, default 0.1): initial diagonal weight on each other task's features.
    bn_momentum (float in (0, 1], default 0.05): momentum of the layers' BatchNorms (the
        NDDR-CNN code's value, kept by the survey code).
    lr_mult (float > 0, default 100.0): learning-rate multiplier of the NDDR layers.

Deviations, from the paper and from the survey code:
    - The survey code's optimiser overwrites the layers' 100 x rate with the base rate from the
      first epoch (a known defect of that code); here ``param_groups`` keeps it for the whole run.
    - The survey code asserts SGD for this model; here the optimiser is the trial's choice.
    - Stride-4 skip features for DeepLab-v3+ heads (the survey code has no such head here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.architectures.cross_stitch import CrossStitchNetwork, check_mixing_params
from trainables.plugins import ArchitectureInfo
from trainables.registry import register_architecture


@dataclass(frozen=True)
class NDDRParams:
    """Hyper-parameters of ``nddr`` (see the module docstring)."""

    stages: Optional[Tuple[int, ...]] = None
    alpha: float = 0.9
    beta: float = 0.1
    bn_momentum: float = 0.05
    lr_mult: float = 100.0

    def __post_init__(self) -> None:
        check_mixing_params("nddr", self.stages, self.lr_mult, alpha=self.alpha, beta=self.beta,
                            bn_momentum=self.bn_momentum)
        if not 0.0 < self.bn_momentum <= 1.0:
            raise ValueError(f"nddr: bn_momentum must be in (0, 1], got {self.bn_momentum!r}")


class NDDRLayer(nn.Module):
    """Per task: 1x1 conv over all tasks' concatenated features (T*C -> C) + BN + ReLU."""

    def __init__(self, task_names: Sequence[str], channels: int, alpha: float, beta: float, bn_momentum: float):
        super().__init__()
        self.task_names, t, c = list(task_names), len(task_names), channels
        self.convs = nn.ModuleDict({name: nn.Conv2d(t * c, c, 1, bias=False) for name in self.task_names})
        self.norms = nn.ModuleDict({name: nn.BatchNorm2d(c, momentum=bn_momentum) for name in self.task_names})
        with torch.no_grad():
            for i, name in enumerate(self.task_names):
                blocks = self.convs[name].weight.view(c, t, c)  # [out, task j, in]
                blocks.zero_()
                for j in range(t):
                    blocks[:, j, :].diagonal().fill_(alpha if j == i else beta)

    def forward(self, xs: Sequence[Tensor]) -> List[Tensor]:
        x = torch.cat(list(xs), dim=1)  # in task order, matching the weight blocks
        return [F.relu(self.norms[name](self.convs[name](x))) for name in self.task_names]


@register_architecture("nddr")
class NDDRCNN(CrossStitchNetwork):
    """NDDR-CNN: a backbone per task, fused by 1x1 conv + BN + ReLU layers after every stage."""

    Params = NDDRParams
    INFO = ArchitectureInfo(init_from_single_task=True, needs_sequential_stages=True)
    FIRST_DEFAULT_STAGE = 0

    def make_unit(self, channels: int) -> nn.Module:
        p = self.params
        return NDDRLayer(self.task_names, channels, p.alpha, p.beta, p.bn_momentum)

    def last_shared_module(self) -> nn.Module:
        return self.units[str(self.unit_stages[-1])].convs

"""MTAN: a shared backbone whose stages each task reads through its own soft attention masks.

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019;
Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI 2021,
Sec. 2.2.3 and Fig. 4 (Tables 3-5, "MTAN" rows), which builds it on a ResNet. This is the
survey code's ResNet version (``models/mtan.py``), for any backbone with sequential stages.

The backbone (stem + stages 1..S, each a Sequential of blocks) runs once and is shared. For
every stage k >= 1, with b_k its features before the stage's last block and u_k = last
block(b_k) its output, task t computes

    m_k^t = sigmoid(BN(conv1x1(ReLU(BN(conv1x1(in_k^t))))))   (C_k -> C_k / 4 -> C_k, with bias)
    a_k^t = m_k^t * u_k                                         (the task's features at stage k)
    in_1^t = b_1 (the stem is part of stage 1's b, as the survey's "layer1" includes it),
    in_k^t = concat(b_k, pool_k(R_{k-1}(a_{k-1}^t)))   for k >= 2 (2 * C_k channels)

where R_{k-1} is a shared refinement block (one ResNet Bottleneck C_{k-1} -> C_k, width C_k / 4,
with a 1x1 conv + BN shortcut) and pool_k an r x r max-pool with r = stage_strides[k] /
stage_strides[k-1] (identity where the stage keeps the resolution: only after layer1 for the
dilated ResNet-50, as the survey's NYUD config). The heads read a_S^t; a head with a stride-4
skip (DeepLab-v3+) reads a_L^t of the stride-4 stage L (the shared stem output if L = 0).

Parameter split: the backbone and the refinement blocks are shared; each task's attention masks
and head are its own. ``last_shared_module()`` is the backbone's last conv: every head reads
its output u_S (through the task's mask), as in the MTL baseline.

Size on NYUD-v2 (dilated ResNet-50, ASPP heads, semseg + depth, 480 x 640): the MTL baseline
(55.77 M / 266.6 G) + per task 4.18 M masks + 7.93 M shared refinement = 72.1 M; MACs
+ per task 20.5 G (masks) + 43.4 G (refinement, run on each task's features) = 394.3 G.
The survey prints 214 M / 1064 G; see tests/trainables/test_encoder_architectures.py.

Hyper-parameters: none (mask width C / 4 and the refinement block follow the survey code; the
pooling follows the backbone's ``stage_strides``).

Deviations, from the paper and from the survey code:
    - The paper's attention blocks sit on a SegNet/VGG encoder; the survey's ResNet version is
      followed (masks over each stage's last block, Bottleneck refinement shared by the tasks).
    - Pooling is derived from ``stage_strides`` and uses ceil_mode, so odd feature sizes match
      the strided convs (ceil(n / 2)); for even sizes it is the survey code's 2 x 2 max-pool.
    - Stride-4 skip features for DeepLab-v3+ heads (the survey code has no such head here).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

import torch
from torch import Tensor, nn

from trainables.architectures.base import (
    BackboneFactory,
    HeadFactory,
    MultiTaskModel,
    last_stage,
    last_weight_layer,
    params_of,
)
from trainables.heads.base import apply_head
from trainables.plugins import ArchitectureInfo
from trainables.registry import register_architecture
from trainables.tasks.base import Task

TaskFeatures = Dict[str, List[Tensor]]  # task -> one tensor per stage after the stem


def attention_mask(in_channels: int, channels: int) -> nn.Sequential:
    """1x1 conv -> BN -> ReLU -> 1x1 conv -> BN -> sigmoid, C/4 wide (survey code's AttentionLayer)."""
    mid = max(1, channels // 4)
    return nn.Sequential(nn.Conv2d(in_channels, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, channels, 1), nn.BatchNorm2d(channels), nn.Sigmoid())


class Refinement(nn.Module):
    """One ResNet Bottleneck, in -> out channels (width out / 4), with a 1x1 conv + BN shortcut."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = max(1, out_channels // 4)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def stride_pool(stride_from: int, stride_to: int) -> nn.Module:
    """The max-pool that takes features from one cumulative stride to the next (identity if equal)."""
    if stride_to % stride_from:
        raise ValueError(f"mtan: a stage goes from output stride {stride_from} to {stride_to}; "
                         "it needs an integer ratio to pool the attended features to the next stage")
    ratio = stride_to // stride_from
    return nn.Identity() if ratio == 1 else nn.MaxPool2d(ratio, ratio, ceil_mode=True)


@register_architecture("mtan")
class MTAN(MultiTaskModel):
    """MTAN: shared backbone, per-task attention masks over each stage's last block (survey's ResNet MTAN)."""

    INFO = ArchitectureInfo(needs_sequential_stages=True)

    def __init__(self, tasks: Mapping[str, Task], make_backbone: BackboneFactory, make_head: HeadFactory,
                 params=None, **kwargs):
        super().__init__(tasks, params, **kwargs)
        self.backbone = make_backbone()
        stages, channels, strides = self.backbone.stages, self.backbone.stage_channels, self.backbone.stage_strides
        short = [k for k in range(1, len(stages)) if len(stages[k]) < 2]
        if len(stages) < 2 or short:
            raise ValueError(f"{self.label()} attends over the last block of every stage after the stem; it needs a "
                             f"stem and at least one stage of >= 2 blocks (stages {short or 'none'} have fewer; "
                             f"{len(stages)} stages in all)")
        attended = range(1, len(stages))
        self.attention = nn.ModuleDict({
            name: nn.ModuleList([attention_mask(channels[k] * (1 if k == 1 else 2), channels[k]) for k in attended])
            for name in self.task_names
        })
        self.refine = nn.ModuleList([Refinement(channels[k], channels[k + 1]) for k in attended[:-1]])
        self.pool = nn.ModuleList([stride_pool(strides[k], strides[k + 1]) for k in attended[:-1]])
        low = self.backbone.low_level_index()
        low_channels = None if low is None else channels[low]
        self.heads = nn.ModuleDict(
            {name: make_head(task, self.backbone.out_channels, low_channels) for name, task in self.tasks.items()}
        )
        self.low_level = low if any(head.INFO.low_level for head in self.heads.values()) else None

    def attend(self, x: Tensor, keep_masks: bool = False) -> Tuple[Tensor, TaskFeatures, TaskFeatures]:
        """The (shared) stem output; per task, the attended features a_k of every stage k >= 1 (at
        index k - 1); and, if ``keep_masks``, per task the masks m_k (else empty lists)."""
        stages = self.backbone.stages
        stem = shared = stages[0](x)
        features: TaskFeatures = {name: [] for name in self.task_names}
        masks: TaskFeatures = {name: [] for name in self.task_names}
        for k in range(1, len(stages)):
            before = stages[k][:-1](shared)
            shared = stages[k][-1](before)
            for name in self.task_names:
                previous = features[name][-1] if features[name] else None
                if previous is not None:  # the previous stage's task features, refined and pooled
                    previous = self.pool[k - 2](self.refine[k - 2](previous))
                inputs = before if previous is None else torch.cat([before, previous], dim=1)
                mask = self.attention[name][k - 1](inputs)
                features[name].append(mask * shared)
                if keep_masks:
                    masks[name].append(mask)
        return stem, features, masks

    def attention_masks(self, x: Tensor) -> TaskFeatures:
        """Per task, the attention mask of every stage after the stem (values in (0, 1))."""
        return self.attend(x, keep_masks=True)[2]

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        stem, features, _ = self.attend(x)
        outputs = {}
        for name in self.task_names:
            low = None
            if self.low_level is not None:
                low = stem if self.low_level == 0 else features[name][self.low_level - 1]
            outputs[name] = apply_head(self.heads[name], features[name][-1], low)
        return self.resize_outputs(outputs, x.shape[-2:])

    def shared_parameters(self) -> List[nn.Parameter]:
        return params_of(self.backbone, self.refine)

    def task_specific_parameters(self, task: str) -> List[nn.Parameter]:
        self.check_task(task)
        return params_of(self.attention[task], self.heads[task])

    def last_shared_module(self) -> nn.Module:
        return last_weight_layer(last_stage(self.backbone))

"""The HRNet head: every scale upsampled to the finest, concatenated, two 1x1 convs.

Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition", TPAMI 2020
(HRNetV2's segmentation head), as the survey uses it with HRNet-18 (Sec. 4.3.1: "the
task-specific heads simply upsample and concatenate the multi-scale features before feeding
them to two consecutive convolutional layers"): bilinear upsampling of the 1/8, 1/16 and 1/32
maps to the 1/4 map's size, concatenation (18 + 36 + 72 + 144 = 270 channels for HRNet-18),
1x1 conv (270 -> 270) + BN + ReLU, 1x1 conv to the task's outputs. 0.08 M parameters and
0.8 G multiply-accumulates per output channel group at 480 x 640.

A multi-scale head (``HeadInfo.multi_scale``): built with the channels of every input map, in
order of increasing stride, and called with the list of maps (any number >= 1; the first is
the finest).

Hyper-parameters: none.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.heads.base import Head, HeadInfo
from trainables.registry import register_head


@register_head("hrnet")
class HRNetHead(Head):
    """Upsample every scale to the finest, concatenate, 1x1 conv + BN + ReLU, 1x1 conv."""

    INFO = HeadInfo(multi_scale=True)

    def __init__(self, in_channels: Sequence[int], out_channels: int, params=None, **kwargs):
        super().__init__()
        self.params = self.resolve_params(params, kwargs)
        channels = [int(c) for c in ([in_channels] if isinstance(in_channels, int) else in_channels)]
        total = sum(channels)
        self.in_channels = channels
        self.body = nn.Sequential(
            nn.Conv2d(total, total, 1, bias=False),
            nn.BatchNorm2d(total),
            nn.ReLU(inplace=True),
            nn.Conv2d(total, out_channels, 1),
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if isinstance(features, Tensor):
            features = [features]
        if len(features) != len(self.in_channels):
            raise ValueError(f"hrnet head built for {len(self.in_channels)} maps, called with {len(features)}")
        size = features[0].shape[-2:]
        maps = [features[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[1:]]
        return self.body(torch.cat(maps, dim=1))

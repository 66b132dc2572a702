"""PSP head: the pyramid pooling module of PSPNet + a 3x3 conv + a 1x1 classifier.

Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017, Sec. 3.2 and Fig. 3 (the survey's
[52]). The survey puts it on a dilated ResNet-50 for Cityscapes (Sec. 4.2.2, Table 4). Layout:

    pyramid pooling, one branch per bin b in ``bins``, on the input [B, C, h, w]:
        adaptive average pool to b x b -> 1x1 conv C -> C / len(bins) (no bias) + BN + ReLU
        -> bilinear upsampling back to h x w
    concat [input, branch_1, ..., branch_n]  (C + n * C / n = 2 C channels)
    3x3 conv 2 C -> ``channels`` (no bias) + BN + ReLU + Dropout(dropout)
    1x1 conv ``channels`` -> out_channels (with bias): the task output, at h x w

Size check against the survey (Table 4, Cityscapes at 256 x 512; the dilated ResNet-50 gives
2048 channels at 32 x 64 and has 23.51 M params / 49.8 G MACs), heads for semseg (19),
instance-centre offsets (2) and depth (1):
    params = 4 * 2048*512 (branches) + 4 * 2*512 (their BN) + 4096*512*9 (3x3) + 2*512 (BN)
             + 512*K + K
           = 4,194,304 + 4,096 + 18,874,368 + 1,024 + 513 K = 23,073,792 + 513 K
           (K = 19: 23.08 M; the three heads together 69.23 M)
    MACs   = 32*64 * (4096*512*9 + 512 K) + 2048*512 * (1 + 4 + 9 + 36) = 38.7 G per head
    MTL baseline    = 23.51 + 69.23 = 92.7 M  (Table 4: 92 M),  49.8 + 116.1 = 166.0 G  (166 G)
    single task x 3 = 3 * 23.51 + 69.23 = 139.8 M  (138 M),  3 * 49.8 + 116.1 = 265.6 G  (266 G)
(tests/trainables/test_heads_backbones.py checks these on the meta device.)

Hyper-parameters:
    bins (ints > 0, default (1, 2, 3, 6)): output sizes of the pooled branches (PSPNet's
        four-level pyramid). ``in_channels`` must be divisible by their number.
    channels (int > 0, default 512): width of the 3x3 conv after the concatenation (PSPNet's 512).
    dropout (float in [0, 1), default 0.1): dropout before the classifier (PSPNet's 0.1).

Deviations from PSPNet: no auxiliary loss head on layer3 (PSPNet's deep supervision, Sec. 3.3);
the survey does not mention it. Upsampling uses align_corners=False as every other module here
(PSPNet's Caffe interp layer aligns corners). In training mode the 1 x 1 bin's BN sees one value
per image and channel, so it needs batches of at least 2 images (as ASPP's image pooling).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.heads.base import Head
from trainables.registry import register_head
from trainables.schema import ConfigError


@dataclass(frozen=True)
class PSPParams:
    """Hyper-parameters of the ``psp`` head (see the module docstring)."""

    bins: Tuple[int, ...] = (1, 2, 3, 6)
    channels: int = 512
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not self.bins or any(isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in self.bins):
            raise ConfigError(f"bins: must be a non-empty list of positive ints, got {self.bins!r}")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or self.channels <= 0:
            raise ConfigError(f"channels: must be a positive int, got {self.channels!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout!r}")


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


@register_head("psp")
class PSPHead(Head):
    """PSPNet pyramid pooling head (survey's Cityscapes decoder): bins 1/2/3/6, 3x3 conv, classifier."""

    Params = PSPParams

    def __init__(self, in_channels: int, out_channels: int, params=None, **kwargs):
        super().__init__()
        self.params = p = self.resolve_params(params, kwargs)
        if in_channels % len(p.bins):
            raise ValueError(f"psp: in_channels={in_channels} is not divisible by the {len(p.bins)} bins {p.bins}; "
                             "choose bins whose count divides it")
        reduced = in_channels // len(p.bins)
        self.pyramid = nn.ModuleList(
            [nn.Sequential(nn.AdaptiveAvgPool2d(b), *_conv_bn_relu(in_channels, reduced, 1)) for b in p.bins]
        )
        self.bottleneck = nn.Sequential(*_conv_bn_relu(in_channels + len(p.bins) * reduced, p.channels, 3),
                                        nn.Dropout(p.dropout))
        self.classifier = nn.Conv2d(p.channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False) for branch in self.pyramid]
        return self.classifier(self.bottleneck(torch.cat([x, *pooled], dim=1)))

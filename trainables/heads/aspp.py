"""DeepLab-v3 head: Atrous Spatial Pyramid Pooling (ASPP) + a 3x3 conv + a 1x1 classifier.

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation" (DeepLab-v3),
arXiv 2017, Sec. 3.3 (the survey's [69]). The survey uses it as the task-specific head on a
dilated ResNet-50 for NYUD-v2 and Cityscapes (Sec. 4.2.1, Tables 3, 4, 6); this is the
layout of the survey code's ``DeepLabHead``:

    ASPP, five parallel branches on the input, each ``channels`` wide, conv without bias + BN + ReLU:
        1x1 conv
        3x3 conv, dilation rates[0]   (padding = dilation, so the size is kept)
        3x3 conv, dilation rates[1]
        3x3 conv, dilation rates[2]
        image pooling: global average pool -> 1x1 conv -> BN -> ReLU -> bilinear upsample
    concat (5 * channels) -> 1x1 projection to ``channels`` + BN + ReLU + Dropout(dropout)
    3x3 conv ``channels`` -> ``channels`` (no bias) + BN + ReLU
    1x1 conv ``channels`` -> out_channels (with bias): the task output

Size check against the survey (Table 3: 16.13 M params, 74.9 G MACs on the 2048-channel,
60 x 80 output of a dilated ResNet-50 for NYUD-v2 at 480 x 640, 40 classes):
    params = 2048*256 (1x1) + 3 * 2048*256*9 (atrous) + 2048*256 (pool) + 1280*256 (project)
             + 256*256*9 (3x3) + 7 BN * 2*256 + 256*40 + 40
           = 524,288 + 14,155,776 + 524,288 + 327,680 + 589,824 + 3,584 + 10,280 = 16.136 M
    MACs   = 60*80 * (524,288 + 14,155,776 + 327,680 + 589,824 + 10,240) + 524,288 = 74.9 G
Without the extra 3x3 conv it would be 15.55 M / 72.1 G, so the survey's head includes it.
The depth head (1 output channel) has 16.126 M; encoder + both heads = 55.77 M / 266.6 G, the
MTL baseline of Table 3. The atrous rates change neither count.

Hyper-parameters:
    rates (3 ints > 0, default (12, 24, 36)): dilation of the three 3x3 branches. DeepLab-v3
        uses (6, 12, 18) at output stride 16 and doubles them at output stride 8; the survey's
        code uses (12, 24, 36) with its output-stride-8 ResNet-50.
    channels (int, default 256): width of every branch and of the projection.
    dropout (float in [0, 1), default 0.5): dropout after the projection (the survey's code
        and torchvision use 0.5; 0 disables it).

Note: in training mode the image-pooling branch's BN sees one value per image and channel, so
it needs batches of at least 2 images (as in every DeepLab-v3 implementation).

``ASPP`` (the five branches + the projection + dropout) is the block the ``deeplabv3plus`` head
reuses. ``ASPPHead`` extends it with the 3x3 conv and the classifier rather than holding it as
a child, so its modules keep their creation order and state-dict keys (``branches.*``,
``project.*``, ``refine.*``, ``classifier.*``) - checkpoints written before the block was
factored out still load.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.heads.base import Head
from trainables.registry import register_head


@dataclass(frozen=True)
class ASPPParams:
    """Hyper-parameters of the ``aspp`` head (see the module docstring)."""

    rates: Tuple[int, int, int] = (12, 24, 36)
    channels: int = 256
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if any(r <= 0 for r in self.rates):
            raise ValueError(f"aspp: rates must be three positive ints, got {self.rates!r}")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or self.channels <= 0:
            raise ValueError(f"aspp: channels must be a positive int, got {self.channels!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"aspp: dropout must be in [0, 1), got {self.dropout!r}")


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _ImagePooling(nn.Module):
    """Global average pool -> 1x1 conv -> BN -> ReLU, broadcast back to the input size."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = _conv_bn_relu(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.proj(F.adaptive_avg_pool2d(x, 1))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """The ASPP block: five parallel branches (1x1, three atrous 3x3, image pooling), each
    ``channels`` wide, concatenated and projected to ``channels`` by a 1x1 conv + BN + ReLU,
    then dropout. [B, in_channels, h, w] -> [B, channels, h, w]."""

    def __init__(self, in_channels: int, channels: int, rates: Tuple[int, int, int], dropout: float):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, channels)]
            + [_conv_bn_relu(in_channels, channels, kernel=3, dilation=r) for r in rates]
            + [_ImagePooling(in_channels, channels)]
        )
        self.project = nn.Sequential(*_conv_bn_relu(5 * channels, channels), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


@register_head("aspp")
class ASPPHead(ASPP, Head):
    """DeepLab-v3 ASPP head (survey's NYUD/Cityscapes decoder): 5 branches, 3x3 conv, classifier."""

    Params = ASPPParams

    def __init__(self, in_channels: int, out_channels: int, params=None, **kwargs):
        p = self.resolve_params(params, kwargs)
        super().__init__(in_channels, p.channels, p.rates, p.dropout)  # the ASPP block: branches, project
        self.params = p
        self.refine = _conv_bn_relu(p.channels, p.channels, kernel=3)
        self.classifier = nn.Conv2d(p.channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.refine(super().forward(x)))

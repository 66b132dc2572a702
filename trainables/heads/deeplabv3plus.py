"""DeepLab-v3+ head: ASPP on the last features + a decoder that reads the stride-4 features.

Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
Segmentation" (DeepLab-v3+), ECCV 2018, Sec. 3.1 and Fig. 2. The survey reuses ASTMT's
DeepLab-v3+ (Maninis et al., CVPR 2019, the survey's [42]) on a dilated ResNet-26 for PASCAL
(Sec. 4.3.2, Table 8). Layout, for last features [B, C, h, w] and low-level (stride-4)
features [B, L, H, W]:

    ASPP block of ``trainables/heads/aspp.py`` on the last features (1x1, three atrous 3x3 at
        ``rates``, image pooling; concat -> 1x1 projection to ``channels`` + BN + ReLU + Dropout)
    bilinear upsampling of the ASPP output to H x W
    1x1 conv L -> ``low_level_channels`` (no bias) + BN + ReLU on the low-level features
    concat (channels + low_level_channels) -> two 3x3 convs to ``channels`` (no bias) + BN + ReLU
    1x1 conv ``channels`` -> out_channels (with bias): the task output at H x W (stride 4; the
        architecture upsamples it to the input size, DeepLab-v3+'s final x4)

Built as ``HEADS.get("deeplabv3plus")(in_channels, out_channels, low_channels=L)`` and called
as ``head(x, low)`` (``INFO.low_level``; see ``trainables/heads/base.py``).

Parameters for C = 2048 (ResNet-26/50), L = 256 (their layer1), the defaults and K outputs:
    ASPP    = 2048*256 + 3 * 2048*256*9 + 2048*256 + 1280*256 + 6 BN * 2*256 = 15,535,104
    low     = 256*48 + 2*48                                                  =     12,384
    decoder = (256+48)*256*9 + 2*256 + 256*256*9 + 2*256                     =  1,291,264
    output  = 256 K + K                      -> 16,838,752 + 257 K  (K = 21: 16.84 M)
    MACs on PASCAL (512 x 512, output stride 8: 64 x 64 and 128 x 128 maps, K = 21): 82.9 G.

Hyper-parameters:
    rates (3 ints > 0, default (12, 24, 36)): dilation of the ASPP's 3x3 branches. DeepLab-v3+
        uses (6, 12, 18) at output stride 16 and doubles them at output stride 8 (DeepLab-v3,
        Sec. 3.3; ASTMT's code does the same). The dilated encoders here (``dilated: true``)
        have output stride 8, as the survey's, hence (12, 24, 36); give (6, 12, 18) for an
        output-stride-16 encoder.
    channels (int > 0, default 256): width of the ASPP and of the decoder convs.
    low_level_channels (int > 0, default 48): width of the projected stride-4 features.
    dropout (float in [0, 1), default 0.1): dropout after the ASPP projection (DeepLab-v3+'s
        reference code keeps 0.9 there).

What matches the survey's PASCAL setup (Table 8) and what does not: the layout above is
ASTMT's ``ASPPv3Plus`` decoder, but ASTMT (and so the survey) runs it at width 64 (its
``--dec_w 64``; the low-level width scales to 48 * 64 / 256 = 12), on an SE-ResNet-26 at output
stride 16 with (6, 12, 18): set channels: 64, low_level_channels: 12, rates: [6, 12, 18] for
that width. Not reproduced here: the SE modules and the stride-16 encoder (``resnet26`` is
plain, output stride 32 or dilated to 8), ASTMT's per-task SE / adapter modulation, and its
MTL baseline, which shares the whole decoder across tasks and keeps only the last 1x1 conv per
task (hence Table 8's 19 M): ``mtl_baseline`` here gives every task its own head. Table 8's
103 M / 130 G single-task and 19 M / 24 G MTL columns are therefore not matched: resnet26
(13.95 M) + this head at width 64 (3.9 M) is 17.9 M per single-task network.

Deviations from DeepLab-v3+: plain (not depthwise-separable) convolutions in the ASPP and the
decoder, as DeepLab-v3+ with a ResNet backbone and ASTMT; no dropout in the decoder. As in the
``aspp`` head, the image-pooling branch's BN needs batches of at least 2 images in training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.heads.aspp import ASPP, _conv_bn_relu
from trainables.heads.base import Head, HeadInfo
from trainables.registry import register_head
from trainables.schema import ConfigError


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class DeepLabV3PlusParams:
    """Hyper-parameters of the ``deeplabv3plus`` head (see the module docstring)."""

    rates: Tuple[int, int, int] = (12, 24, 36)
    channels: int = 256
    low_level_channels: int = 48
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not all(_positive_int(r) for r in self.rates):
            raise ConfigError(f"rates: must be three positive ints, got {self.rates!r}")
        for name in ("channels", "low_level_channels"):
            if not _positive_int(getattr(self, name)):
                raise ConfigError(f"{name}: must be a positive int, got {getattr(self, name)!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout!r}")


@register_head("deeplabv3plus")
class DeepLabV3PlusHead(Head):
    """DeepLab-v3+ head (survey's PASCAL decoder, from ASTMT): ASPP + stride-4 skip + two 3x3 convs."""

    Params = DeepLabV3PlusParams
    INFO = HeadInfo(low_level=True)

    def __init__(self, in_channels: int, out_channels: int, params=None, *, low_channels: int, **kwargs):
        super().__init__()
        self.params = p = self.resolve_params(params, kwargs)
        c = p.channels
        self.aspp = ASPP(in_channels, c, p.rates, p.dropout)
        self.reduce_low = _conv_bn_relu(low_channels, p.low_level_channels)
        self.decoder = nn.Sequential(_conv_bn_relu(c + p.low_level_channels, c, kernel=3),
                                     _conv_bn_relu(c, c, kernel=3))
        self.classifier = nn.Conv2d(c, out_channels, 1)

    def forward(self, x: Tensor, low: Tensor) -> Tensor:
        y = F.interpolate(self.aspp(x), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.decoder(torch.cat([y, self.reduce_low(low)], dim=1)))

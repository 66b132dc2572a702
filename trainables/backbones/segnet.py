"""SegNet as MTAN, MTPSL and JTR use it: a VGG-16-like encoder and the mirrored decoder that
unpools with the encoder's max-pool indices, giving full-resolution shared features.

Badrinarayanan, Kendall & Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for
Image Segmentation", TPAMI 2017, in the variant of Liu, Johns & Davison, "End-to-End Multi-Task
Learning with Attention", CVPR 2019 (MTAN's "SegNet split", ``im2im_pred/model_segnet_split.py``),
copied by Li, Liu & Bilen (MTPSL, CVPR 2022) and Nishi et al. (JTR, CVPR 2024) for every NYUv2 /
Cityscapes table. With the task-specific ``segnet`` head (``trainables/heads/segnet.py``) under
``mtl_baseline`` it is their multi-task SegNet.

Layout (widths w = (64, 128, 256, 512, 512) by default, MTAN's "standard"; "wide" ends in 1024),
every "conv" a 3x3 conv (with bias) - BN - ReLU:

    encoder level i (i = 0..4):  conv w[i-1] -> w[i] (w[-1] = input channels), then 1 more conv
                                 w[i] -> w[i] at levels 0 and 1, 2 more at levels 2-4;
                                 2x2 max-pool (stride 2) keeping the indices
    decoder level i (i = 4..0):  max-unpool with level i's indices, conv w[i] -> w[i-1]
                                 (w[-1] = w[0] here), then 1 more conv w[i-1] -> w[i-1] at levels
                                 0 and 1, 2 more at levels 2-4

so the output is [B, w[0], H, W] (output stride 1). With ``deep`` every conv is two (MTAN's
"deep"). Initialisation as MTAN's: Xavier-normal conv weights, zero biases, BN weight 1, bias 0.
About 24.94 M parameters for the default widths (25.06 M with the segnet heads of NYUv2's three
tasks, MTAN's "SegNet split" without its 3 uncertainty weights); 288 x 384 images reach 9 x 12 at the
bottleneck (JTR's 512 x 9 x 12 latent).

Stages (the backbone contract): the encoder-decoder is ONE stage - the decoder needs the
encoder's pooling indices, so it cannot be cut into stages that pass one tensor along.
``info.sequential_stages`` is False (cross-stitch, NDDR-CNN, MTAN's attention and branched trees
are refused on it), stage_channels [w[0]], stage_strides [1]; ``features(x)`` is [forward(x)].

Deviation: unpooling restores the size before each pool (``output_size``), so inputs whose sides
are not multiples of 2^levels still give full-resolution features (MTAN's inputs always are).

Hyper-parameters:
    widths (sequence of ints > 0, default (64, 128, 256, 512, 512)): channels of each encoder
        level; its length is the number of levels (MTAN: 5). Inputs need sides >= 2^levels.
    deep (bool, default False): two convs in every conv layer (MTAN's "deep" SegNet).
    in_channels (int, default 3): channels of the input image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from trainables.backbones.base import Backbone, BackboneInfo
from trainables.registry import register_backbone


@dataclass(frozen=True)
class SegNetParams:
    """Hyper-parameters of ``segnet`` (see the module docstring)."""

    widths: Tuple[int, ...] = (64, 128, 256, 512, 512)
    deep: bool = False
    in_channels: int = 3

    def __post_init__(self) -> None:
        if not self.widths or not all(_is_positive_int(w) for w in self.widths):
            raise ValueError(f"segnet: widths must be a non-empty list of positive ints, got {self.widths!r}")
        if not isinstance(self.deep, bool):
            raise ValueError(f"segnet: deep must be a bool, got {self.deep!r}")
        if not _is_positive_int(self.in_channels):
            raise ValueError(f"segnet: in_channels must be a positive int, got {self.in_channels!r}")


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class _EncoderDecoder(nn.Module):
    """The whole SegNet; modules are registered in the order they run (the last conv is last)."""

    def __init__(self, p: SegNetParams):
        super().__init__()
        w = list(p.widths)

        def conv(cin: int, cout: int) -> nn.Sequential:
            layers: List[nn.Module] = []
            for k in range(2 if p.deep else 1):
                layers += [nn.Conv2d(cin if k == 0 else cout, cout, 3, padding=1), nn.BatchNorm2d(cout),
                           nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        def extra(level: int, c: int) -> List[nn.Module]:  # 1 more conv at levels 0-1, 2 from level 2 on
            return [conv(c, c) for _ in range(1 if level < 2 else 2)]

        self.encoder = nn.ModuleList(
            nn.Sequential(conv(w[i - 1] if i else p.in_channels, w[i]), *extra(i, w[i])) for i in range(len(w)))
        self.decoder = nn.ModuleList(  # decoder[k] runs k-th, i.e. at level len(w) - 1 - k
            nn.Sequential(conv(w[i], w[max(i - 1, 0)]), *extra(i, w[max(i - 1, 0)])) for i in reversed(range(len(w))))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        pooled = []  # per level: (indices, size before pooling)
        for level in self.encoder:
            x = level(x)
            size = x.shape[-2:]
            x, indices = F.max_pool2d(x, 2, 2, return_indices=True)
            pooled.append((indices, size))
        for level, (indices, size) in zip(self.decoder, reversed(pooled)):
            x = level(F.max_unpool2d(x, indices, 2, 2, output_size=size))
        return x


@register_backbone("segnet")
class SegNet(Backbone):
    """MTAN's SegNet (VGG-16-like encoder + unpooling decoder): full-resolution 64-channel features."""

    Params = SegNetParams
    INFO = BackboneInfo(sequential_stages=False)

    def __init__(self, params=None, **kwargs):
        super().__init__()
        self.params = p = self.resolve_params(params, kwargs)
        self.stages = nn.ModuleList([_EncoderDecoder(p)])  # one stage: the decoder needs the pool indices
        self.stage_channels = [p.widths[0]]
        self.stage_strides = [1]

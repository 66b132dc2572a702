"""Taskonomy's pixel-to-pixel decoder: the "15-layer" fully convolutional network, x16 upsampling.

Zamir et al., "Taskonomy: Disentangling Task Transfer Learning", CVPR 2018, Sec. 4 ("for all
pixel-to-pixel tasks [...] the decoder is a 15-layer fully convolutional network"); the survey
reuses it on Taskonomy (Sec. 4.2.3, Table 5). The paper gives no layer list; this is the one of
Taskonomy's released code, read in StanfordVL/taskonomy (``taskbank/lib/models/sample_models.py``,
``decoder_fc_15_layer_256_resolution_fully_convolutional_16x16x4``, used by the ``rgb2depth``,
``segmentsemantic``, ``edge2d`` and ``keypoint2d`` configs in ``taskbank/experiments/final/``)
and in the authors' PyTorch port (alexsax/midlevel-reps, ``visualpriors/taskonomy_network.py``,
``TaskonomyDecoder``). Taskonomy's encoder is a ResNet-50 at output stride 16 (layer3 and
layer4 without stride and without dilation; 16 x 16 for a 256 x 256 image) that ends with
``compress1``, a 3x3 conv to 8 channels + BN + ReLU: the 16 x 16 x 8 representation the
decoder reads. The scene task (``class_places``) reads that representation through 2 fc layers;
here image-level tasks get the ``linear`` head (``trainables/build.py``).

Layout (every conv 3x3 without bias + BN + LeakyReLU(negative_slope); "up" = transposed conv,
stride 2, doubling the size), channels:
    [bottleneck: in_channels -> 8 (ReLU), Taskonomy's compress1]
    conv 1024, conv 1024, conv 512, conv 256, conv 256, conv 128,
    up 64, conv 64, up 32, conv 32, up 16, conv 32, up 16,
    conv out_channels (with bias, no BN): output 16x the input size.
The released decoder has 14 layers (scopes conv2 ... deconv14 + decoder_output); its name keeps
the count of ``decoder_fc_15_layer_256_resolution``, whose first layer is an fc from a vector
representation, which the fully convolutional variant drops. With compress1 the head has 15.

Parameters (bottleneck 8, in_channels 2048, K outputs):
    bottleneck  2048*8*9 + 2*8                                                   =    147,472
    convs       9 * (8*1024 + 1024*1024 + 1024*512 + 512*256 + 256*256 + 256*128
                     + 128*64 + 64*64 + 64*32 + 32*32 + 32*16 + 16*32 + 32*16)   = 16,445,952
    their BN    2 * (1024+1024+512+256+256+128+64+64+32+32+16+32+16)            =      6,912
    output      16*9 K + K                  -> 16,600,336 + 145 K  (K = 1: 16.60 M)
    MACs on a 16 x 16 map: 256 * 16,441,344 (the 3x3 convs at 16 x 16) + 18.9 M + 37.7 M + 18.9 M
        + 37.7 M + 18.9 M + 75.5 M + 75.5 M (the upsampling part) + 9.4 M K = 4.50 G (K = 1).
Without the bottleneck (``bottleneck_channels: null``) the first conv reads in_channels:
2048*1024*9 = 18.9 M more parameters, 35.25 M and 9.28 G MACs per head.

Table 5 (single task x 5 = 224 M / 136 G, MTL baseline 130 M / 70 G at 256 x 256) is not
matched. Its two rows say one encoder = (224 - 130) / 4 = 23.5 M (a ResNet-50) and the five
heads 106.5 M together. Four of these heads (bottleneck 8) plus a linear scene head
(2048*365 + 365 = 0.75 M) are 67.2 M, so MTL baseline 90.7 M and single task 184.7 M; without
the bottleneck 141.8 M, i.e. 165.3 M / 259.3 M. The printed rows equal, to the rounding, three
bottleneck-free heads + the linear one (3 * 35.25 + 0.75 = 106.5 M; 224.1 M / 130.0 M), but the
survey describes no such model and its Taskonomy code is not public, so we do not bend the
head to it. For compute, (136 - 70) / 4 = 16.5 G per encoder fits no ResNet-50 in MACs at
256 x 256 (output stride 32: 5.3 G, 16: 8.1 G, 8: 24.9 G) but fits 2 x 8.1 G, i.e. Table 5
likely counts FLOPs = 2 x MACs, unlike Tables 3 and 4; our MACs (encoder at output stride 16
+ four heads + linear): MTL 26.3 G, single task 58.7 G.

Hyper-parameters:
    bottleneck_channels (int > 0 or None, default 8): Taskonomy's compress1 (3x3 conv + BN +
        ReLU to 8 channels), here the first layer of the head since the backbones end at
        their last stage; None reads the features directly.
    negative_slope (float >= 0, default 0.2): of the LeakyReLUs (Taskonomy's leaky_relu(0.2)).
    tanh_output (bool, default False): tanh on the output, as Taskonomy's targets in [-1, 1].

Deviations from Taskonomy: compress1 belongs to the head, so under ``mtl_baseline`` every task
has its own (147 k parameters) where Taskonomy's encoder would share it; no output tanh by
default, because the targets here are metres, logits and [0, 1] maps; transposed convs use
PyTorch's padding (1, output_padding 1) rather than TF's "SAME", which shifts the upsampling
grid by half an input pixel - immaterial when training from scratch, it only matters to load
Taskonomy's trained weights (not supported). The head always upsamples x16, matching
Taskonomy's output-stride-16 encoder; on an output-stride-8 backbone (``dilated: true``) at
256 x 256 it runs on 32 x 32 maps (4x the MACs) and the architecture resizes its 512 x 512
output to the input, on output stride 32 it upsamples 8 x 8 to 128 x 128 and the architecture
the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from trainables.heads.base import Head
from trainables.registry import register_head
from trainables.schema import ConfigError

# (out_channels, upsample) of the 13 hidden layers of Taskonomy's decoder, in order (+ the output conv)
LAYERS = ((1024, False), (1024, False), (512, False), (256, False), (256, False), (128, False),
          (64, True), (64, False), (32, True), (32, False), (16, True), (32, False), (16, True))


@dataclass(frozen=True)
class TaskonomyFCNParams:
    """Hyper-parameters of the ``taskonomy_fcn`` head (see the module docstring)."""

    bottleneck_channels: Optional[int] = 8
    negative_slope: float = 0.2
    tanh_output: bool = False

    def __post_init__(self) -> None:
        b = self.bottleneck_channels
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b <= 0):
            raise ConfigError(f"bottleneck_channels: must be a positive int or null, got {b!r}")
        if not isinstance(self.negative_slope, (int, float)) or self.negative_slope < 0:
            raise ConfigError(f"negative_slope: must be a number >= 0, got {self.negative_slope!r}")


def _layer(cin: int, cout: int, upsample: bool, slope: float) -> nn.Sequential:
    conv = (nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False) if upsample
            else nn.Conv2d(cin, cout, 3, padding=1, bias=False))
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.LeakyReLU(slope, inplace=True))


@register_head("taskonomy_fcn")
class TaskonomyFCNHead(Head):
    """Taskonomy's fully convolutional decoder (survey's Taskonomy head): 3x3 convs, output x16."""

    Params = TaskonomyFCNParams

    def __init__(self, in_channels: int, out_channels: int, params=None, **kwargs):
        super().__init__()
        self.params = p = self.resolve_params(params, kwargs)
        cin, layers = in_channels, []
        if p.bottleneck_channels is not None:
            cin = p.bottleneck_channels
            layers.append(nn.Sequential(nn.Conv2d(in_channels, cin, 3, padding=1, bias=False), nn.BatchNorm2d(cin),
                                        nn.ReLU(inplace=True)))
        for cout, upsample in LAYERS:
            layers.append(_layer(cin, cout, upsample, p.negative_slope))
            cin = cout
        layers.append(nn.Conv2d(cin, out_channels, 3, padding=1))
        if p.tanh_output:
            layers.append(nn.Tanh())
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

"""A tiny conv encoder for CPU smoke runs and the synthetic dataset.

Not from a paper: a stand-in for the survey's dilated ResNet (Sec. 4.2.1) that trains in
seconds on a laptop CPU. It keeps the properties the architectures rely on: stages split at
the same kind of boundaries (stem + 3 stages), a dense feature map at a small output stride,
and, like the dilated ResNet, stages past the output stride keep their resolution and dilate
instead of downsampling.

Layout: 4 stages, each two blocks ``conv3x3 - BN - ReLU`` (so a stage's last block is its
second conv, as the backbone contract asks); the first conv of a stage has stride 2 until the
output stride is reached, after that stride 1 and the dilation of both convs doubles per
stage. With the defaults on a 64 x 64 input:

    stage        0 (stem)   1          2          3
    channels     16         32         64         96
    stride       2          4          8          8 (dilation 2)

i.e. an 8 x 8 x 96 feature map, about 0.21 M parameters and 19 M multiply-accumulates per
image, while 8 x 8 logits upsampled bilinearly still learn the synthetic dataset's
piecewise-smooth dense targets.

Hyper-parameters:
    widths (sequence of ints > 0, default (16, 32, 64, 96)): channels of each stage; its
        length is the number of stages (>= 1).
    output_stride (int, default 8): 2, 4, 8, 16, ... up to 2 ** len(widths).
    in_channels (int, default 3): channels of the input image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from torch import nn

from trainables.backbones.base import Backbone
from trainables.registry import register_backbone


@dataclass(frozen=True)
class TinyCNNParams:
    """Hyper-parameters of ``tiny_cnn`` (see the module docstring)."""

    widths: Tuple[int, ...] = (16, 32, 64, 96)
    output_stride: int = 8
    in_channels: int = 3

    def __post_init__(self) -> None:
        if not self.widths or not all(_is_positive_int(w) for w in self.widths):
            raise ValueError(f"tiny_cnn: widths must be a non-empty list of positive ints, got {self.widths!r}")
        valid = [2**k for k in range(1, len(self.widths) + 1)]
        if self.output_stride not in valid:
            raise ValueError(
                f"tiny_cnn: output_stride={self.output_stride!r} must be one of {valid} "
                f"for {len(self.widths)} stages"
            )
        if not _is_positive_int(self.in_channels):
            raise ValueError(f"tiny_cnn: in_channels must be a positive int, got {self.in_channels!r}")


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _conv_bn_relu(cin: int, cout: int, stride: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@register_backbone("tiny_cnn")
class TinyCNN(Backbone):
    """Tiny 4-stage conv encoder (16-32-64-96 channels, output stride 8) for CPU smoke runs."""

    Params = TinyCNNParams

    def __init__(self, params=None, **kwargs):
        super().__init__()
        self.params = p = self.resolve_params(params, kwargs)
        stages, strides = [], []
        stride, dilation, cin = 1, 1, p.in_channels
        for cout in p.widths:
            if stride < p.output_stride:
                step, stride = 2, stride * 2
            else:
                step, dilation = 1, dilation * 2
            stages.append(nn.Sequential(_conv_bn_relu(cin, cout, step, dilation), _conv_bn_relu(cout, cout, 1, dilation)))
            strides.append(stride)
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(p.widths)
        self.stage_strides = strides

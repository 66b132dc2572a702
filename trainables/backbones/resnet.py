"""ResNet-18 / ResNet-50 encoders, optionally dilated to output stride 8.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (the survey's [75]);
dilation as in Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions",
ICLR 2016 (the survey's [76]). The survey's NYUD-v2 and Cityscapes experiments (Sec. 4.2.1,
Tables 3, 4, 6) use a dilated ResNet-50: layer3 and layer4 keep stride 1 and use dilation 2
and 4 instead, so the encoder outputs 2048 channels at 1/8 of the input (60 x 80 for a
480 x 640 NYUD image).

Built from torchvision's constructors with ``weights=None`` (random init, never a download)
and the classification tail (avgpool, fc) dropped: the ResNet-50 encoder has 23.51 M
parameters and, dilated, 116.8 G multiply-accumulates at 480 x 640 (PAPER_NOTES.md).

Stages: ``[stem (conv1, bn1, relu, maxpool), layer1, layer2, layer3, layer4]``
    resnet18 stage_channels [64, 64, 128, 256, 512]
    resnet50 stage_channels [64, 256, 512, 1024, 2048]
    stage_strides [4, 4, 8, 16, 32], dilated [4, 4, 8, 8, 8].

Hyper-parameters:
    dilated (bool, default False): output stride 8 instead of 32, by the survey code's rule
        (``ResnetDilated._nostride_dilate``, also torchvision's for Bottlenecks): layer3 and
        layer4 lose their stride; their 3x3 convs get dilation 2 and 4, except the conv that
        had the stride (first block), which gets half (1 and 2). torchvision refuses to dilate
        BasicBlocks, so ResNet-18 is converted here by that rule: in layer4's first block conv1
        has dilation 2 and conv2 dilation 4 (layer3: 1 and 2). Parameter counts are unchanged.
    zero_init_residual (bool, default False): zero-init the last BN of each residual block
        (torchvision's option; off, as in the survey's code).
    weights_path (str or None, default None): a local torchvision ResNet state dict (e.g.
        ImageNet weights copied onto the machine) to load; ``fc.*`` keys are ignored. Never
        downloads anything.

torchvision is imported when a ResNet is built, not when the package is imported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import nn

from trainables.backbones.base import Backbone
from trainables.registry import register_backbone


@dataclass(frozen=True)
class ResNetParams:
    """Hyper-parameters of the ResNet backbones (see the module docstring)."""

    dilated: bool = False
    zero_init_residual: bool = False
    weights_path: Optional[str] = None


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its classifier, exposed as five stages."""

    Params = ResNetParams
    DEPTH: ClassVar[int] = 0  # torchvision's resnet<DEPTH> constructor
    BASIC_BLOCKS: ClassVar[bool] = False  # torchvision cannot dilate BasicBlocks itself

    def __init__(self, params=None, **kwargs):
        super().__init__()
        from torchvision.models import resnet as tv_resnet

        self.params = params = self.resolve_params(params, kwargs)
        torchvision_dilates = params.dilated and not self.BASIC_BLOCKS
        net = getattr(tv_resnet, f"resnet{self.DEPTH}")(
            weights=None,
            zero_init_residual=params.zero_init_residual,
            replace_stride_with_dilation=[False, torchvision_dilates, torchvision_dilates],
        )
        if params.dilated and self.BASIC_BLOCKS:
            _dilate_basic_layer(net.layer3, dilation=2)
            _dilate_basic_layer(net.layer4, dilation=4)
        if params.weights_path is not None:
            state = torch.load(params.weights_path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            net.fc = nn.Identity()  # so that strict loading checks every encoder key
            net.load_state_dict(state, strict=True)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([stem, net.layer1, net.layer2, net.layer3, net.layer4])
        self.stage_channels = [64] + [_block_out_channels(layer) for layer in self.stages[1:]]
        self.stage_strides = [4, 4, 8, 8, 8] if params.dilated else [4, 4, 8, 16, 32]


def _dilate_basic_layer(layer: nn.Sequential, dilation: int) -> None:
    """Turn a stride-2 layer of BasicBlocks into a stride-1 dilated one, in place.

    The survey code's rule: the conv that had the stride (conv1 of the first block) gets
    ``dilation // 2``, every other 3x3 conv ``dilation``; the 1x1 downsample loses its stride.
    """
    for block in layer:
        for conv in (block.conv1, block.conv2):
            d = dilation // 2 if conv.stride == (2, 2) else dilation
            conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def _block_out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features


@register_backbone("resnet18")
class ResNet18(ResNetBackbone):
    """ResNet-18 encoder (BasicBlocks, 512 output channels), output stride 32 or 8 if dilated."""

    DEPTH, BASIC_BLOCKS = 18, True


@register_backbone("resnet50")
class ResNet50(ResNetBackbone):
    """ResNet-50 encoder (Bottlenecks, 2048 output channels), output stride 32 or 8 if dilated."""

    DEPTH = 50

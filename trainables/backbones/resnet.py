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
    dilated (bool, default False): output stride 8 (replace_stride_with_dilation =
        [False, True, True]) instead of 32. torchvision refuses to dilate BasicBlocks, so for
        ResNet-18 layer3/layer4 are converted here by the same rule (stride 1, dilation 2 / 4;
        each layer's first block keeps the previous dilation).
    zero_init_residual (bool, default False): zero-init the last BN of each residual block
        (torchvision's option; off, as in the survey's code).
    weights_path (str or None, default None): a local torchvision ResNet state dict (e.g.
        ImageNet weights copied onto the machine) to load; ``fc.*`` keys are ignored. Never
        downloads anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from trainables.registry import register_backbone


_BASIC_BLOCK_RESNETS = (tv_resnet.resnet18, tv_resnet.resnet34)


@dataclass(frozen=True)
class ResNetParams:
    """Hyper-parameters of the ResNet backbones (see the module docstring)."""

    dilated: bool = False
    zero_init_residual: bool = False
    weights_path: Optional[str] = None

    def __post_init__(self) -> None:
        for field in ("dilated", "zero_init_residual"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"resnet: {field} must be a bool, got {getattr(self, field)!r}")
        if self.weights_path is not None and not isinstance(self.weights_path, str):
            raise ValueError(f"resnet: weights_path must be a path string or None, got {self.weights_path!r}")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier, exposed as five stages."""

    def __init__(self, constructor: Callable[..., tv_resnet.ResNet], params: ResNetParams):
        super().__init__()
        self.params = params
        basic = constructor in _BASIC_BLOCK_RESNETS  # torchvision cannot dilate BasicBlocks itself
        torchvision_dilates = params.dilated and not basic
        net = constructor(
            weights=None,
            zero_init_residual=params.zero_init_residual,
            replace_stride_with_dilation=[False, torchvision_dilates, torchvision_dilates],
        )
        if params.dilated and basic:
            _dilate_basic_layer(net.layer3, previous=1, dilation=2)
            _dilate_basic_layer(net.layer4, previous=2, dilation=4)
        if params.weights_path is not None:
            state = torch.load(params.weights_path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            net.fc = nn.Identity()  # so that strict loading checks every encoder key
            net.load_state_dict(state, strict=True)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([stem, net.layer1, net.layer2, net.layer3, net.layer4])
        self.stage_channels = [64] + [_block_out_channels(layer) for layer in self.stages[1:]]
        self.stage_strides = [4, 4, 8, 8, 8] if params.dilated else [4, 4, 8, 16, 32]
        self.out_channels = self.stage_channels[-1]
        self.output_stride = self.stage_strides[-1]

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


def _dilate_basic_layer(layer: nn.Sequential, previous: int, dilation: int) -> None:
    """Turn a stride-2 layer of BasicBlocks into a stride-1 dilated one, in place.

    Follows torchvision's rule for Bottlenecks: the first block keeps the previous dilation
    (and loses its stride, also in the 1x1 downsample), the other blocks use ``dilation``;
    here it applies to both 3x3 convs of a BasicBlock.
    """
    for i, block in enumerate(layer):
        d = previous if i == 0 else dilation
        for conv in (block.conv1, block.conv2):
            conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def _block_out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    bn = last.bn3 if isinstance(last, tv_resnet.Bottleneck) else last.bn2
    return bn.num_features


@register_backbone("resnet18")
def resnet18(
    *,
    dilated: bool = ResNetParams.dilated,
    zero_init_residual: bool = ResNetParams.zero_init_residual,
    weights_path: Optional[str] = ResNetParams.weights_path,
) -> ResNetBackbone:
    """ResNet-18 encoder (BasicBlocks, 512 output channels), output stride 32 or 8 if dilated."""
    params = ResNetParams(dilated=dilated, zero_init_residual=zero_init_residual, weights_path=weights_path)
    return ResNetBackbone(tv_resnet.resnet18, params)


@register_backbone("resnet50")
def resnet50(
    *,
    dilated: bool = ResNetParams.dilated,
    zero_init_residual: bool = ResNetParams.zero_init_residual,
    weights_path: Optional[str] = ResNetParams.weights_path,
) -> ResNetBackbone:
    """ResNet-50 encoder (Bottlenecks, 2048 output channels), output stride 32 or 8 if dilated."""
    params = ResNetParams(dilated=dilated, zero_init_residual=zero_init_residual, weights_path=weights_path)
    return ResNetBackbone(tv_resnet.resnet50, params)

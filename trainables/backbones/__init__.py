"""Backbone (encoder) plug-ins, one file each.

Contract (what architectures rely on): ``BACKBONES.get(name)(**params)`` returns an
``nn.Module`` with

    forward(x) -> Tensor       feature map [B, out_channels, H / output_stride, W / output_stride]
    out_channels: int          channels of that feature map
    output_stride: int         input size / feature size
    stages: nn.ModuleList      the encoder split into consecutive stages (ResNet: stem,
                               layer1..layer4) such that forward(x) == running them in order;
                               soft-sharing and branched architectures cut here
    stage_channels: list[int]  output channels of each stage
    stage_strides: list[int]   cumulative output stride after each stage

Weights are randomly initialised: nothing is ever downloaded (a backbone may accept a path
to a local state dict).
"""
from trainables.backbones import hrnet, resnet, segnet, tiny, vgg  # noqa: F401

"""ResNet-18 / -26 / -50 encoders, optionally dilated to output stride 8, optionally ImageNet-initialised.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (the survey's [75]);
dilation as in Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions",
ICLR 2016 (the survey's [76]). The survey's NYUD-v2 and Cityscapes experiments (Sec. 4.2.1,
Tables 3, 4, 6) use a dilated ResNet-50: layer3 and layer4 keep stride 1 and use dilation 2
and 4 instead, so the encoder outputs 2048 channels at 1/8 of the input (60 x 80 for a
480 x 640 NYUD image). Its PASCAL experiments (Sec. 4.3.2, Table 8) reuse ASTMT's dilated
ResNet-26 (Maninis et al., CVPR 2019): Bottleneck blocks [2, 2, 2, 2], i.e. ResNet-50 with two
blocks per stage. ASTMT's is an SE-ResNet-26 with the stride on the blocks' 1x1 conv, run at
output stride 16 with every layer4 conv at dilation 2; ``resnet26`` here is torchvision's plain
Bottleneck (stride on the 3x3 conv) with the same dilation rule as the others - same parameter
count as ASTMT's without its SE modules, slightly different MACs.

Built from torchvision's ``ResNet`` class (BasicBlock [2, 2, 2, 2], Bottleneck [2, 2, 2, 2] or
[3, 4, 6, 3]; torchvision has no resnet26 constructor) with the classification tail (avgpool,
fc) dropped, weights randomly initialised unless asked for (never a download while building):
    resnet18 11.18 M, resnet26 13.95 M, resnet50 23.51 M parameters; dilated, the ResNet-50
    does 116.8 G multiply-accumulates at 480 x 640 (so the survey's Table 3 FLOPS).

Stages: ``[stem (conv1, bn1, relu, maxpool), layer1, layer2, layer3, layer4]``
    resnet18 stage_channels [64, 64, 128, 256, 512]
    resnet26, resnet50 stage_channels [64, 256, 512, 1024, 2048]
    stage_strides [4, 4, 8, 16, 32], dilated [4, 4, 8, 8, 8] (dilate_scale 16: [4, 4, 8, 16, 16]).

Hyper-parameters:
    dilated (bool, default False): output stride 8 instead of 32, by the survey code's rule
        (``ResnetDilated._nostride_dilate``, also torchvision's for Bottlenecks): layer3 and
        layer4 lose their stride; their 3x3 convs get dilation 2 and 4, except the conv that
        had the stride (first block), which gets half (1 and 2). torchvision refuses to dilate
        BasicBlocks, so ResNet-18 is converted here by that rule: in layer4's first block conv1
        has dilation 2 and conv2 dilation 4 (layer3: 1 and 2). Parameter counts are unchanged.
    dilate_scale (8 or 16, default 8): the output stride when dilated (the survey code's
        ``ResnetDilated(dilate_scale=...)``): 16 dilates layer4 only (dilation 2; its strided
        conv 1) - the output stride of Taskonomy's ResNet-50 encoder (Table 5).
    zero_init_residual (bool, default False): zero-init the last BN of each residual block
        (torchvision's option; off, as in the survey's code).
    pretrained (None or "imagenet", default None): "imagenet" starts from torchvision's
        ``IMAGENET1K_V1`` weights (resnet18-f37072fd.pth, resnet50-0676ba61.pth): the weights
        ``pretrained=True`` gave before torchvision 0.13, i.e. those the survey's code (2020)
        loaded; V2 (ResNet-50 80.9 % top-1 with a newer recipe) postdates the survey.
        ``prepare`` fetches the file into the torch hub cache on the driver; building reads it
        from that cache and never downloads. ResNet-26 has no torchvision weights: refused.
    weights_path (str or None, default None): a local torchvision-format ResNet state dict
        (e.g. the ImageNet file copied onto a machine without internet) loaded with
        ``torch.load(weights_only=True)``; ``fc.*`` keys are ignored; it takes precedence over
        ``pretrained``. Missing or unexpected keys, or shapes that do not fit, are a ValueError
        naming them.

On the meta device (size counting) no weights are read. torchvision is imported when a ResNet
is built, not when the package is imported.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from trainables.backbones.base import Backbone
from trainables.registry import register_backbone
from trainables.schema import ConfigError

PRETRAINED = (None, "imagenet")


@dataclass(frozen=True)
class ResNetParams:
    """Hyper-parameters of the ResNet backbones (see the module docstring)."""

    dilated: bool = False
    dilate_scale: int = 8
    zero_init_residual: bool = False
    pretrained: Optional[str] = None
    weights_path: Optional[str] = None

    def __post_init__(self) -> None:
        if self.dilate_scale not in (8, 16):
            raise ConfigError(f"dilate_scale: the output stride of a dilated ResNet is 8 or 16, got {self.dilate_scale!r}")
        if self.pretrained not in PRETRAINED:
            raise ConfigError(f"pretrained: must be null (random init) or 'imagenet', got {self.pretrained!r}")


@dataclass(frozen=True)
class ResNet26Params(ResNetParams):
    """``ResNetParams`` without ImageNet weights (torchvision has none for ResNet-26)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pretrained == "imagenet":
            raise ConfigError("pretrained: torchvision has no ImageNet weights for ResNet-26 (ASTMT's are for an "
                              "SE-ResNet-26, another architecture); give weights_path: /path/to/a torchvision-format "
                              "ResNet-26 state dict, or pretrained: null")


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its classifier, exposed as five stages."""

    Params = ResNetParams
    LAYERS: ClassVar[Tuple[int, int, int, int]] = (2, 2, 2, 2)  # blocks per stage
    BASIC_BLOCKS: ClassVar[bool] = False  # BasicBlock (torchvision cannot dilate them) or Bottleneck
    WEIGHTS: ClassVar[Optional[str]] = None  # torchvision's weights enum, e.g. "ResNet50_Weights"

    def __init__(self, params=None, **kwargs):
        super().__init__()
        from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

        self.params = params = self.resolve_params(params, kwargs)
        # which of layer2..layer4 trade their stride for dilation
        dilate = [False, params.dilated and params.dilate_scale == 8, params.dilated]
        net = ResNet(BasicBlock if self.BASIC_BLOCKS else Bottleneck, list(self.LAYERS),
                     zero_init_residual=params.zero_init_residual,
                     replace_stride_with_dilation=[False] * 3 if self.BASIC_BLOCKS else dilate)
        if self.BASIC_BLOCKS and dilate[1]:
            _dilate_basic_layer(net.layer3, dilation=2)
        if self.BASIC_BLOCKS and dilate[2]:
            _dilate_basic_layer(net.layer4, dilation=4 if dilate[1] else 2)
        net.fc = nn.Identity()  # dropped: strict loading then checks every encoder key
        if not net.conv1.weight.is_meta:
            if params.weights_path is not None:
                self._load(net, self._read(params.weights_path), params.weights_path)
            elif params.pretrained == "imagenet":
                self._load(net, self._read(self._cached_imagenet_file()), self._imagenet_file())
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([stem, net.layer1, net.layer2, net.layer3, net.layer4])
        self.stage_channels = [64] + [_block_out_channels(layer) for layer in self.stages[1:]]
        layer3 = 8 if dilate[1] else 16
        self.stage_strides = [4, 4, 8, layer3, layer3 if dilate[2] else 2 * layer3]

    # -- pretrained weights --------------------------------------------------------------------
    @classmethod
    def prepare(cls, params: Any) -> None:
        """Driver side: make sure the weights asked for are on this machine (fetch ImageNet
        weights into the torch hub cache), or fail with one line saying how to give a file."""
        p = cls.params_of(params)
        if p.weights_path is not None:
            if not os.path.isfile(p.weights_path):
                raise ValueError(f"{cls.label()}: weights_path {p.weights_path!r} is not a file")
            return
        if p.pretrained == "imagenet":
            weights = cls._imagenet_weights()
            try:
                weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
            except Exception as err:  # no network, HTTP error, bad hash, unreadable file: one fix for all
                raise ValueError(f"{cls.label()}: pretrained: imagenet needs {cls._imagenet_file()} from "
                                 f"download.pytorch.org, which could not be fetched ({_one_line(err)}); download it "
                                 "on a machine with internet and pass backbone.params.weights_path: "
                                 f"/path/to/{cls._imagenet_file()}") from None

    @classmethod
    def _imagenet_weights(cls):
        import torchvision.models

        return getattr(torchvision.models, cls.WEIGHTS).IMAGENET1K_V1

    @classmethod
    def _imagenet_file(cls) -> str:
        return os.path.basename(cls._imagenet_weights().url)

    @classmethod
    def _cached_imagenet_file(cls) -> str:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", cls._imagenet_file())
        if not os.path.isfile(path):
            raise ValueError(f"{cls.label()}: pretrained: imagenet needs {cls._imagenet_file()} in the torch hub cache "
                             f"({path}), which this machine does not have; run the backbone's prepare() here first "
                             "(the study does before Ray starts), or pass backbone.params.weights_path: "
                             f"/path/to/{cls._imagenet_file()} on storage every worker reads")
        return path

    @classmethod
    def _read(cls, path: str) -> Mapping[str, torch.Tensor]:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{cls.label()}: {path} could not be read with torch.load(weights_only=True): "
                             f"{_one_line(err)}") from None
        if not isinstance(state, Mapping):
            raise ValueError(f"{cls.label()}: {path} holds a {type(state).__name__}, not a state dict "
                             "(a mapping of parameter names to tensors)")
        return state

    @classmethod
    def _load(cls, net: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            result = net.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shapes that do not fit
            raise ValueError(f"{cls.label()}: {source} does not fit this encoder: {_one_line(err)}") from None
        missing, unexpected = result.missing_keys, result.unexpected_keys
        if missing or unexpected:
            raise ValueError(f"{cls.label()}: {source} does not match this encoder: {len(missing)} missing keys "
                             f"({_first(missing)}), {len(unexpected)} unexpected keys ({_first(unexpected)}); "
                             "expected a torchvision-format ResNet state dict of the same depth (fc.* is ignored)")


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _first(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") if keys else "none"


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

    LAYERS, BASIC_BLOCKS, WEIGHTS = (2, 2, 2, 2), True, "ResNet18_Weights"


@register_backbone("resnet26")
class ResNet26(ResNetBackbone):
    """ResNet-26 encoder (Bottlenecks [2, 2, 2, 2], 2048 output channels; ASTMT's / the survey's PASCAL)."""

    Params = ResNet26Params
    LAYERS = (2, 2, 2, 2)


@register_backbone("resnet50")
class ResNet50(ResNetBackbone):
    """ResNet-50 encoder (Bottlenecks, 2048 output channels), output stride 32 or 8 if dilated."""

    LAYERS, WEIGHTS = (3, 4, 6, 3), "ResNet50_Weights"

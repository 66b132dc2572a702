"""Building blocks shared by the decoder-based architectures PAD-Net and MTI-Net (not a plug-in).

Multi-modal distillation (Xu et al., "PAD-Net", CVPR 2018; survey Sec. 2.3.1, Eq. 2): every
target task k keeps its own task features and adds, for every other task l, a message gated by
a spatial attention mask computed from task l's features,

    F_k^o = F_k^i + sum_{l != k} sigmoid(W_{k,l} * F_l^i) . (V_{k,l} * F_l^i)

with W_{k,l} and V_{k,l} 3x3 convolutions C -> C without bias (the survey code's ``SABlock``
applies the mask to a convolved copy V F_l of the features, not to F_l itself, as Eq. 2 reads;
this module follows the code). The sources l are every task that makes an initial prediction,
auxiliary tasks included; the targets k are the tasks that get a final prediction.

The per-task feature extractors are two residual blocks: torchvision's ``Bottleneck`` (PAD-Net)
or ``BasicBlock`` (MTI-Net), the first with a 1x1 conv + BN projection shortcut when the
channel count changes, as in the survey code's ``models/padnet.py`` and ``models/mti_net.py``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # torchvision is imported when a block is built: it costs ~2 s and ~200 MB per process
    from torchvision.models.resnet import BasicBlock, Bottleneck


def _projection(in_channels: int, out_channels: int) -> nn.Module | None:
    if in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


def bottleneck(in_channels: int, out_channels: int) -> Bottleneck:
    """A ResNet Bottleneck in -> out channels (width out / 4), projecting the shortcut if needed."""
    from torchvision.models.resnet import Bottleneck

    if out_channels % Bottleneck.expansion:
        raise ValueError(f"a Bottleneck's output channels must be a multiple of 4, got {out_channels}")
    return Bottleneck(in_channels, out_channels // Bottleneck.expansion,
                      downsample=_projection(in_channels, out_channels))


def basic_block(in_channels: int, out_channels: int) -> BasicBlock:
    """A ResNet BasicBlock in -> out channels, projecting the shortcut if needed."""
    from torchvision.models.resnet import BasicBlock

    return BasicBlock(in_channels, out_channels, downsample=_projection(in_channels, out_channels))


def two_blocks(block: str, in_channels: int, out_channels: int) -> nn.Sequential:
    """Two residual blocks ("bottleneck" or "basic"), in -> out -> out channels."""
    make = {"bottleneck": bottleneck, "basic": basic_block}[block]
    return nn.Sequential(make(in_channels, out_channels), make(out_channels, out_channels))


class SpatialAttention(nn.Module):
    """sigmoid(conv3x3(x)) * conv3x3(x): a message gated per pixel and channel (survey code's SABlock)."""

    def __init__(self, channels: int):
        super().__init__()
        self.mask = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.value = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.mask(x).sigmoid() * self.value(x)


class Distillation(nn.Module):
    """Multi-modal distillation at one scale: for each target, its features plus every other
    source's attention-gated message (PAD-Net Eq. 2). ``blocks[target][source]``."""

    def __init__(self, targets: Sequence[str], sources: Sequence[str], channels: int):
        super().__init__()
        self.targets, self.sources = list(targets), list(sources)
        self.blocks = nn.ModuleDict({
            t: nn.ModuleDict({s: SpatialAttention(channels) for s in self.sources if s != t}) for t in self.targets
        })

    def forward(self, features: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """{target: distilled features} from {source: task features} (every target is a source)."""
        out = {}
        for t in self.targets:
            total = features[t]
            for s, block in self.blocks[t].items():
                total = total + block(features[s])
            out[t] = total
        return out


def is_auxiliary(task) -> bool:
    """A task trained and supervised but not scored (``task.auxiliary``): initial predictions only."""
    return bool(getattr(task, "auxiliary", False))


def upsample_to(x: Tensor, like: Tensor) -> Tensor:
    """``x`` resized (bilinear, align_corners=False) to the spatial size of ``like``."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

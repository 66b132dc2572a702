"""The head contract: a task's decoder, with its capabilities as frozen info.

A head is built as ``HEADS.get(name)(in_channels, out_channels, params)`` (keyword arguments
work too) and is an ``nn.Module``. Dense heads map the backbone's last feature map
[B, in_channels, h, w] to [B, out_channels, h', w'] (the architecture upsamples to the input
size); image-level heads (``linear``) map it to [B, out_channels].

A head with ``info.low_level`` (DeepLab-v3+) also takes the backbone's stride-4 features: it
is built with ``low_channels`` (their channel count) and called as ``head(x, low)``. The
builder refuses such a head on a backbone without a stride-4 stage, naming both. A head with
``info.multi_scale`` (HRNet's) is built with a list of channels and called with a list of maps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from torch import Tensor, nn

from trainables.plugins import Configurable


@dataclass(frozen=True)
class HeadInfo:
    """What a head needs from the architecture.

    Attributes:
        low_level: the head also reads the backbone's stride-4 features (a skip connection).
        multi_scale: the head reads one map per scale of the backbone (``Backbone.scales()``,
            finest first): it is built with their channels as a list and called with the list
            (the HRNet head).
    """

    low_level: bool = False
    multi_scale: bool = False

    def summary(self) -> str:
        if self.multi_scale:
            return "every scale of a multi-scale backbone"
        return "last features + stride-4 skip" if self.low_level else "last features"


class Head(nn.Module, Configurable):
    """Base class of the heads (see the module docstring)."""

    INFO: ClassVar[HeadInfo] = HeadInfo()

    @classmethod
    def info_for(cls, params: Any) -> HeadInfo:
        return cls.INFO


def apply_head(head: nn.Module, x, low: Optional[Tensor] = None) -> Tensor:
    """``head(x)``, or ``head(x, low)`` for a head that reads the low-level features (``x`` is a
    list of maps for a multi-scale head)."""
    return head(x, low) if head.INFO.low_level else head(x)

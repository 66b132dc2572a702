"""A light dense head: 3x3 conv - BN - ReLU - 1x1 conv.

Not from a specific paper: the cheap per-task decoder used with the ``tiny_cnn`` backbone in
smoke runs, and the shape of the small task-specific heads the survey pairs with HRNet-18
("two consecutive convolutional layers", Sec. 4.3, Table 7).

Hyper-parameters:
    mid_channels (int > 0, default 64): width of the 3x3 conv.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from trainables.heads.base import Head
from trainables.registry import register_head


@dataclass(frozen=True)
class ConvHeadParams:
    """Hyper-parameters of the ``conv`` head (see the module docstring)."""

    mid_channels: int = 64

    def __post_init__(self) -> None:
        mid = self.mid_channels
        if isinstance(mid, bool) or not isinstance(mid, int) or mid <= 0:
            raise ValueError(f"conv: mid_channels must be a positive int, got {self.mid_channels!r}")


@register_head("conv")
class ConvHead(Head):
    """Light dense head: 3x3 conv (mid_channels) + BN + ReLU, then a 1x1 conv to the output."""

    Params = ConvHeadParams

    def __init__(self, in_channels: int, out_channels: int, params=None, **kwargs):
        super().__init__()
        self.params = p = self.resolve_params(params, kwargs)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, p.mid_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(p.mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(p.mid_channels, out_channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

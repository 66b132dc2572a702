"""The backbone contract: an encoder cut into stages, with its capabilities as frozen info.

A backbone is built as ``BACKBONES.get(name)(params)`` (keyword arguments work too) and is an
``nn.Module`` with

    stages: nn.ModuleList      the encoder as consecutive stages: forward(x) runs them in order.
                               With ``info.sequential_stages``: stages[0] is the stem and every
                               later stage is an nn.Sequential of blocks, stage[-1] its last block
                               (MTAN attends over it; cross-stitch / NDDR / branched encoders cut
                               between stages)
    stage_channels: list[int]  output channels of each stage
    stage_strides: list[int]   cumulative output stride after each stage
    out_channels, output_stride: those of the last stage
    features(x) -> [Tensor]    every stage's output, in order (multi-scale consumers)
    low_level_index() -> int   the last stage at output stride 4 (DeepLab-v3+'s skip), or None
    scales() -> [int]          the last stage at each distinct stride, finest first (what
                               multi-scale heads and architectures read, e.g. HRNet's branches)

``prepare(params)`` runs on the driver before Ray starts (e.g. fetches pretrained weights, or
fails with one line saying how to give a local file); workers never download anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, List, Optional

from torch import Tensor, nn

from trainables.plugins import Configurable

LOW_LEVEL_STRIDE = 4


@dataclass(frozen=True)
class BackboneInfo:
    """What a backbone offers to architectures and heads.

    Attributes:
        sequential_stages: stages[0] is a stem and every later stage a Sequential of blocks
            (see the module docstring); architectures that mix or attend between stages
            (cross-stitch, NDDR-CNN, MTAN) need it.
    """

    sequential_stages: bool = True

    def summary(self) -> str:
        return "sequential stages" if self.sequential_stages else "no sequential stages"


class Backbone(nn.Module, Configurable):
    """Base class of the backbones (see the module docstring)."""

    INFO: ClassVar[BackboneInfo] = BackboneInfo()
    stages: nn.ModuleList
    stage_channels: List[int]
    stage_strides: List[int]

    @classmethod
    def info_for(cls, params: Any) -> BackboneInfo:
        """The capabilities of this backbone with ``params`` (override when a parameter changes them)."""
        return cls.INFO

    @classmethod
    def prepare(cls, params: Any) -> None:
        """Driver-side work before Ray starts (nothing by default)."""

    @property
    def out_channels(self) -> int:
        return self.stage_channels[-1]

    @property
    def output_stride(self) -> int:
        return self.stage_strides[-1]

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    def features(self, x: Tensor) -> List[Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def scales(self) -> List[int]:
        """The stages a multi-scale consumer reads: the last stage at each distinct output
        stride, finest first (HRNet: its four branches; an undilated ResNet: layer1..layer4)."""
        last = {}
        for i, s in enumerate(self.stage_strides):
            last[s] = i
        return [last[s] for s in sorted(last)]

    def low_level_index(self) -> Optional[int]:
        at_four = [i for i, s in enumerate(self.stage_strides) if s == LOW_LEVEL_STRIDE]
        return at_four[-1] if at_four else None

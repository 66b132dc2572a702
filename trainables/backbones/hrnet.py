"""HRNet-W18-small-v2: a multi-scale encoder with four parallel branches at 1/4 ... 1/32.

Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition", TPAMI 2020
(the survey's [80]); the survey's multi-scale experiments (Sec. 4.3, Tables 7 and 9) use its
smallest segmentation variant, ``hrnet_w18_small_model_v2`` of HRNet-Semantic-Segmentation:
a stride-4 stem (two 3x3 convs, 64 channels), one Bottleneck stage, then stages of 1, 3 and 2
multi-resolution modules (two BasicBlocks per branch) that end with four branches of 18, 36, 72
and 144 channels at strides 4, 8, 16 and 32, exchanged by fusion layers after every module.

Built from timm's ``hrnet_w18_small_v2`` (the same configuration: stem 64, stage 1 one module
of 2 Bottlenecks, stages 2-4 with 1/3/2 modules of 2 blocks per branch), taken as a feature
extractor at the branches themselves (``features_only=True, feature_location=''``: no
classification "incre" modules). timm reproduces the survey's sizes: 3.86 M parameters and
9.76 G multiply-accumulates at 480 x 640, so one task with the ``hrnet`` head is 3.9 M / 11.4 G
and two single-task networks 7.9 M / 22.7 G (Table 7: 8 M / 22 G).

Stages (for the backbone contract): the four branch outputs are the "stages" of
``features(x)``: stage_channels [18, 36, 72, 144], stage_strides [4, 8, 16, 32]. They are
parallel, not sequential, so ``info.sequential_stages`` is False (cross-stitch, NDDR-CNN, MTAN
and branched trees, which cut between sequential stages, are refused on it); ``forward(x)``
returns the 1/32 branch, and multi-scale heads and architectures read all four.

Hyper-parameters:
    weights_path (str or None, default None): a local state dict of timm's ``hrnet_w18_small_v2``
        (e.g. its ImageNet weights, copied onto a machine without internet), loaded with
        ``torch.load(weights_only=True)``; keys of the classifier (``incre_modules``,
        ``downsamp_modules``, ``final_layer``, ``classifier``) are ignored, any other missing or
        unexpected key is a ValueError naming them. Nothing is ever downloaded.

timm is imported when the backbone is built, not when the package is imported.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
from torch import Tensor, nn

from trainables.backbones.base import Backbone, BackboneInfo
from trainables.registry import register_backbone

_HEAD_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")


@dataclass(frozen=True)
class HRNetParams:
    """Hyper-parameters of ``hrnet18`` (see the module docstring)."""

    weights_path: Optional[str] = None


@register_backbone("hrnet18")
class HRNet18(Backbone):
    """HRNet-W18-small-v2 (timm): four branches of 18/36/72/144 channels at strides 4-32."""

    Params = HRNetParams
    INFO = BackboneInfo(sequential_stages=False)

    def __init__(self, params=None, **kwargs):
        super().__init__()
        self.params = p = self.resolve_params(params, kwargs)
        import timm

        net = timm.create_model("hrnet_w18_small_v2", pretrained=False, features_only=True, feature_location="",
                                out_indices=(1, 2, 3, 4))
        self.stage_channels = list(net.feature_info.channels())
        self.stage_strides = list(net.feature_info.reduction())
        if p.weights_path is not None and not _on_meta(net):
            self._load(net, p.weights_path)
        self.stages = nn.ModuleList([net])  # one module: the branches are parallel, not sequential

    @property
    def net(self) -> nn.Module:
        return self.stages[0]

    @classmethod
    def prepare(cls, params: Any) -> None:
        p = cls.params_of(params)
        if p.weights_path is not None and not os.path.isfile(p.weights_path):
            raise ValueError(f"{cls.label()}: weights_path {p.weights_path!r} is not a file")

    def features(self, x: Tensor) -> List[Tensor]:
        return list(self.net(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)[-1]

    @staticmethod
    def _load(net: nn.Module, path: str) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
        own = net.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"hrnet18: {path} does not fit timm's hrnet_w18_small_v2: {len(missing)} missing keys "
                             f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
        net.load_state_dict(state)


def _on_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in module.parameters())

"""Image-level head: global average pooling + (dropout) + a linear layer.

The classifier of an image-level task (CelebA attributes, scene classification), as on top of
a ResNet (He et al., CVPR 2016: global average pool + fc); used by ``build_model`` for every
task whose ``kind`` is "image". Output: [B, out_channels] logits / values.

Hyper-parameters:
    dropout (float in [0, 1), default 0.0): dropout on the pooled feature before the linear layer.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from trainables.heads.base import Head
from trainables.registry import register_head


@dataclass(frozen=True)
class LinearHeadParams:
    """Hyper-parameters of the ``linear`` head (see the module docstring)."""

    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"linear: dropout must be in [0, 1), got {self.dropout!r}")


@register_head("linear")
class LinearHead(Head):
    """Image-level head: global average pool + linear layer -> [B, out_channels]."""

    Params = LinearHeadParams

    def __init__(self, in_channels: int, out_channels: int, params=None, **kwargs):
        super().__init__()
        self.params = p = self.resolve_params(params, kwargs)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p.dropout)
        self.fc = nn.Linear(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.pool(x).flatten(1)))

"""SegNet's task-specific prediction layer: 3x3 conv then 1x1 conv, no normalisation in between.

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019: the
``pred_task*`` layers of MTAN's SegNet models (``im2im_pred/model_segnet_split.py``), copied by
MTPSL (CVPR 2022) and JTR (CVPR 2024): ``Conv2d(C, C, 3, padding=1)`` followed directly by
``Conv2d(C, out, 1)``, both with bias, C = the ``segnet`` backbone's 64 channels. Xavier-normal
weights and zero biases, as MTAN initialises them. The raw output is returned: MTAN's
log-softmax (segmentation) and unit normalisation (normals) live in this project's task losses.

Hyper-parameters: none.
"""
from __future__ import annotations

from torch import Tensor, nn

from trainables.heads.base import Head
from trainables.registry import register_head


@register_head("segnet")
class SegNetHead(Head):
    """MTAN's SegNet task head: 3x3 conv (in -> in channels) + 1x1 conv to the output, with biases."""

    def __init__(self, in_channels: int, out_channels: int, params=None, **kwargs):
        super().__init__()
        self.params = self.resolve_params(params, kwargs)
        self.body = nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1),
                                  nn.Conv2d(in_channels, out_channels, 1))
        for m in self.body:
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

"""MTL baseline: hard parameter sharing, one shared encoder branching into task-specific heads.

Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI 2021,
Sec. 2.1 and Fig. 2a ("hard parameter sharing": a shared encoder that branches out into
task-specific heads, refs. [31]-[34]); the "MTL baseline" rows of Tables 3-9. On NYUD-v2 with a
dilated ResNet-50 and two ASPP heads: 55.8 M params / 267 G FLOPS (Table 3); on HRNet-18 with
HRNet heads, every scale of the backbone is shared and each head reads all four (Table 7).

The shared representation z is the backbone's output feature map; every head reads it. With a
head that also reads the stride-4 features (DeepLab-v3+), z is the pair (stride-4 features,
last features): both are shared, and representation-level balancers see both.

Hyper-parameters: none.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple, Union

from torch import Tensor, nn

from trainables.architectures.base import (
    BackboneFactory,
    HeadFactory,
    MultiTaskModel,
    last_stage,
    last_weight_layer,
    params_of,
)
from trainables.heads.base import apply_head
from trainables.plugins import ArchitectureInfo
from trainables.registry import register_architecture
from trainables.tasks.base import Task


@register_architecture("mtl_baseline")
class MTLBaseline(MultiTaskModel):
    """Hard parameter sharing: shared backbone + one head per task (survey Fig. 2a)."""

    INFO = ArchitectureInfo(has_shared_representation=True)

    def __init__(self, tasks: Mapping[str, Task], make_backbone: BackboneFactory, make_head: HeadFactory,
                 params=None, **kwargs):
        super().__init__(tasks, params, **kwargs)
        self.backbone = make_backbone()
        low = self.backbone.low_level_index()
        low_channels = None if low is None else self.backbone.stage_channels[low]
        scales = self.backbone.scales()
        scale_channels = [self.backbone.stage_channels[i] for i in scales]
        self.heads = nn.ModuleDict(
            {name: make_head(task, self.backbone.out_channels, low_channels, scale_channels)
             for name, task in self.tasks.items()}
        )
        # the stage whose output low-level heads also read (None: no head reads one)
        self.low_level = low if any(head.INFO.low_level for head in self.heads.values()) else None
        # the stages multi-scale heads read (None: no head reads them); image-level heads take the last
        self.scales = scales if any(head.INFO.multi_scale for head in self.heads.values()) else None

    def encode(self, x: Tensor) -> Union[Tensor, Tuple[Tensor, ...]]:
        if self.low_level is None and self.scales is None:
            return self.backbone(x)
        features = self.backbone.features(x)
        if self.scales is not None:
            return tuple(features[i] for i in self.scales)
        return features[self.low_level], features[-1]

    def decode(self, z: Union[Tensor, Tuple[Tensor, ...]], input_hw: Sequence[int]) -> Dict[str, Tensor]:
        if self.scales is not None:  # z: one map per scale, finest first
            outputs = {name: head(list(z)) if head.INFO.multi_scale else head(z[-1]) for name, head in self.heads.items()}
            return self.resize_outputs(outputs, input_hw)
        low, high = z if isinstance(z, tuple) else (None, z)
        return self.resize_outputs({name: apply_head(head, high, low) for name, head in self.heads.items()}, input_hw)

    def shared_parameters(self) -> List[nn.Parameter]:
        return params_of(self.backbone)

    def task_specific_parameters(self, task: str) -> List[nn.Parameter]:
        self.check_task(task)
        return params_of(self.heads[task])

    def last_shared_module(self) -> nn.Module:
        return last_weight_layer(last_stage(self.backbone))

"""MTL baseline: hard parameter sharing, one shared encoder branching into task-specific heads.

Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI 2021,
Sec. 2.1 and Fig. 2a ("hard parameter sharing": a shared encoder that branches out into
task-specific heads, refs. [31]-[34]); the "MTL baseline" rows of Tables 3-9. On NYUD-v2 with a
dilated ResNet-50 and two ASPP heads: 55.8 M params / 267 G FLOPS (Table 3).

The shared representation z is the backbone's output feature map; every head reads it.

Hyper-parameters: none.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

from torch import Tensor, nn

from trainables.architectures.base import (
    BackboneFactory,
    HeadFactory,
    MultiTaskModel,
    last_stage,
    last_weight_layer,
    params_of,
)
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
        self.heads = nn.ModuleDict(
            {name: make_head(task, self.backbone.out_channels) for name, task in self.tasks.items()}
        )

    def encode(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def decode(self, z: Tensor, input_hw: Sequence[int]) -> Dict[str, Tensor]:
        return self.resize_outputs({name: head(z) for name, head in self.heads.items()}, input_hw)

    def shared_parameters(self) -> List[nn.Parameter]:
        return params_of(self.backbone)

    def task_specific_parameters(self, task: str) -> List[nn.Parameter]:
        self.check_task(task)
        return params_of(self.heads[task])

    def last_shared_module(self) -> nn.Module:
        return last_weight_layer(last_stage(self.backbone))

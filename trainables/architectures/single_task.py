"""Single-task network: one backbone + one head, the reference every Delta_m is measured against.

Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI 2021,
Sec. 4 ("Single task" rows of Tables 3-9; Delta_m, Eq. 10, is relative to these networks).
A study trains one per task; their #params and FLOPS are summed in the tables ("single task
x2" = 79.3 M / 383 G on NYUD-v2 with a dilated ResNet-50 and ASPP heads).

Its "shared" parameters are the encoder's (there is one task, so nothing is shared between
tasks, but gradient-level balancers and GradNorm still find an encoder to work on), and
``encode`` returns the encoder's output.

Hyper-parameters: none.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

from torch import Tensor, nn

from trainables.architectures.base import (
    BackboneFactory,
    HeadFactory,
    MultiTaskModel,
    last_parametrised_module,
    last_stage,
    params_of,
)
from trainables.registry import register_architecture
from trainables.tasks.base import Task


@register_architecture("single_task")
class SingleTask(MultiTaskModel):
    """One task: backbone + head (the survey's single-task baseline)."""

    has_shared_representation = True
    supports_multiple_tasks = False

    def __init__(self, tasks: Mapping[str, Task], make_backbone: BackboneFactory, make_head: HeadFactory):
        if len(tasks) != 1:
            raise ValueError(
                f"architecture 'single_task' takes exactly one task, got {len(tasks)}: {list(tasks)}; "
                "train one single-task model per task instead"
            )
        super().__init__(tasks)
        (self.task,) = self.task_names
        self.backbone = make_backbone()
        self.head = make_head(self.tasks[self.task], self.backbone.out_channels)

    def encode(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def decode(self, z: Tensor, input_hw: Sequence[int]) -> Dict[str, Tensor]:
        return self.resize_outputs({self.task: self.head(z)}, input_hw)

    def shared_parameters(self) -> List[nn.Parameter]:
        return params_of(self.backbone)

    def task_specific_parameters(self, task: str) -> List[nn.Parameter]:
        self.check_task(task)
        return params_of(self.head)

    def last_shared_module(self) -> nn.Module:
        return last_parametrised_module(last_stage(self.backbone))

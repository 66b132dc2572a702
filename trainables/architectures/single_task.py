"""Single-task network: one backbone + one head, the reference every Delta_m is measured against.

Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI 2021,
Sec. 4 ("Single task" rows of Tables 3-9; Delta_m, Eq. 10, is relative to these networks).
A study trains one per task; their #params and FLOPS are summed in the tables ("single task
x2" = 79.3 M / 383 G on NYUD-v2 with a dilated ResNet-50 and ASPP heads).

It is the MTL baseline (``mtl_baseline.py``) with exactly one task: its "shared" parameters
are the encoder's (nothing is shared between tasks, but gradient-level balancers and GradNorm
still find an encoder to work on), and ``encode`` returns the encoder's output.

Hyper-parameters: none.
"""
from __future__ import annotations

from trainables.architectures.mtl_baseline import MTLBaseline
from trainables.plugins import ArchitectureInfo
from trainables.registry import register_architecture


@register_architecture("single_task")
class SingleTask(MTLBaseline):
    """One task: backbone + head (the survey's single-task baseline)."""

    INFO = ArchitectureInfo(has_shared_representation=True, supports_multiple_tasks=False)

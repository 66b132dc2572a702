"""Cross-stitch networks: one network per task, their activations mixed by learned units.

Misra, Shrivastava, Gupta & Hebert, "Cross-stitch Networks for Multi-task Learning", CVPR 2016;
Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI 2021,
Sec. 2.2.1, Eq. 1 and Fig. 3 (Tables 3-5, "Cross-stitch" rows).

Each task has its own backbone (a "tower", ``make_backbone()`` once per task) and head. After
each chosen stage s of the towers, a cross-stitch unit replaces every task's features by a
learned linear combination of all tasks' features (survey Eq. 1), per channel c:

    x~_i[:, c] = sum_j alpha_s[i, j, c] * x_j[:, c]      alpha_s[i, i, :] = alpha, else beta at init

and the next stage of tower i reads x~_i. Heads read their tower's last (mixed) features; a
head with a stride-4 skip (DeepLab-v3+) reads its tower's mixed stride-4 features. The model
starts from the study's trained single-task networks (``load_single_task``), and the units
train at ``lr_mult`` times the base learning rate (``param_groups``).

On NYUD-v2 (survey Table 3: dilated ResNet-50, ASPP heads, semseg + depth, 480 x 640) the
units add 4 * (256 + 512 + 1024 + 2048) = 15,360 parameters to the two single-task networks
(79.3 M) and only element-wise products, which the survey's FLOPS column (and
``trainables.complexity``) do not count: 79.3 M / 383 G, as printed.

Parameter split: every tower up to the last unit feeds every task's loss through the units, so
towers (up to and including the last unit's stage) and units are the shared parameters; the
heads, and any tower stages after the last unit, are task-specific. (Strictly, the last unit's
row for task i reaches only L_i; it stays with the units, so that every mixing weight is in one
group for gradient-level balancers - LibMTL likewise counts all towers and units as shared.)
``last_shared_module()`` is the last unit: every task's loss passes through it, each through
its own row, so per-task gradient norms (GradNorm) are measured on equal-sized blocks; any
single tower's conv would favour its own task by alpha / beta.

Hyper-parameters:
    stages (list of stage indices or None, default None = every stage after the stem, i.e.
        ResNet layer1..layer4, as the survey code's ``stages``): where units go; 0 is the stem.
    alpha (float, default 0.9): initial weight of a task's own features (survey code, NYUD;
        it uses 0.8 on PASCAL-Context).
    beta (float, default 0.1): initial weight of each other task's features (0.05 on PASCAL).
    lr_mult (float > 0, default 100.0): learning-rate multiplier of the units (Misra et al.
        train the units at a larger rate than the networks; the survey code sets 100 x).

Deviations, from the paper and from the survey code:
    - Eq. 1 has one alpha per pair of tasks; like the survey code, the units learn one alpha per
      pair of tasks and channel.
    - With T > 2 tasks the init is still alpha / beta (not renormalised to sum to 1), as in the
      survey code (0.8 + 4 * 0.05 = 1 on PASCAL's five tasks is a choice of values, not a rule).
    - The survey code's optimiser overwrites the units' 100 x rate with the base rate from the
      first epoch (a known defect of that code); here ``param_groups`` keeps it for the whole run.
    - The survey code asserts SGD for this model; here the optimiser is the trial's choice.
    - Stride-4 skip features for DeepLab-v3+ heads (the survey code has no such head here).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from trainables.architectures.base import BackboneFactory, HeadFactory, MultiTaskModel, params_of
from trainables.heads.base import apply_head
from trainables.plugins import ArchitectureInfo
from trainables.registry import register_architecture
from trainables.tasks.base import Task


def check_mixing_params(name: str, stages: Optional[Tuple[int, ...]], lr_mult: float, **floats: float) -> None:
    """The checks the cross-stitch and NDDR ``Params`` share."""
    bad_index = stages is not None and any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in stages)
    if stages is not None and (not stages or bad_index or len(set(stages)) != len(stages)):
        raise ValueError(f"{name}: stages must be a non-empty list of distinct stage indices >= 0 "
                         f"(0 is the stem), or null for the default, got {stages!r}")
    for field, value in {"lr_mult": lr_mult, **floats}.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}: {field} must be a finite number, got {value!r}")
    if lr_mult <= 0:
        raise ValueError(f"{name}: lr_mult must be > 0, got {lr_mult!r}")


@dataclass(frozen=True)
class CrossStitchParams:
    """Hyper-parameters of ``cross_stitch`` (see the module docstring)."""

    stages: Optional[Tuple[int, ...]] = None
    alpha: float = 0.9
    beta: float = 0.1
    lr_mult: float = 100.0

    def __post_init__(self) -> None:
        check_mixing_params("cross_stitch", self.stages, self.lr_mult, alpha=self.alpha, beta=self.beta)


class CrossStitchUnit(nn.Module):
    """Per-channel linear mixing of T task features (survey Eq. 1): weight [T, T, C]."""

    def __init__(self, num_tasks: int, channels: int, alpha: float, beta: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_tasks, num_tasks, channels))
        with torch.no_grad():
            self.weight.fill_(beta)
            self.weight.diagonal(dim1=0, dim2=1).fill_(alpha)  # weight[i, i, :] = alpha

    def forward(self, xs: Sequence[Tensor]) -> List[Tensor]:
        w = self.weight[..., None, None]  # [T, T, C, 1, 1], broadcast over [B, C, H, W]
        return [sum(w[i, j] * x for j, x in enumerate(xs)) for i in range(len(xs))]


@register_architecture("cross_stitch")
class CrossStitchNetwork(MultiTaskModel):
    """Cross-stitch networks: a backbone per task, per-channel cross-stitch units between stages."""

    Params = CrossStitchParams
    INFO = ArchitectureInfo(init_from_single_task=True, needs_sequential_stages=True)
    FIRST_DEFAULT_STAGE: ClassVar[int] = 1  # stages=None: units after every stage from this one

    def __init__(self, tasks: Mapping[str, Task], make_backbone: BackboneFactory, make_head: HeadFactory,
                 params=None, **kwargs):
        super().__init__(tasks, params, **kwargs)
        self.towers = nn.ModuleDict({name: make_backbone() for name in self.task_names})
        tower = self.towers[self.task_names[0]]
        num_stages = len(tower.stages)
        stages = self.params.stages
        if stages is None:
            stages = tuple(range(self.FIRST_DEFAULT_STAGE, num_stages)) or (num_stages - 1,)
        bad = [s for s in stages if s >= num_stages]
        if bad:
            raise ValueError(f"{self.label()}: stages {bad} do not exist; the backbone has stages 0..{num_stages - 1} "
                             "(0 is the stem)")
        self.unit_stages: List[int] = sorted(stages)
        self.units = nn.ModuleDict({str(s): self.make_unit(tower.stage_channels[s]) for s in self.unit_stages})
        low = tower.low_level_index()
        low_channels = None if low is None else tower.stage_channels[low]
        self.heads = nn.ModuleDict(
            {name: make_head(task, tower.out_channels, low_channels) for name, task in self.tasks.items()}
        )
        self.low_level = low if any(head.INFO.low_level for head in self.heads.values()) else None

    def make_unit(self, channels: int) -> nn.Module:
        """The unit after a stage with ``channels`` channels: maps a list of T features to T features."""
        p = self.params
        return CrossStitchUnit(len(self.task_names), channels, p.alpha, p.beta)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        towers = [self.towers[name] for name in self.task_names]
        xs, low = [x] * len(towers), None
        for s in range(len(towers[0].stages)):
            xs = [tower.stages[s](feature) for tower, feature in zip(towers, xs)]
            if str(s) in self.units:
                xs = self.units[str(s)](xs)
            if s == self.low_level:
                low = xs
        outputs = {name: apply_head(self.heads[name], xs[i], None if low is None else low[i])
                   for i, name in enumerate(self.task_names)}
        return self.resize_outputs(outputs, x.shape[-2:])

    # -- parameter split ------------------------------------------------------------------
    def _tower_parts(self, name: str) -> Tuple[List[nn.Module], List[nn.Module]]:
        """Tower ``name``'s stages up to the last unit (shared) and after it (task-specific)."""
        stages = list(self.towers[name].stages)
        last = self.unit_stages[-1]
        return stages[: last + 1], stages[last + 1:]

    def shared_parameters(self) -> List[nn.Parameter]:
        parts = [m for name in self.task_names for m in self._tower_parts(name)[0]]
        return params_of(*parts, self.units)

    def task_specific_parameters(self, task: str) -> List[nn.Parameter]:
        self.check_task(task)
        return params_of(*self._tower_parts(task)[1], self.heads[task])

    def last_shared_module(self) -> nn.Module:
        return self.units[str(self.unit_stages[-1])]

    def param_groups(self) -> List[Dict[str, Any]]:
        unit_ids = {id(p) for p in self.units.parameters()}
        return [{"name": "units", "params": params_of(self.units), "lr_mult": self.params.lr_mult},
                {"name": "towers_and_heads", "params": [p for p in self.parameters() if id(p) not in unit_ids],
                 "lr_mult": 1.0}]

    # -- initialisation from the single-task networks ---------------------------------------
    def load_single_task(self, task: str, state: Mapping[str, Tensor]) -> None:
        """Load a trained ``single_task`` network (``backbone.*``, ``heads.<task>.*``) into ``task``'s
        tower and head; every key must match (missing or unexpected keys are an error naming them)."""
        self.check_task(task)
        targets = {"backbone.": self.towers[task], f"heads.{task}.": self.heads[task]}
        parts: Dict[str, Dict[str, Tensor]] = {prefix: {} for prefix in targets}
        unexpected = []
        for key, value in state.items():
            prefix = next((p for p in targets if key.startswith(p)), None)
            if prefix is None:
                unexpected.append(key)
            else:
                parts[prefix][key[len(prefix):]] = value
        expected = {prefix: set(module.state_dict()) for prefix, module in targets.items()}
        missing = [prefix + key for prefix, keys in expected.items() for key in sorted(keys - set(parts[prefix]))]
        unexpected += [prefix + key for prefix, keys in expected.items() for key in parts[prefix] if key not in keys]
        if missing or unexpected:
            raise ValueError(f"{self.label()}.load_single_task({task!r}): the state is not a single_task network "
                             f"with this backbone and head; missing keys: {missing or 'none'}; "
                             f"unexpected keys: {unexpected or 'none'}")
        for prefix, module in targets.items():
            module.load_state_dict(parts[prefix], strict=True)

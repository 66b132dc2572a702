"""MTI-Net: initial predictions and distillation at every scale, propagated coarse to fine.

Vandenhende, Georgoulis & Van Gool, "MTI-Net: Multi-Scale Task Interaction Networks for
Multi-Task Learning", ECCV 2020; Vandenhende et al., "Multi-Task Learning for Dense Prediction
Tasks: A Survey", TPAMI 2021, Sec. 2.3.4 and Fig. 9 (Tables 7 and 9, "MTI-Net" rows). As in the
survey code (``models/mti_net.py``), on the S scales x_0 (finest) ... x_{S-1} (coarsest) of
``backbone.scales()`` (HRNet-18: 18/36/72/144 channels at 1/4 ... 1/32; an undilated ResNet:
layer1..layer4), with C_s the channels of x_s:

    scale S-1:  F_t^{S-1} = two BasicBlocks(x_{S-1})                          (C_{S-1} channels)
    scale s:    F_t^s     = two BasicBlocks(concat(x_s, up(FPM_{s+1}(F^{s+1})_t)))   (C_s + C_{s+1} -> C_s)
    every s:    P_t^s     = conv1x1(F_t^s)            initial predictions, deep-supervised
                D^s       = distillation over {F_t^s}  (PAD-Net's module, ``distillation.py``)
    main t:     P_t       = head_t([D_t^0, ..., D_t^{S-1}])

for every task t, auxiliary ones included (except D and the head: main tasks only). The
feature propagation module (FPM) at scale s concatenates the N tasks' features
[B, N*C_s, H, W], computes a shared representation with a non-linear function f (BasicBlock
N*C_s -> N*C_s/4, BasicBlock, conv1x1 -> N*C_s), turns it into a per-task attention mask by a
softmax across the N tasks (per channel and pixel), reduces the masked features to C_s channels
(BasicBlock with a projection shortcut), and gives each task t SE_t(shared) + F_t^s
(squeeze-and-excitation, reduction 16). ``up`` is bilinear to the finer map's size.

Heads: the spec's head plug-in, built with ``make_head(task, sum(C_s), scale_channels=[C_0 ...])``.
A multi-scale head (``hrnet``: upsample, concatenate, two 1x1 convs; the survey's choice) gets
the S distilled maps; a single-scale head (``conv``, ``aspp``) gets them upsampled to the finest
and concatenated (sum C_s channels), the same aggregation done outside the head. Heads with a
stride-4 skip (``deeplabv3plus``) are refused by the builder: MTI-Net gives them none.

Deep supervision: ``Predictions.aux[t]`` lists P_t^s coarsest first (HRNet: 1/32, 1/16, 1/8,
1/4), weighted by ``aux_weights`` in that order. Auxiliary tasks (``task.auxiliary``, e.g.
edges and normals on NYUD) get no distillation target and no head: their output is their
finest initial prediction P_t^0, resized, and their aux list holds the S-1 coarser levels (the
survey code supervises all S; here the finest one is the task's own output, at weight 1).

Parameter split: shared are the backbone and the FPMs' task-mixing layers (f and the
reduction), which every task's features pass through; each task owns its initial modules and
1x1 convs at every scale, its SE blocks, the distillation blocks whose target it is and its
head. There is no single shared representation after which everything is per task (the FPMs
mix tasks between the scales), so ``info.has_shared_representation`` is False.
``last_shared_module()`` is the backbone's last conv.

Sizes (HRNet-18, ``hrnet`` heads, on the meta device; MACs at the full input size). The
survey code's ``MTINet``, built on the same backbone, has the same sizes.
    Table 7 (NYUD, semseg 40 + depth, 480 x 640): 8.58 M / 17.1 G; with edges + normals as
        auxiliary tasks (the survey code's other NYUD config, ``mti_net+edges_normals``)
        14.84 M / 22.9 G. The survey prints 13 M / 20 G, between the two and nearer the
        second in parameters; it does not say which config it counted (the FPMs grow with
        the square of the number of tasks: 1.28 M with two tasks, 3.29 M with four).
    Table 9 (PASCAL, 5 tasks, 512 x 512): 24.49 M / 30.3 G; survey 27 M / 31 G.

Hyper-parameters:
    aux_weights (list of floats >= 0, default [1, 1, 1, 1]): loss weight of the initial
        predictions at each scale, coarsest first; one value is used at every scale. The
        survey code weights each by the task's own loss weight, i.e. 1 here.

Deviations, from the paper and from the survey code:
    - The FPM's softmax runs across the tasks for each channel, as the code's comment says
      ("per task attention mask"); the code's reshape of the concatenated features to
      [B, C, N, H, W] makes it run over N consecutive channels instead (same size and cost).
    - An auxiliary task's finest initial prediction is its output (loss weight 1), so its
      aux list has the S - 1 coarser levels; the survey code weights all S levels alike.
    - Propagated features are resized to the finer map's size, not by a fixed factor of 2, so
      odd feature sizes work.
    - Any backbone with >= 4 distinct strides (the builder's check) and any head work; the
      survey code ties MTI-Net to HRNet and its head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from torch import Tensor, nn

from trainables.architectures.base import (
    BackboneFactory,
    HeadFactory,
    MultiTaskModel,
    Predictions,
    check_level_weights,
    last_stage,
    last_weight_layer,
    params_of,
)
from trainables.architectures.distillation import Distillation, basic_block, is_auxiliary, two_blocks, upsample_to
from trainables.plugins import ArchitectureInfo
from trainables.registry import register_architecture
from trainables.tasks.base import Task

PerScale = List[Dict[str, Tensor]]  # index s = scale s of backbone.scales() (finest first): task -> tensor


@dataclass(frozen=True)
class MTINetParams:
    """Hyper-parameters of ``mti_net`` (see the module docstring)."""

    aux_weights: Tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if not self.aux_weights:
            raise ValueError("mti_net: aux_weights needs one value, or one per scale (coarsest first)")
        check_level_weights(self.aux_weights, len(self.aux_weights), "mti_net: aux_weights")


class FeaturePropagation(nn.Module):
    """The FPM at one scale: tasks' features -> shared, per-task attended and reduced, + SE per task."""

    def __init__(self, task_names: Sequence[str], channels: int):
        from torchvision.ops import SqueezeExcitation  # here, not at import: torchvision costs ~2 s per process

        super().__init__()
        self.task_names, self.channels = list(task_names), channels
        shared, mid = len(self.task_names) * channels, max(1, len(self.task_names) * channels // 4)
        self.mix = nn.Sequential(basic_block(shared, mid), basic_block(mid, mid), nn.Conv2d(mid, shared, 1))
        self.reduce = basic_block(shared, channels)
        self.se = nn.ModuleDict({t: SqueezeExcitation(channels, max(1, channels // 16)) for t in self.task_names})

    def forward(self, features: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        concat = torch.cat([features[t] for t in self.task_names], dim=1)
        b, _, h, w = concat.shape
        n, c = len(self.task_names), self.channels
        mask = self.mix(concat).reshape(b, n, c, h, w).softmax(dim=1)  # across tasks, per channel and pixel
        shared = self.reduce((mask * concat.reshape(b, n, c, h, w)).reshape(b, n * c, h, w))
        return {t: self.se[t](shared) + features[t] for t in self.task_names}

    def shared_modules(self) -> List[nn.Module]:
        return [self.mix, self.reduce]


@register_architecture("mti_net")
class MTINet(MultiTaskModel):
    """MTI-Net: initial predictions, FPM and distillation at every backbone scale, multi-scale heads."""

    Params = MTINetParams
    INFO = ArchitectureInfo(deep_supervision=True, needs_multi_scale=True, dense_only=True)

    def __init__(self, tasks: Mapping[str, Task], make_backbone: BackboneFactory, make_head: HeadFactory,
                 params=None, **kwargs):
        super().__init__(tasks, params, **kwargs)
        self.backbone = make_backbone()
        self.scales: List[int] = self.backbone.scales()
        ch = [self.backbone.stage_channels[i] for i in self.scales]
        n = len(ch)
        if n < 2:
            raise ValueError(f"{self.label()} needs a backbone with at least two scales; this one has {n}")
        self.aux_weights = check_level_weights(self.params.aux_weights, n, f"{self.label()}: aux_weights")
        self.main_tasks = [t for t in self.task_names if not is_auxiliary(self.tasks[t])]
        self.task_features = nn.ModuleList([
            nn.ModuleDict({t: two_blocks("basic", ch[s] + (ch[s + 1] if s + 1 < n else 0), ch[s])
                           for t in self.task_names})
            for s in range(n)
        ])
        self.initial_heads = nn.ModuleList([
            nn.ModuleDict({t: nn.Conv2d(ch[s], task.out_channels, 1) for t, task in self.tasks.items()})
            for s in range(n)
        ])
        self.propagation = nn.ModuleList([FeaturePropagation(self.task_names, ch[s]) for s in range(1, n)])
        self.distillation = nn.ModuleList([Distillation(self.main_tasks, self.task_names, ch[s]) for s in range(n)])
        self.heads = nn.ModuleDict({t: make_head(self.tasks[t], sum(ch), None, ch) for t in self.main_tasks})

    def initial(self, x: Tensor) -> PerScale:
        """Every task's features F_t^s at every scale s (finest first), computed coarsest first."""
        features = self.backbone.features(x)
        maps = [features[i] for i in self.scales]
        out: PerScale = [{} for _ in maps]
        propagated: Dict[str, Tensor] = {}
        for s in reversed(range(len(maps))):
            for t in self.task_names:
                inp = maps[s] if not propagated else torch.cat([maps[s], upsample_to(propagated[t], maps[s])], dim=1)
                out[s][t] = self.task_features[s][t](inp)
            if s > 0:
                propagated = self.propagation[s - 1](out[s])
        return out

    def forward(self, x: Tensor) -> Predictions:
        features = self.initial(x)
        n = len(features)
        initial = [{t: self.initial_heads[s][t](f) for t, f in features[s].items()} for s in range(n)]
        distilled = [self.distillation[s](features[s]) for s in range(n)]
        final = {}
        for t in self.task_names:
            if t in self.heads:
                final[t] = self._aggregate(self.heads[t], [distilled[s][t] for s in range(n)])
            else:
                final[t] = initial[0][t]
        coarse_first = list(reversed(range(n)))
        aux = {t: [initial[s][t] for s in (coarse_first if t in self.heads else coarse_first[:-1])]
               for t in self.task_names}
        return Predictions(self.resize_outputs(final, x.shape[-2:]), aux, self.aux_weights)

    @staticmethod
    def _aggregate(head: nn.Module, maps: List[Tensor]) -> Tensor:
        if head.INFO.multi_scale:
            return head(maps)
        return head(torch.cat([maps[0]] + [upsample_to(m, maps[0]) for m in maps[1:]], dim=1))

    def shared_parameters(self) -> List[nn.Parameter]:
        return params_of(self.backbone, *[m for fpm in self.propagation for m in fpm.shared_modules()])

    def task_specific_parameters(self, task: str) -> List[nn.Parameter]:
        self.check_task(task)
        own = [m[task] for m in self.task_features] + [m[task] for m in self.initial_heads]
        own += [fpm.se[task] for fpm in self.propagation]
        if task in self.heads:
            own += [d.blocks[task] for d in self.distillation] + [self.heads[task]]
        return params_of(*own)

    def last_shared_module(self) -> nn.Module:
        return last_weight_layer(last_stage(self.backbone))

"""PAD-Net: initial predictions for every task, multi-modal distillation, final predictions.

Xu, Ouyang, Wang & Sebe, "PAD-Net: Multi-Tasks Guided Prediction-and-Distillation Network for
Simultaneous Depth Estimation and Scene Parsing", CVPR 2018; Vandenhende et al., "Multi-Task
Learning for Dense Prediction Tasks: A Survey", TPAMI 2021, Sec. 2.3.1, Eq. 2 and Fig. 6
(Tables 6, 7 and 9, "PAD-Net" rows). As in the survey code (``models/padnet.py``):

    z        = backbone features (one map; see "Input" below)
    F_t      = two Bottlenecks(z) -> C channels          for every task t, auxiliary ones too
    P_t^init = conv1x1(F_t)                              the initial prediction (deep supervision)
    D_k      = F_k + sum_{l != k} sigmoid(W_kl * F_l) . (V_kl * F_l)   (``distillation.py``)
    P_k      = conv1x1(two Bottlenecks(D_k))             the final prediction, main tasks only

Auxiliary tasks (``task.auxiliary``, e.g. normals and edges next to semseg + depth on NYUD)
make initial predictions and send messages, but get no distillation target and no final head:
their output is their initial prediction, resized to the input. The step adds
``aux_weight * loss(P_t^init)`` to each main task's loss (the survey code weights the initial
prediction's loss by the task's own loss weight, i.e. aux_weight 1); an auxiliary task's loss
is that of its initial prediction alone.

Input. Single-scale backbones (a dilated ResNet, Table 6; sequential stages) give their last
map. On a multi-scale backbone with parallel branches (HRNet-18, Tables 7 and 9) the survey
code sets ``fuse_hrnet: True`` (``utils/common_config.py``, ``models/seg_hrnet.py``'s
``HighResolutionFuse``): every scale of ``backbone.scales()`` is upsampled (bilinear) to the
finest, concatenated (18 + 36 + 72 + 144 = 270 channels at 1/4) and passed through a shared
1x1 conv + BN + ReLU (270 -> 270); PAD-Net runs on that map. The fusion layer belongs to the
shared encoder.

Heads: PAD-Net builds its own Bottleneck heads, as the survey code does; the spec's head
plug-in (``make_head``) is not used.

Parameter split: z is the shared representation (``encode``: backbone, and the fusion layer
when there is one); each task owns its initial module, the distillation blocks whose target it
is, and its final head. (A task's initial features also reach the other tasks' losses through
distillation; the step trains every parameter after z with the gradient of the combined loss.)
``last_shared_module()`` is the fusion conv, else the backbone's last conv.

Sizes, computed on the meta device (``tests/trainables/test_decoder_pad_mti.py``), MACs at the
full input size, C = 256. Every decoder conv runs at z's resolution, so the decoder's MACs are
its conv weights times z's pixels; one distillation block is 2 * 9 * C^2 = 1.18 M weights. The
survey code's ``PADNet``, built on the same backbones, has the same sizes.
    Table 6 (NYUD, dilated ResNet-50, semseg 40 + depth, 480 x 640): 27.73 M / 137.0 G =
        encoder 23.51 M / 116.8 G + decoder 4.22 M x 4,800 px (1/8) = 20.2 G. The survey
        prints 52 M / 256 G, i.e. a decoder of about 28.5 M weights at 1/8, about 7 x ours: a
        width C near 750 would give that (C = 768: 53.5 M / 260.5 G), but the survey code's
        default is 256, kept here; not reproduced.
    Table 7 (NYUD, HRNet-18, fused input): 7.02 M / 70.3 G = encoder 3.86 M / 9.8 G + fusion
        0.07 M + decoder 3.08 M, all x 19,200 px (1/4); survey 7 M / 44 G: the parameters
        agree, the MACs do not (ours less one distillation block, 22.6 G, would be 47.6 G).
    Table 9 (PASCAL, HRNet-18, 512 x 512, 5 tasks): 29.31 M / 424.9 G; survey 17 M / 225 G.
        The 20 ordered (target, source) blocks are 23.6 M weights / 386.5 G alone; without
        half of them (one per unordered pair) the model is 17.5 M / 231.6 G, the survey's
        figures; the code has one per ordered pair, as Eq. 2 (W_{k,l} for every l != k).

Hyper-parameters:
    channels (int, multiple of 4, default 256): width C of the task features (the survey
        code's ``intermediate_channels``; Bottleneck width C / 4).
    aux_weight (float >= 0, default 1.0): loss weight of the initial predictions of the main
        tasks (one level of deep supervision).
    fuse_scales (bool or None, default None): fuse every scale of the backbone into PAD-Net's
        input as above; None = fuse when the backbone's stages are parallel branches (HRNet),
        use the last map when they are sequential (ResNet, tiny_cnn).

Deviations, from the paper and from the survey code:
    - The paper proposes three distillation modules; the attention-guided one (survey Eq. 2)
      is implemented, on the survey code's layers (its front-end and decoders differ).
    - The fusion layer's 1x1 conv has no bias (BN follows); the survey code's has one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

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
from trainables.architectures.distillation import Distillation, bottleneck, is_auxiliary, two_blocks, upsample_to
from trainables.plugins import ArchitectureInfo
from trainables.registry import register_architecture
from trainables.tasks.base import Task


@dataclass(frozen=True)
class PADNetParams:
    """Hyper-parameters of ``pad_net`` (see the module docstring)."""

    channels: int = 256
    aux_weight: float = 1.0
    fuse_scales: Optional[bool] = None

    def __post_init__(self) -> None:
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or self.channels <= 0 \
                or self.channels % 4:
            raise ValueError(f"pad_net: channels must be a positive multiple of 4 (Bottleneck width channels / 4), "
                             f"got {self.channels!r}")
        check_level_weights((self.aux_weight,), 1, "pad_net: aux_weight")
        if self.fuse_scales not in (None, True, False):
            raise ValueError(f"pad_net: fuse_scales must be true, false or null (auto), got {self.fuse_scales!r}")


@register_architecture("pad_net")
class PADNet(MultiTaskModel):
    """PAD-Net: per-task initial predictions, spatial-attention distillation, final heads (survey Fig. 6)."""

    Params = PADNetParams
    INFO = ArchitectureInfo(has_shared_representation=True, deep_supervision=True, dense_only=True)

    def __init__(self, tasks: Mapping[str, Task], make_backbone: BackboneFactory, make_head: HeadFactory,
                 params=None, **kwargs):
        super().__init__(tasks, params, **kwargs)
        p = self.params
        self.backbone = make_backbone()
        fuse = p.fuse_scales
        if fuse is None:  # parallel branches (HRNet): the last map is one branch only
            fuse = not type(self.backbone).info_for(self.backbone.params).sequential_stages
        self.scales: Optional[List[int]] = self.backbone.scales() if fuse else None
        if self.scales is not None:
            width = sum(self.backbone.stage_channels[i] for i in self.scales)
            self.fuse: Optional[nn.Module] = nn.Sequential(nn.Conv2d(width, width, 1, bias=False),
                                                           nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        else:
            width, self.fuse = self.backbone.out_channels, None
        c = p.channels
        self.main_tasks = [n for n in self.task_names if not is_auxiliary(self.tasks[n])]
        self.task_features = nn.ModuleDict({n: two_blocks("bottleneck", width, c) for n in self.task_names})
        self.initial_heads = nn.ModuleDict({n: nn.Conv2d(c, t.out_channels, 1) for n, t in self.tasks.items()})
        self.distillation = Distillation(self.main_tasks, self.task_names, c)
        self.heads = nn.ModuleDict({
            n: nn.Sequential(bottleneck(c, c), bottleneck(c, c), nn.Conv2d(c, self.tasks[n].out_channels, 1))
            for n in self.main_tasks
        })

    def encode(self, x: Tensor) -> Tensor:
        if self.fuse is None:
            return self.backbone(x)
        features = self.backbone.features(x)
        maps = [features[i] for i in self.scales]
        return self.fuse(torch.cat([maps[0]] + [upsample_to(m, maps[0]) for m in maps[1:]], dim=1))

    def initial(self, z: Tensor) -> Dict[str, Tensor]:
        """Every task's features F_t (before its initial prediction's 1x1 conv)."""
        return {n: self.task_features[n](z) for n in self.task_names}

    def decode(self, z: Tensor, input_hw: Sequence[int]) -> Predictions:
        features = self.initial(z)
        initial = {n: self.initial_heads[n](f) for n, f in features.items()}
        distilled = self.distillation(features)
        final = {n: self.heads[n](distilled[n]) if n in self.heads else initial[n] for n in self.task_names}
        aux = {n: [initial[n]] for n in self.main_tasks}
        return Predictions(self.resize_outputs(final, input_hw), aux, (self.params.aux_weight,))

    def shared_parameters(self) -> List[nn.Parameter]:
        return params_of(self.backbone, *([self.fuse] if self.fuse is not None else []))

    def task_specific_parameters(self, task: str) -> List[nn.Parameter]:
        self.check_task(task)
        own = [self.task_features[task], self.initial_heads[task]]
        if task in self.heads:
            own += [self.distillation.blocks[task], self.heads[task]]
        return params_of(*own)

    def last_shared_module(self) -> nn.Module:
        if self.fuse is not None:
            return self.fuse[0]
        return last_weight_layer(last_stage(self.backbone))

"""JTRL: two tasks predicted alternately, coarse to fine, each state attending to the other task's.

Zhang, Cui, Xu, Jie, Li & Yang, "Joint Task-Recursive Learning for Semantic Segmentation and
Depth Estimation", ECCV 2018; Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI
2021, Sec. 2.3.3, Fig. 8 and Table 6 ("JTRL", NYUD-v2, single-scale backbone: 295 M / 660 G).
Neither the paper's nor the survey's code is public, and only the paper's abstract and Fig. 1
caption could be read here; what is left open is chosen below, with its source.

JTRL takes exactly two tasks a, b (in the order given; the paper's order is depth, then
segmentation) and builds the state sequence a_0, b_0, a_1, b_1, ..., a_{L-1}, b_{L-1}, one pair
per scale l at output stride s / 2^l (s: the backbone's; L = len(widths)). With z the backbone
output and k_l the backbone's features at stride s / 2^l (``skips``; none where no stage has
that stride), R a residual stack, U an upsampling block and TAM the task-attentional module:

    a_0 = R(z)                          b_0 = R([z, a_0])
    a_l = R([TAM(U(a_{l-1}), U(b_{l-1})), k_l])                          for l >= 1
    b_l = R([TAM(U(b_{l-1}), a_l), k_l])

so every state reads the latest state of the other task and the previous one of its own. Each
state but the last pair predicts its task with a 1x1 conv (deep supervision, one level per
scale, L - 1 levels per task, weights ``aux_weights``); the last pair goes through JTRL's own
light heads (``head_channels``) and gives the final outputs, resized to the input (bilinear).

    R(c_in -> w): two ResNet Bottlenecks (width w / 4; a 1x1 conv + BN shortcut when c_in != w).
    U(w -> w'): parallel convs with kernels ``up_kernels`` (each conv + BN + ReLU, 4 w' / n
        channels for n kernels), concatenated, then a 2x sub-pixel shuffle: w' channels, 2x size.
    TAM(f, g) on two w-channel maps (f the task's own, g the other task's):
        B = sigmoid(conv1x1([f, g]))                  balance unit
        F_B = ReLU(BN(conv1x1([B * f, (1 - B) * g])))
        M = sigmoid(conv1x1(H(F_B)))                  H: max-pool, Bottleneck, max-pool,
                                                      Bottleneck, upsample, Bottleneck,
                                                      upsample, Bottleneck (an hourglass)
        TAM(f, g) = (1 + M) * F_B

Where each choice comes from:
    - The alternating, coarse-to-fine state sequence, each state from both tasks' previous
      states through a TAM (balance gate, then an attention map applied as (1 + M)), with
      predictions at every state: the paper's abstract and Fig. 1 caption, the survey's
      Sec. 2.3.3 and Fig. 8.
    - R as two Bottlenecks, U as 1x1 / 3x3 / 5x5 / 7x7 convs with sub-pixel upsampling, the
      TAM's two-level max-pool hourglass of Bottlenecks, and skip features from the encoder at
      each scale: the public re-implementation EEEGUI/SceneParsingNetwork (``models/trl.py`` and
      its README, which names the multi-scale 1/3/5/7 convs as the bulk of the paper's size).
    - The 1x1 conv before the TAM's sigmoid (a Bottleneck ends in a ReLU, so without it M would
      stay >= 0.5), F_B = (balanced f) + (balanced g) through one conv, and (1 + M) * F_B as the
      output (the re-implementation concatenates (1 + M) f and (1 + M) g and projects them):
      ours; (1 + M) is the residual-attention form (Wang et al., CVPR 2017) both use.
    - Two tasks only: the survey (Sec. 2.3.3, 4.3) notes JTRL does not extend to more; any
      other task count, auxiliary tasks included, is a ValueError naming the tasks.

Size on NYUD-v2 (dilated ResNet-50, output stride 8, 480 x 640, semseg 40 + depth 1, scales
1/8, 1/4, 1/2, 1, ``conv`` heads; the survey: 295 M / 660 G). The survey's JTRL and PAP-Net rows
carry the papers' own metrics (PAP-Net's 50.4 mIoU / 0.530 rmse are the paper's), so their #P
and FLOPS are likely those of the papers' networks: on an undilated (output stride 32) ResNet-50
the widest decoder layers run at 15 x 20, while here the first scale is 60 x 80 and a parameter
there costs 16 x the MACs, so both figures cannot be met at once. The default widths
(576, 288, 144, 72) meet the compute:
    23.51 M / 116.8 G (encoder)
    + per task: U 13.94 + 3.48 + 0.87 M, 3 * 66.9 G (84 * w * w' MACs per pixel of the coarser
      scale, 84 = 1 + 9 + 25 + 49; w * w' quarters as the pixels quadruple, so every
      transition costs the same); TAMs 1.01 M, 3 * 10.6 G; R 2.5 M (2.1 M for the first
      task), 22-24 G; head 13 G
    = 67.7 M / 658 G (survey: -77 % / -0.3 %).
The last states are at the input's resolution, so the heads run there: an ``aspp`` head (the
survey's Table 3 head) would make it 70.5 M / 1516 G, hence JTRL's own ``conv``-shaped heads.
Widths (1024, 512, 256, 128), the re-implementation's, give 158.6 M / 1765 G; 295 M would take
(1472, 736, 368, 184): 298.9 M, at 3472 G.

Hyper-parameters:
    widths (ints > 0, multiples of 4, default (576, 288, 144, 72)): the states' channels at each
        scale; their number L is the number of scales (2 L states, L - 1 intermediate levels).
        2^(L-1) must divide the backbone's output stride (the last scale is at most the input's).
    up_kernels (odd ints > 0, default (1, 3, 5, 7)): kernels of the upsampling blocks' parallel
        convs; 4 * width must be divisible by their number.
    skips (bool, default True): concatenate the backbone's features at each finer scale's
        stride (ResNet-50: layer1 at 1/4). Without them z = backbone(x) is the model's one
        shared representation (``has_shared_representation``).
    aux_weights (floats >= 0, default (1.0,)): loss weight of each intermediate level (scales
        0 .. L-2), one value for all or L - 1 values.
    head_channels (int > 0, default 64): width of the final heads, JTRL's own light heads (3x3
        conv + BN + ReLU + 1x1 conv, the ``conv`` head) on the last states. The study's head
        plug-in is not used: the last states are at the input's resolution, where an ASPP head
        alone would cost JTRL 1516 G instead of 660 G; the single-task networks of the study keep
        their own heads, and Delta_m is measured against them.

Parameter split: the backbone is shared; each task owns the stacks, upsampling blocks and TAMs
of its own states, its intermediate classifiers and its head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.heads.conv import ConvHead
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
from trainables.heads.base import apply_head
from trainables.plugins import ArchitectureInfo
from trainables.registry import register_architecture
from trainables.tasks.base import Task

Encoded = Union[Tensor, Tuple[Tensor, ...]]


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class JTRLParams:
    """Hyper-parameters of ``jtrl`` (see the module docstring)."""

    widths: Tuple[int, ...] = (576, 288, 144, 72)
    up_kernels: Tuple[int, ...] = (1, 3, 5, 7)
    skips: bool = True
    aux_weights: Tuple[float, ...] = (1.0,)
    head_channels: int = 64

    def __post_init__(self) -> None:
        if not self.widths or not all(_positive_int(w) and w % 4 == 0 for w in self.widths):
            raise ValueError(f"jtrl: widths must be a non-empty list of positive multiples of 4 (a Bottleneck is "
                             f"width / 4 wide), got {self.widths!r}")
        if not self.up_kernels or not all(_positive_int(k) and k % 2 == 1 for k in self.up_kernels):
            raise ValueError(f"jtrl: up_kernels must be a non-empty list of odd positive ints, got {self.up_kernels!r}")
        n = len(self.up_kernels)
        if any(4 * w % n for w in self.widths[1:]):
            raise ValueError(f"jtrl: the upsampling blocks split 4 * width channels over {n} kernels; 4 * each of "
                             f"widths[1:] = {list(self.widths[1:])} must be divisible by {n}")
        if isinstance(self.head_channels, bool) or not isinstance(self.head_channels, int) or self.head_channels <= 0:
            raise ValueError(f"jtrl: head_channels must be a positive int, got {self.head_channels!r}")
        if not isinstance(self.skips, bool):
            raise ValueError(f"jtrl: skips must be true or false, got {self.skips!r}")
        check_level_weights(self.aux_weights, max(len(self.widths) - 1, 1), "jtrl: aux_weights")


def residual_stack(in_channels: int, channels: int) -> nn.Sequential:
    """R: two ResNet Bottlenecks to ``channels`` (width channels / 4), 1x1 + BN shortcut if needed."""
    from torchvision.models.resnet import Bottleneck  # here, not at import: torchvision costs ~2 s per process

    shortcut = None
    if in_channels != channels:
        shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
    return nn.Sequential(Bottleneck(in_channels, channels // 4, downsample=shortcut),
                         Bottleneck(channels, channels // 4))


class Upsample(nn.Module):
    """U: parallel k x k convs (+ BN + ReLU), concatenated, then a 2x sub-pixel shuffle."""

    def __init__(self, in_channels: int, channels: int, kernels: Sequence[int]):
        super().__init__()
        branch = 4 * channels // len(kernels)
        self.branches = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_channels, branch, k, padding=k // 2, bias=False), nn.BatchNorm2d(branch),
                          nn.ReLU(inplace=True))
            for k in kernels
        ])
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(torch.cat([b(x) for b in self.branches], dim=1))


class TaskAttention(nn.Module):
    """TAM: balance gate over (own, other), then an hourglass attention map applied as (1 + M)."""

    def __init__(self, channels: int):
        from torchvision.models.resnet import Bottleneck

        super().__init__()
        c = channels
        self.balance = nn.Conv2d(2 * c, c, 1)
        self.fuse = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.down1, self.down2 = Bottleneck(c, c // 4), Bottleneck(c, c // 4)
        self.up1, self.up2 = Bottleneck(c, c // 4), Bottleneck(c, c // 4)
        self.mask = nn.Conv2d(c, c, 1)

    def attention(self, fused: Tensor) -> Tensor:
        """M in (0, 1), the size of ``fused``."""
        half = self.down1(self.pool(fused))
        quarter = self.down2(self.pool(half))
        y = self.up1(F.interpolate(quarter, size=half.shape[-2:], mode="bilinear", align_corners=False))
        y = self.up2(F.interpolate(y, size=fused.shape[-2:], mode="bilinear", align_corners=False))
        return torch.sigmoid(self.mask(y))

    def forward(self, own: Tensor, other: Tensor) -> Tensor:
        gate = torch.sigmoid(self.balance(torch.cat([own, other], dim=1)))
        fused = self.fuse(torch.cat([gate * own, (1 - gate) * other], dim=1))
        return (1 + self.attention(fused)) * fused


@register_architecture("jtrl")
class JTRL(MultiTaskModel):
    """JTRL: two tasks' states alternate coarse to fine, each through a task-attentional module."""

    Params = JTRLParams
    INFO = ArchitectureInfo(has_shared_representation=False, deep_supervision=True, dense_only=True, task_count=2)

    @classmethod
    def info_for(cls, params: JTRLParams) -> ArchitectureInfo:
        return ArchitectureInfo(has_shared_representation=not params.skips, deep_supervision=True, dense_only=True,
                                task_count=2)

    def __init__(self, tasks: Mapping[str, Task], make_backbone: BackboneFactory, make_head: HeadFactory,
                 params=None, **kwargs):
        super().__init__(tasks, params, **kwargs)
        if len(self.task_names) != 2:
            kinds = [n + (" (auxiliary)" if getattr(t, "auxiliary", False) else "") for n, t in self.tasks.items()]
            raise ValueError(f"{self.label()} predicts exactly two tasks, alternately (Zhang et al., ECCV 2018; the "
                             f"survey, Sec. 4.3, notes it does not extend to more); got {len(kinds)}: {kinds}. "
                             "Auxiliary tasks count too: train a two-task JTRL, or use pad_net / pap_net / mti_net")
        p = self.params
        widths, scales = list(p.widths), len(p.widths)
        self.aux_weights = check_level_weights(p.aux_weights, scales - 1, f"{self.label()}: aux_weights")
        self.backbone = make_backbone()
        stride, strides = self.backbone.output_stride, list(self.backbone.stage_strides)
        if stride % 2 ** (scales - 1):
            raise ValueError(f"{self.label()}: {scales} scales (widths {widths}) double the resolution "
                             f"{scales - 1} times from the backbone's output stride {stride}, past the input's; "
                             f"give at most {stride.bit_length()} widths")
        # the backbone stage read at each scale l >= 1 (the last one at stride s / 2^l), or None
        self.skip_index: List[Optional[int]] = [None]
        for level in range(1, scales):
            at = [i for i, s in enumerate(strides) if s == stride // 2 ** level]
            self.skip_index.append(at[-1] if at and p.skips else None)
        skip_ch = [0] + [0 if i is None else self.backbone.stage_channels[i] for i in self.skip_index[1:]]
        cz = self.backbone.out_channels
        first = self.task_names[0]
        self.stacks, self.attend, self.up, self.classify = (nn.ModuleDict() for _ in range(4))
        for name in self.task_names:
            c0 = cz if name == first else cz + widths[0]
            self.stacks[name] = nn.ModuleList(
                [residual_stack(c0, widths[0])]
                + [residual_stack(widths[l] + skip_ch[l], widths[l]) for l in range(1, scales)]
            )
            self.attend[name] = nn.ModuleList([TaskAttention(widths[l]) for l in range(1, scales)])
            self.up[name] = nn.ModuleList([Upsample(widths[l - 1], widths[l], p.up_kernels) for l in range(1, scales)])
            self.classify[name] = nn.ModuleList(
                [nn.Conv2d(widths[l], self.tasks[name].out_channels, 1) for l in range(scales - 1)]
            )
        # its own light heads on the last, full-resolution states (not the study's head plug-in)
        self.heads = nn.ModuleDict({n: ConvHead(widths[-1], self.tasks[n].out_channels, mid_channels=p.head_channels)
                                    for n in self.task_names})

    @property
    def num_scales(self) -> int:
        return len(self.params.widths)

    # -- forward -------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Encoded:
        """z = the backbone's output; with ``skips``, (z, the skip features of each scale that has one)."""
        if not any(i is not None for i in self.skip_index):
            return self.backbone(x)
        feats = self.backbone.features(x)
        return (feats[-1],) + tuple(feats[i] for i in self.skip_index if i is not None)

    def states(self, encoded: Encoded) -> List[Tuple[str, int, Tensor]]:
        """The state sequence [(task, scale, features)]: a_0, b_0, a_1, b_1, ... (2 L states)."""
        z, rest = (encoded[0], list(encoded[1:])) if isinstance(encoded, tuple) else (encoded, [])
        a, b = self.task_names
        sa = self.stacks[a][0](z)
        sb = self.stacks[b][0](torch.cat([z, sa], dim=1))
        out = [(a, 0, sa), (b, 0, sb)]
        for level in range(1, self.num_scales):
            ua, ub = self.up[a][level - 1](sa), self.up[b][level - 1](sb)
            skip: List[Tensor] = []
            if self.skip_index[level] is not None:
                k = rest.pop(0)
                if k.shape[-2:] != ua.shape[-2:]:  # odd input sizes: the stage rounds differently
                    k = F.interpolate(k, size=ua.shape[-2:], mode="bilinear", align_corners=False)
                skip = [k]
            sa = self.stacks[a][level](torch.cat([self.attend[a][level - 1](ua, ub)] + skip, dim=1))
            sb = self.stacks[b][level](torch.cat([self.attend[b][level - 1](ub, sa)] + skip, dim=1))
            out += [(a, level, sa), (b, level, sb)]
        return out

    def decode(self, encoded: Encoded, input_hw: Sequence[int]) -> Predictions:
        aux: Dict[str, List[Tensor]] = {n: [] for n in self.task_names}
        final: Dict[str, Tensor] = {}
        for name, level, state in self.states(encoded):
            if level < self.num_scales - 1:
                aux[name].append(self.classify[name][level](state))
            else:
                final[name] = apply_head(self.heads[name], state)
        aux = {n: preds for n, preds in aux.items() if preds}
        return Predictions(self.resize_outputs(final, input_hw), aux, self.aux_weights)

    def forward(self, x: Tensor) -> Predictions:
        return self.decode(self.encode(x), x.shape[-2:])

    # -- parameter split -----------------------------------------------------------------------------
    def shared_parameters(self) -> List[nn.Parameter]:
        return params_of(self.backbone)

    def task_specific_parameters(self, task: str) -> List[nn.Parameter]:
        self.check_task(task)
        return params_of(self.stacks[task], self.attend[task], self.up[task], self.classify[task], self.heads[task])

    def last_shared_module(self) -> nn.Module:
        return last_weight_layer(last_stage(self.backbone))

"""PAP-Net: per-task pixel affinities, combined across tasks and diffused into each task's features.

Zhang, Cui, Xu, Yan, Sebe & Yang, "Pattern-Affinitive Propagation across Depth, Surface Normal
and Semantic Segmentation", CVPR 2019 (arXiv 1906.03525), Fig. 2; Vandenhende et al., "Multi-Task
Learning for Dense Prediction Tasks: A Survey", TPAMI 2021, Sec. 2.3.2, Eq. 3, Fig. 7 and Table 6
("PAP-Net", NYUD-v2, single-scale backbone: 52 M / 4800 G). Neither the paper's nor the survey's
code is public, and only the paper's abstract, introduction and Fig. 2 caption could be read
here; what is left open is chosen below, with its source.

For a backbone output z (shared, output stride s) and tasks T (auxiliary ones included):

    F_t = N_t(z)                         task-specific network: a DeepLab-v3 ASPP block, C wide
    P_t = conv1x1(F_t)                   initial prediction (deep supervision, one level)
    G_t = resize(F_t) to (ceil(H / r), ceil(W / r)), n pixels         r = affinity_stride
    E_t = conv1x1(G_t)                   affinity learning layer, C -> C_a
    M_t = softmax_rows(E_t^T E_t / sqrt(C_a))                          [n, n], rows sum to 1
    for each scored task j (cross-task propagation, survey Eq. 3):
        M^_j = sum_i a~_ji M_i,   a~_ji = |a_ji| / sum_k |a_jk|       (a_j learned, init 1/|T|)
    and (task-specific propagation) K diffusion steps from X_0 = G_j:
        X_{k+1} = beta * M^_j X_k + (1 - beta) * X_0
    Y_j = head_j(X_K)                    reconstruction network: a light conv head (head_channels)

An auxiliary task (``task.auxiliary``) gets F_t, P_t and M_t (it is a source of affinities) but
no diffusion or final head: its output is P_t, resized, and it has no intermediate level (as
PAD-Net's auxiliary tasks in the survey code). Outputs are resized to the input (bilinear).

Where each choice comes from:
    - The pipeline (initial predictions from task networks, an affinity matrix per task from its
      features, a learned per-target-task combination, an iterative diffusion in feature space,
      reconstruction networks): the paper's Fig. 2 caption and abstract, the survey's Sec. 2.3.2,
      Eq. 3 and Fig. 7.
    - Task network = the ASPP block of ``trainables/heads/aspp.py`` (no dropout: its output is
      read by the affinities, not a classifier): the survey builds its single-scale models from
      a dilated ResNet-50 and ASPP task heads (Sec. 4.3.1 "reuse the setup of Sec. 4.2.1").
    - Affinity learning layer as a 1x1 conv halving the width, the combination weights starting
      equal, and the diffusion X_{k+1} = beta M X_k + (1 - beta) X_0 with beta = 0.05: the only
      public re-implementation, Sinodinos' ``models/papnet.py`` in Armanfard-Lab/EMA-Net (WACV
      2025 CTAL baselines; beta 0.05, 1 step in its NYUD config).
    - Row-softmax of scaled dot products ("embedded Gaussian" affinities of non-local networks,
      Wang et al., CVPR 2018): ours; EMA-Net divides cosine similarities by their column sums,
      which can be ~0 since cosines can be negative. Rows of M_t are probability distributions,
      so every M^_j is too and the diffusion is a contraction (it cannot blow up for any K).
    - |a| / sum |a| instead of EMA-Net's softmax: a weight of exactly 0 removes a source task
      (softmax never reaches 0); M^_j stays a convex combination.
    - affinity_stride 4 and K = 23: the survey's FLOPS. On NYUD-v2 (480 x 640) the ResNet's
      features are 60 x 80; affinities there cost 4800^2 * C per product (5.9 G at C = 256), so
      4800 G would take ~390 diffusion steps. At stride 4 (120 x 160, n = 19,200) one step is
      n^2 * C = 94.4 G per task and M_t is n^2 * C_a = 47.2 G, so with semseg + depth:
          116.8 (encoder) + 2 * 72.05 (ASPP blocks) + 2 * 47.19 (M_t) + 2 * 0.63 (E_t)
          + heads at 120 x 160 (2 * 2.86 G ``conv``; 2 * 52.9 G ``aspp``) = 362.3 G (462.5 G)
          + K * 2 * 94.37 (diffusion)  ->  K = 23: 4703 G with ``conv`` heads (survey 4800:
          -2.0 %), 4804 G with ``aspp`` heads (+0.1 %); K = 24 would be 4892 / 4992 G.
      With beta = 0.05 the steps after the fifth change X by < 1e-6 of its size (the error
      shrinks by a factor beta per step), so K = 3 gives the same outputs at ~930 G.
    - Size: 23.51 (encoder) + 2 * 15.53 (ASPP blocks) + 2 * 0.03 (E_t) + heads = 54.95 M with
      ``conv`` heads (survey: 52, +5.7 %), 60.31 M with ``aspp`` heads (+16 %: two 2.8 M ASPP
      heads on 256 channels as reconstruction networks). The survey's 52 M equals PAD-Net's
      (Table 6): the propagation itself adds next to nothing (33 K parameters per task here).

Hyper-parameters:
    channels (int > 0, default 256): width C of the task features (the survey's ASPP width).
    rates (3 ints > 0, default (12, 24, 36)): dilations of the task networks' ASPP branches
        (the survey's, at output stride 8).
    affinity_channels (int > 0, default 128): width C_a of the affinity embedding E_t.
    affinity_stride (int > 0, default 4): output stride r of the affinities (see above). Each
        matrix is n^2 floats, n = ceil(H / r) * ceil(W / r): 1.47 GB per image at NYUD-v2's
        120 x 160, and training keeps 2 per scored task (M_t, M^_t) for the backward pass, i.e.
        ~6 GB per image with two tasks (r = 8: 92 MB per matrix).
    iterations (int >= 0, default 23): diffusion steps K (0: no propagation).
    beta (float in [0, 1], default 0.05): weight of the propagated features in each step.
    aux_weight (float >= 0, default 1.0): loss weight of the initial predictions of the scored
        tasks (the survey code weights PAD-Net's initial predictions like the final ones).
    head_channels (int > 0, default 64): width of the reconstruction networks, PAP-Net's own
        light heads (3x3 conv + BN + ReLU + 1x1 conv, the ``conv`` head) at the affinities'
        stride. The study's head plug-in is not used (an ASPP head there costs 2 x 52.9 G and
        +5.4 M); the study's single-task networks keep their heads, and Delta_m is against them.

Parameter split: the backbone is shared; task t owns its ASPP block, initial classifier,
affinity layer, its row of combination weights a_t and its head (the step treats everything after
z as task-specific, ``has_shared_representation``: z = backbone(x)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.heads.conv import ConvHead
from trainables.architectures.base import (
    BackboneFactory,
    HeadFactory,
    MultiTaskModel,
    Predictions,
    last_stage,
    last_weight_layer,
    params_of,
)
from trainables.heads.aspp import ASPP
from trainables.heads.base import apply_head
from trainables.plugins import ArchitectureInfo
from trainables.registry import register_architecture
from trainables.tasks.base import Task


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class PAPNetParams:
    """Hyper-parameters of ``pap_net`` (see the module docstring)."""

    channels: int = 256
    rates: Tuple[int, int, int] = (12, 24, 36)
    affinity_channels: int = 128
    affinity_stride: int = 4
    iterations: int = 23
    beta: float = 0.05
    aux_weight: float = 1.0
    head_channels: int = 64

    def __post_init__(self) -> None:
        for name in ("channels", "affinity_channels", "affinity_stride", "head_channels"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"pap_net: {name} must be a positive int, got {getattr(self, name)!r}")
        if len(self.rates) != 3 or not all(_positive_int(r) for r in self.rates):
            raise ValueError(f"pap_net: rates must be three positive ints, got {self.rates!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
            raise ValueError(f"pap_net: iterations must be an int >= 0, got {self.iterations!r}")
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"pap_net: beta must be a number in [0, 1], got {self.beta!r}")
        if isinstance(self.aux_weight, bool) or not isinstance(self.aux_weight, (int, float)) \
                or not math.isfinite(self.aux_weight) or self.aux_weight < 0:
            raise ValueError(f"pap_net: aux_weight must be a finite number >= 0, got {self.aux_weight!r}")


def row_softmax_affinity(embedding: Tensor) -> Tensor:
    """[B, C, h, w] -> [B, h*w, h*w]: softmax over each row of the scaled pixel dot products."""
    e = embedding.flatten(2)  # [B, C, n]
    logits = torch.bmm(e.transpose(1, 2), e) / math.sqrt(e.shape[1])
    return torch.softmax(logits, dim=-1)


def diffuse(features: Tensor, affinity: Tensor, iterations: int, beta: float) -> Tensor:
    """K steps of X <- beta * M X + (1 - beta) * X_0 on [B, C, h, w] features with M [B, n, n]."""
    b, c, h, w = features.shape
    x0 = features.flatten(2).transpose(1, 2)  # [B, n, C]
    x = x0
    for _ in range(iterations):
        x = beta * torch.bmm(affinity, x) + (1.0 - beta) * x0
    return x.transpose(1, 2).reshape(b, c, h, w)


@register_architecture("pap_net")
class PAPNet(MultiTaskModel):
    """PAP-Net: initial predictions, cross-task combined pixel affinities diffused into task features."""

    Params = PAPNetParams
    INFO = ArchitectureInfo(has_shared_representation=True, deep_supervision=True, dense_only=True)

    def __init__(self, tasks: Mapping[str, Task], make_backbone: BackboneFactory, make_head: HeadFactory,
                 params=None, **kwargs):
        super().__init__(tasks, params, **kwargs)
        p = self.params
        self.aux_weights = (float(p.aux_weight),)
        self.scored: List[str] = [n for n in self.task_names if not getattr(self.tasks[n], "auxiliary", False)]
        if not self.scored:
            raise ValueError(f"{self.label()}: every task is auxiliary ({self.task_names}); at least one task must "
                             "get the propagated features and a final head")
        self.backbone = make_backbone()
        cin = self.backbone.out_channels
        self.task_nets = nn.ModuleDict({n: ASPP(cin, p.channels, tuple(p.rates), 0.0) for n in self.task_names})
        self.initial = nn.ModuleDict({n: nn.Conv2d(p.channels, t.out_channels, 1) for n, t in self.tasks.items()})
        self.embed = nn.ModuleDict({n: nn.Conv2d(p.channels, p.affinity_channels, 1) for n in self.task_names})
        # mix[j][i]: weight of task i's affinities in task j's combination (Eq. 3), equal at start
        self.mix = nn.ParameterDict({
            n: nn.Parameter(torch.full((len(self.task_names),), 1.0 / len(self.task_names))) for n in self.scored
        })
        # reconstruction networks: light conv heads at the affinities' stride (not the study's head plug-in)
        self.heads = nn.ModuleDict({n: ConvHead(p.channels, self.tasks[n].out_channels, mid_channels=p.head_channels)
                                    for n in self.scored})

    # -- the pieces, exposed for tests and analysis ------------------------------------------------
    def task_features(self, z: Tensor) -> Dict[str, Tensor]:
        """F_t for every task, at the backbone's resolution."""
        return {n: self.task_nets[n](z) for n in self.task_names}

    def affinity_size(self, input_hw: Sequence[int]) -> Tuple[int, int]:
        r = self.params.affinity_stride
        return (-(-int(input_hw[0]) // r), -(-int(input_hw[1]) // r))

    def affinities(self, resized: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """M_t [B, n, n] for every task, from its features G_t at the affinity resolution."""
        return {n: row_softmax_affinity(self.embed[n](g)) for n, g in resized.items()}

    def mix_weights(self, task: str) -> Tensor:
        """a~_j: task j's normalised weights over every task's affinities (order: ``task_names``)."""
        a = self.mix[task].abs()
        return a / a.sum().clamp_min(torch.finfo(a.dtype).tiny)

    def combined_affinity(self, task: str, affinities: Mapping[str, Tensor]) -> Tensor:
        """M^_j = sum_i a~_ji M_i (survey Eq. 3)."""
        weights = self.mix_weights(task)
        return sum(weights[i] * affinities[n] for i, n in enumerate(self.task_names))

    # -- forward -------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def decode(self, z: Tensor, input_hw: Sequence[int]) -> Predictions:
        p = self.params
        features = self.task_features(z)
        initial = {n: self.initial[n](f) for n, f in features.items()}
        size = self.affinity_size(input_hw)
        resized = {n: F.interpolate(f, size=size, mode="bilinear", align_corners=False) for n, f in features.items()}
        affinities = self.affinities(resized)
        final = {}
        for n in self.task_names:
            if n not in self.heads:  # auxiliary: its initial prediction is its output
                final[n] = initial[n]
                continue
            diffused = diffuse(resized[n], self.combined_affinity(n, affinities), p.iterations, float(p.beta))
            final[n] = apply_head(self.heads[n], diffused)
        aux = {n: [initial[n]] for n in self.scored}
        return Predictions(self.resize_outputs(final, input_hw), aux, self.aux_weights)

    # -- parameter split -----------------------------------------------------------------------------
    def shared_parameters(self) -> List[nn.Parameter]:
        return params_of(self.backbone)

    def task_specific_parameters(self, task: str) -> List[nn.Parameter]:
        self.check_task(task)
        own = [self.task_nets[task], self.initial[task], self.embed[task]]
        if task in self.heads:
            own.append(self.heads[task])
        return params_of(*own) + ([self.mix[task]] if task in self.mix else [])

    def last_shared_module(self) -> nn.Module:
        return last_weight_layer(last_stage(self.backbone))

"""MTPSL: cross-task consistency in joint pairwise task spaces, one FiLM-conditioned mapping network.

Li, Liu & Bilen, "Learning Multiple Dense Prediction Tasks from Partially Annotated Data",
CVPR 2022 (summarised as Eq. 3 of JTR, Nishi et al., CVPR 2024); public code VICO-UoE/MTPSL
(``model/mapfns.py``, ``nyu_mtl_xtc.py``), which this follows where the paper is silent.

For every sample x and every ordered pair (s, t) of tasks with t labelled for x and s not,
the unlabelled task's prediction and the labelled task's label meet in the pair's joint space:

    L_ct(s, t) = 1 - cos(m(y_hat^s; s, (s,t)), m(y^t; t, (s,t)))
    L_reg(s, t) = [1 - cos(m(y_hat^s; s, (s,t)), sg(z))] + [1 - cos(m(y^t; t, (s,t)), sg(z))]
    L = weight / B * sum_x sum_(s,t) [L_ct(s, t) + reg_weight * L_reg(s, t)]

cos is the cosine similarity along channels averaged over the pixels, z the MTL encoder's shared
feature of x and sg a stop-gradient. m(.; task, pair) is ONE shared network: a task-specific
input layer (conv3x3 - BN - ReLU on the task's preprocessed map, ``maps.py``), then SegNet's
encoder whose every conv block is FiLM-conditioned on the pair: after its BatchNorm,
x * gamma[:, k] + beta[:, k] with k = s * (K - 1) + (t if t < s else t - 1) the pair's index
among the K (K - 1) ordered pairs (MTPSL's ``A_taskpair``). Its output lives where z lives,
channels[-1] channels at 1 / 2 ** levels of the input size; the regularisation keeps the joint
spaces from collapsing to a trivial solution. Gradients: the unlabelled task's prediction (its
head and the encoder) and the mapping network receive them; the label and z do not, and the
labelled task's prediction is not used. The terms are "mtpsl/cross_task" (weight * L_ct) and
"mtpsl/feature" (weight * reg_weight * L_reg; absent with reg_weight = 0).

"onelabel" and "randomlabels" are MTPSL's two partial-label settings; its code treats both
alike - the pairs follow each sample's labels - and so does this. ``pairs = "all"`` is its
"full" setting: every ordered pair with a labelled target, whatever the source's label.

Hyper-parameters (MTPSL's defaults for NYUv2):
    weight (float >= 0, default 2.0): the cross-task weight (``--con-weight``).
    reg_weight (float >= 0, default 0.5): the feature regularisation's weight (``--reg-weight``);
        0 drops the term and the need for the shared features.
    channels (ints, default SegNet's (64, 128, 256, 512, 512)): the encoder's widths;
        channels[-1] must equal z's channels when reg_weight > 0.
    convs (ints, default SegNet's (2, 2, 3, 3, 3)): conv blocks per level.
    film_lr_mult (float > 0, default 10.0): FiLM's learning rate over the base rate (MTPSL: Adam at
        1e-3 for gamma and beta, 1e-4 for the networks, NYUv2; its Cityscapes script uses 1e-5,
        i.e. 0.1); the rest of the mapping network trains at the base rate.
    class_input ("gumbel" | "softmax", default "gumbel"): a class map's prediction enters as a
        hard Gumbel-softmax sample with the soft sample's gradient (MTPSL), or as its softmax.
    pairs ("unlabelled" | "all", default "unlabelled"): see above.

Deviations: the term reads the training image's own prediction (view 0) and z; MTPSL reads those
of a second random scale-crop of the image (``aug_twice``) with the labels cropped alike. Where
the mapping's output and z differ in spatial size, the output is adaptive-average-pooled to z's
(MTPSL's SegNet and mapping network both have stride 32, so they match); a tuple z (multi-scale)
uses its last, deepest map.
One optimiser and schedule for all (MTPSL: a second Adam for FiLM, halved every 30 epochs instead
of 100); its optional linear ramp-up of the weight (``--rampup up``) is not offered. Each pair is
mapped one sample at a time, as MTPSL does (BatchNorm statistics are a sample's own).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from trainables.plugins import RegulariserInfo
from trainables.registry import register_regulariser
from trainables.regularisers import maps
from trainables.regularisers.base import Regulariser, zero_like_outputs


@dataclass(frozen=True)
class MTPSLParams:
    """Hyper-parameters of ``mtpsl`` (see the module docstring)."""

    weight: float = 2.0
    reg_weight: float = 0.5
    channels: Tuple[int, ...] = maps.SEGNET_CHANNELS
    convs: Tuple[int, ...] = maps.SEGNET_CONVS
    film_lr_mult: float = 10.0
    class_input: str = "gumbel"
    pairs: str = "unlabelled"

    def __post_init__(self) -> None:
        maps.check_number("mtpsl", "weight", self.weight)
        maps.check_number("mtpsl", "reg_weight", self.reg_weight)
        maps.check_widths("mtpsl", self.channels, self.convs)
        maps.check_number("mtpsl", "film_lr_mult", self.film_lr_mult, positive=True)
        maps.check_choice("mtpsl", "class_input", self.class_input, maps.CLASS_INPUTS)
        maps.check_choice("mtpsl", "pairs", self.pairs, ("unlabelled", "all"))


@register_regulariser("mtpsl")
class MTPSL(Regulariser):
    """Cross-task consistency in joint pairwise task spaces (MTPSL, CVPR 2022; JTR Eq. 3)."""

    Params = MTPSLParams
    INFO = RegulariserInfo(needs_features=True)

    @classmethod
    def info_for(cls, params: MTPSLParams) -> RegulariserInfo:
        return RegulariserInfo(needs_features=params.reg_weight > 0)

    def __init__(self, tasks, params=None, context=None, **kwargs):
        super().__init__(tasks, params, context, **kwargs)
        p = self.params
        self.kinds = {name: maps.input_kind(task, self.label()) for name, task in self.tasks.items()}
        k = len(self.task_names)
        self.stems = nn.ModuleDict({name: maps.stem(task.out_channels, p.channels[0])
                                    for name, task in self.tasks.items()})  # the task-specific input layers
        self.encoder = maps.Encoder(p.channels, p.convs, film_pairs=max(k * (k - 1), 1))  # shared, FiLM per pair

    def pair_index(self, source: str, target: str) -> int:
        """The column of gamma / beta that conditions the pair (source, target)."""
        s, t = self.task_names.index(source), self.task_names.index(target)
        return s * (len(self.task_names) - 1) + (t if t < s else t - 1)

    def map(self, x: Tensor, task: str, pair: int) -> Tensor:
        """m(x; task, pair): the task's input layer, then the pair-conditioned encoder."""
        return self.encoder(self.stems[task](x), pair)

    def terms(self, outputs: Sequence[Mapping[str, Tensor]], batch: Mapping[str, Any],
              features: Any = None) -> Dict[str, Tensor]:
        out, p = outputs[0], self.params
        use_features = p.reg_weight > 0
        z = self._feature(features) if use_features else None
        cross, feature = zero_like_outputs(out), zero_like_outputs(out)
        for i, s, t in maps.pairs_of(batch["mask"], self.task_names, all_sources=p.pairs == "all"):
            pred = out[s][i:i + 1]
            source = maps.prediction_input(self.tasks[s], self.kinds[s], pred, p.class_input)
            target = maps.label_input(self.tasks[t], self.kinds[t], batch["targets"][t][i:i + 1], pred.dtype)
            k = self.pair_index(s, t)
            mapped_s, mapped_t = self.map(source, s, k), self.map(target, t, k)
            cross = cross + maps.cosine_distance(mapped_s, mapped_t)
            if use_features:
                zi = z[i:i + 1]
                feature = feature + maps.cosine_distance(self._fit(mapped_s, zi), zi) \
                    + maps.cosine_distance(self._fit(mapped_t, zi), zi)
        size = next(iter(out.values())).shape[0]
        terms = {"mtpsl/cross_task": p.weight * cross / size}
        if use_features:
            terms["mtpsl/feature"] = p.weight * p.reg_weight * feature / size
        return terms

    def _feature(self, features: Any) -> Tensor:
        if features is None:
            raise ValueError(f"{self.label()}: reg_weight > 0 needs the model's shared features; the step gave none")
        z = (features[-1] if isinstance(features, (tuple, list)) else features).detach()
        if z.dim() != 4:
            raise ValueError(f"{self.label()}: the shared features must be a map [B, C, H, W], got {tuple(z.shape)}")
        if z.shape[1] != self.params.channels[-1]:
            raise ValueError(f"{self.label()}: the mapping space has channels[-1] = {self.params.channels[-1]} "
                             f"channels but the model's shared feature has {z.shape[1]}; set channels' last entry "
                             f"to {z.shape[1]} (or reg_weight = 0)")
        return z

    @staticmethod
    def _fit(mapped: Tensor, z: Tensor) -> Tensor:
        """The mapping's output at z's spatial size (adaptive average pooling when they differ)."""
        return mapped if mapped.shape[-2:] == z.shape[-2:] else F.adaptive_avg_pool2d(mapped, z.shape[-2:])

    def film_parameters(self) -> List[nn.Parameter]:
        return [p for block in self.encoder.modules() if isinstance(block, maps.ConvBlock)
                for p in (block.gamma, block.beta) if p is not None]

    def param_groups(self) -> List[Dict[str, Any]]:
        """The mapping network at the base rate, its FiLM parameters at ``film_lr_mult`` times it."""
        film = {id(p) for p in self.film_parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in film]
        return [{"name": "mtpsl/mapping", "params": rest, "lr_mult": 1.0},
                {"name": "mtpsl/film", "params": self.film_parameters(), "lr_mult": self.params.film_lr_mult}]

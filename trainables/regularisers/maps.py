"""What the cross-task mapping regularisers share (``mtpsl``, ``direct_map``, ``perceptual_map``).

Not a plug-in. Three parts:

1. Inputs of a mapping network, per kind of task (Li, Liu & Bilen, "Learning Multiple Dense
   Prediction Tasks from Partially Annotated Data", CVPR 2022, public code ``model/mapfns.py``:
   ``pre_process_pred`` / ``pre_process_gt``). A prediction and a label of the same task enter
   the same network, so both are brought to the same form:

       kind        tasks                        prediction                    label
       classes     semseg, human_parts          one-hot Gumbel sample (hard,  one-hot; ignored pixels
                                                straight-through) or softmax  all zero
       binary      edge, saliency               sigmoid probability           {0, 1}; ignored pixels 0
       depth       depth                        pred / (max over the sample   gt / (max over the sample
                                                + 1e-12)                      + 1e-12); invalid pixels 0
       normals     normals                      (unit prediction + 1) / 2     (gt + 1) / 2; invalid 0.5
       regression  dense_l1, keypoints,         the raw values                invalid elements 0
                   instance_center

   classes, depth and normals are MTPSL's; binary and regression are this code's extension (MTPSL
   has no such task): the binary analogue of the softmax, and the values as they are. MTPSL
   normalises depth by the maximum over each sample (it maps one sample at a time); so does this
   code, per sample of a batch. Image-level tasks have no map to feed a convolutional network and
   are refused, naming the task.

2. The mapping networks: SegNet's encoder (Badrinarayanan et al., TPAMI 2017, as in MTAN's and
   MTPSL's code: levels of conv3x3 - BN - ReLU, each level ending in a 2x2 max-pool), optionally
   with FiLM (Perez et al., AAAI 2018) after each BatchNorm, x * gamma[:, k] + beta[:, k] with k a
   task pair; and SegNet's decoder (max-unpooling with the encoder's indices, conv blocks, a 1x1
   prediction conv) for networks that output a task's map. Widths (``channels``) and convs per
   level (``convs``) are parameters; SegNet's are (64, 128, 256, 512, 512) and (2, 2, 3, 3, 3).
   The pools use ``ceil_mode`` so that small inputs keep at least one pixel (the same as SegNet's
   for sizes divisible by 2 ** levels). Init as MTPSL's: Xavier-normal conv weights, zero biases,
   BN weight 1 and bias 0; FiLM gamma 1 and beta 0.

3. The pairs a batch regularises: per sample i, every ordered pair (s, t) of distinct tasks with
   t labelled for i and s not (MTPSL's loop), and the cosine distance 1 - mean cos.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.tasks.base import Task
from trainables.tasks.depth import Depth
from trainables.tasks.edge import Edge
from trainables.tasks.masked import MaskedDense
from trainables.tasks.normals import Normals
from trainables.tasks.saliency import Saliency
from trainables.tasks.semseg import SemSeg

SEGNET_CHANNELS = (64, 128, 256, 512, 512)
SEGNET_CONVS = (2, 2, 3, 3, 3)
CLASS_INPUTS = ("gumbel", "softmax")


@dataclass(frozen=True)
class MapParams:
    """The hyper-parameters the mapping regularisers share (each subclass names its plug-in)."""

    PLUGIN: ClassVar[str] = "map"
    weight: float = 2.0
    channels: Tuple[int, ...] = SEGNET_CHANNELS
    convs: Tuple[int, ...] = SEGNET_CONVS
    class_input: str = "gumbel"

    def __post_init__(self) -> None:
        check_number(self.PLUGIN, "weight", self.weight)
        check_widths(self.PLUGIN, self.channels, self.convs)
        check_choice(self.PLUGIN, "class_input", self.class_input, CLASS_INPUTS)
SUPPORTED = ("class maps (semseg, human_parts), binary maps (edge, saliency), depth, normals and masked "
             "dense regression (dense_l1, keypoints, instance_center)")


# -- parameters ----------------------------------------------------------------------------------
def check_number(owner: str, name: str, value: Any, positive: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ValueError(f"{owner}: {name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


def check_choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_widths(owner: str, channels: Any, convs: Any) -> None:
    """``channels``: one width per level; ``convs``: convs per level (>= 1), as many."""
    def ints(xs, low):
        return isinstance(xs, tuple) and len(xs) > 0 and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= low for x in xs)
    if not ints(channels, 1):
        raise ValueError(f"{owner}: channels must be a non-empty list of positive ints, got {channels!r}")
    if not ints(convs, 1) or len(convs) != len(channels):
        raise ValueError(f"{owner}: convs must give an int >= 1 for each of the {len(channels)} levels of "
                         f"channels {list(channels)}, got {convs!r}")


# -- inputs of the mapping networks --------------------------------------------------------------
def input_kind(task: Task, owner: str) -> str:
    """How ``task``'s predictions and labels enter a mapping network (the table above)."""
    kind = None
    if task.kind == "dense":
        for cls, name in ((SemSeg, "classes"), ((Edge, Saliency), "binary"), (Depth, "depth"),
                          (Normals, "normals"), (MaskedDense, "regression")):
            if isinstance(task, cls):
                kind = name
                break
    if kind is None:
        what = "an image-level task" if task.kind != "dense" else "a dense task without a known map format"
        raise ValueError(f"{owner}: task {task.name!r} ({task.label()}) is {what}; the mapping networks take "
                         f"{SUPPORTED}")
    return kind


def prediction_input(task: Task, kind: str, pred: Tensor, class_input: str = "gumbel") -> Tensor:
    """A prediction [B, C, H, W] as a mapping network's input (keeps the gradient)."""
    if kind == "classes":
        return gumbel_hard(pred) if class_input == "gumbel" else pred.softmax(1)
    if kind == "binary":
        return torch.sigmoid(pred)
    if kind == "depth":
        return pred / (pred.amax(dim=(1, 2, 3), keepdim=True) + 1e-12)
    if kind == "normals":
        return (task.predict(pred) + 1.0) / 2.0
    return pred


def label_input(task: Task, kind: str, target: Tensor, dtype: torch.dtype) -> Tensor:
    """A label as a mapping network's input, [B, C, H, W] of ``dtype`` (never differentiated)."""
    target = target.detach()
    if kind == "classes":
        valid = ~task.ignored(target)
        onehot = F.one_hot(torch.where(valid, target.long(), 0), task.out_channels).permute(0, 3, 1, 2)
        return (onehot * valid[:, None]).to(dtype)
    gt = torch.where(task.valid_mask(target), target, torch.zeros_like(target)).to(dtype)
    if kind == "depth":
        return gt / (gt.amax(dim=(1, 2, 3), keepdim=True) + 1e-12)
    if kind == "normals":
        return (gt + 1.0) / 2.0
    return gt


def gumbel_hard(logits: Tensor, tau: float = 1.0) -> Tensor:
    """A one-hot sample of softmax(logits) over dim 1 with the soft sample's gradient (torch's
    ``gumbel_softmax(hard=True)``, with the uniform noise kept inside (0, 1) so that no sample is
    NaN - MTPSL redraws NaN samples instead)."""
    tiny = torch.finfo(logits.dtype).tiny
    u = torch.rand_like(logits).clamp(tiny, 1.0 - torch.finfo(logits.dtype).eps)
    soft = ((logits - torch.log(-torch.log(u))) / tau).softmax(1)
    hard = torch.zeros_like(soft).scatter_(1, soft.argmax(1, keepdim=True), 1.0)
    return hard - soft.detach() + soft


# -- the networks --------------------------------------------------------------------------------
class ConvBlock(nn.Module):
    """conv3x3 - BN - ReLU; with ``film_pairs`` > 0, FiLM after the BN: x * gamma[:, k] + beta[:, k]
    for pair k (MTPSL's ``conv_task``: one column of gamma and beta per ordered task pair)."""

    def __init__(self, cin: int, cout: int, film_pairs: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.gamma = nn.Parameter(torch.ones(cout, film_pairs)) if film_pairs else None
        self.beta = nn.Parameter(torch.zeros(cout, film_pairs)) if film_pairs else None

    def forward(self, x: Tensor, pair: Optional[int] = None) -> Tensor:
        x = self.bn(self.conv(x))
        if self.gamma is not None:
            x = x * self.gamma[:, pair].view(1, -1, 1, 1) + self.beta[:, pair].view(1, -1, 1, 1)
        return F.relu(x)


def stem(cin: int, cout: int) -> ConvBlock:
    """A task's input layer (MTPSL's ``pre_conv_layer``): conv3x3 - BN - ReLU, never FiLM-ed."""
    return init_weights(ConvBlock(cin, cout))


class Encoder(nn.Module):
    """SegNet's encoder on ``channels[0]``-channel maps: per level, ``convs[l]`` conv blocks (the
    first changes the width to ``channels[l]``), then a 2x2 max-pool; the output has
    ``channels[-1]`` channels at 1 / 2 ** levels of the input size (rounded up)."""

    def __init__(self, channels: Sequence[int], convs: Sequence[int], film_pairs: int = 0):
        super().__init__()
        widths = [channels[0]] + list(channels)
        self.levels = nn.ModuleList(
            nn.ModuleList(ConvBlock(widths[level] if k == 0 else width, width, film_pairs) for k in range(n))
            for level, (width, n) in enumerate(zip(channels, convs)))
        init_weights(self)

    def forward(self, x: Tensor, pair: Optional[int] = None,
                pools: Optional[List[Tuple[Tensor, torch.Size]]] = None) -> Tensor:
        for level in self.levels:
            for block in level:
                x = block(x, pair)
            size = x.shape[-2:]
            x, indices = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
            if pools is not None:
                pools.append((indices, size))
        return x


class Decoder(nn.Module):
    """SegNet's decoder, the mirror of ``Encoder``: per level from the deepest, max-unpooling with
    the encoder's indices, ``convs[l]`` conv blocks (the first to the next shallower width), then
    a 1x1 conv to ``out_channels`` at the input resolution."""

    def __init__(self, channels: Sequence[int], convs: Sequence[int], out_channels: int):
        super().__init__()
        levels = []
        for level in reversed(range(len(channels))):
            width, out = channels[level], channels[max(level - 1, 0)]
            levels.append(nn.ModuleList(ConvBlock(width if k == 0 else out, out) for k in range(convs[level])))
        self.levels = nn.ModuleList(levels)
        self.predict = nn.Conv2d(channels[0], out_channels, 1)
        init_weights(self)

    def forward(self, x: Tensor, pools: List[Tuple[Tensor, torch.Size]]) -> Tensor:
        for level, (indices, size) in zip(self.levels, reversed(pools)):
            x = F.max_unpool2d(x, indices, 2, 2, output_size=size)
            for block in level:
                x = block(x)
        return self.predict(x)


class SegNetMap(nn.Module):
    """stem + encoder + decoder: an ``in_channels`` map to an ``out_channels`` map of the same size."""

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int], convs: Sequence[int]):
        super().__init__()
        self.stem = stem(in_channels, channels[0])
        self.encoder = Encoder(channels, convs)
        self.decoder = Decoder(channels, convs, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        pools: List[Tuple[Tensor, torch.Size]] = []
        return self.decoder(self.encoder(self.stem(x), pools=pools), pools)


def init_weights(module: nn.Module) -> nn.Module:
    """MTPSL's init: Xavier-normal conv weights, zero biases; BN weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


# -- pairs and distances -------------------------------------------------------------------------
def pairs_of(mask: Mapping[str, Tensor], names: Sequence[str], all_sources: bool = False) -> List[Tuple[int, str, str]]:
    """(sample i, source s, target t) for every ordered pair of distinct tasks with t labelled for
    sample i and s not (``all_sources``: whatever s's label), in sample then task order."""
    rows = torch.stack([mask[t] for t in names]).bool().cpu().tolist()  # [T][B]
    batch = len(rows[0]) if rows else 0
    return [(i, s, t) for i in range(batch) for a, s in enumerate(names) for b, t in enumerate(names)
            if a != b and rows[b][i] and (all_sources or not rows[a][i])]


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """1 - the mean over pixels (and samples) of the cosine similarity along channels (MTPSL's)."""
    return 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-12).mean()

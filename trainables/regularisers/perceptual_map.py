"""Perceptual cross-task mapping: an unlabelled task's prediction and a labelled task's label,
compared in one learned feature space.

The "Perceptual-Map" baseline of Li, Liu & Bilen, "Learning Multiple Dense Prediction Tasks from
Partially Annotated Data", CVPR 2022 (Table 1, after the perceptual losses of Zamir et al.,
"Robust Learning Through Cross-Task Consistency", CVPR 2020), repeated as "Perceptual Map" in
JTR's Tables 1-2 (Nishi et al., CVPR 2024, which builds it on SegNet). Every task has a mapping
network m_t into a common feature space; for every sample x and every ordered pair (s, t) with t
labelled for x and s not:

    L = weight / B * sum_x sum_(s,t) [ 1 - cos( m_s(y_hat^s), m_t(y^t) ) ]

cos being the cosine similarity along channels averaged over the pixels (MTPSL's distance). m_t
is a task-specific input layer then SegNet's encoder (``maps.py``; channels[-1] channels at
1 / 2 ** levels of the input size), fed the task's preprocessed map: a task's predictions and
its labels go through the same network. The gradient reaches s's prediction (its head and the
encoder) and both networks; t's prediction is not used. The term is "perceptual_map".

Hyper-parameters:
    weight (float >= 0, default 2.0): the term's weight (MTPSL's cross-task weight; its code has
        no perceptual-map baseline to take one from).
    channels (ints, default SegNet's (64, 128, 256, 512, 512)), convs (ints, default
        (2, 2, 3, 3, 3)): widths and conv blocks per level of every task's network.
    class_input ("gumbel" | "softmax", default "gumbel"): how a class map's prediction enters.

Choices where neither paper is explicit (MTPSL's public code has no baseline): one network per
task into a space shared by all pairs - MTPSL's method without its pair conditioning (FiLM) and
without its regularisation towards the encoder's feature, so nothing keeps the space from the
trivial solution MTPSL's regulariser is there to prevent; MTPSL's distance and input
preprocessing; the networks trained jointly with the model by this term; MTPSL's pairs and
one-sample-at-a-time mapping.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Mapping, Sequence

from torch import Tensor, nn

from trainables.registry import register_regulariser
from trainables.regularisers import maps
from trainables.regularisers.base import Regulariser, zero_like_outputs


@dataclass(frozen=True)
class PerceptualMapParams(maps.MapParams):
    """Hyper-parameters of ``perceptual_map`` (see the module docstring)."""

    PLUGIN: ClassVar[str] = "perceptual_map"


@register_regulariser("perceptual_map")
class PerceptualMap(Regulariser):
    """Compare the unlabelled task's prediction and the labelled task's label in a learned space."""

    Params = PerceptualMapParams

    def __init__(self, tasks, params=None, context=None, **kwargs):
        super().__init__(tasks, params, context, **kwargs)
        p = self.params
        self.kinds = {name: maps.input_kind(task, self.label()) for name, task in self.tasks.items()}
        self.nets = nn.ModuleDict({
            name: nn.Sequential(maps.stem(task.out_channels, p.channels[0]), maps.Encoder(p.channels, p.convs))
            for name, task in self.tasks.items()})

    def terms(self, outputs: Sequence[Mapping[str, Tensor]], batch: Mapping[str, Any],
              features: Any = None) -> Dict[str, Tensor]:
        out, p = outputs[0], self.params
        total = zero_like_outputs(out)
        for i, s, t in maps.pairs_of(batch["mask"], self.task_names):
            pred = out[s][i:i + 1]
            source = maps.prediction_input(self.tasks[s], self.kinds[s], pred, p.class_input)
            target = maps.label_input(self.tasks[t], self.kinds[t], batch["targets"][t][i:i + 1], pred.dtype)
            total = total + maps.cosine_distance(self.nets[s](source), self.nets[t](target))
        return {"perceptual_map": p.weight * total / next(iter(out.values())).shape[0]}

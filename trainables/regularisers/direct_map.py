"""Direct cross-task mapping: an unlabelled task's prediction, mapped into a labelled task's output
space, is supervised by that task's label.

The "Direct-Map" baseline of Li, Liu & Bilen, "Learning Multiple Dense Prediction Tasks from
Partially Annotated Data", CVPR 2022 (Table 1, after Zamir et al., "Robust Learning Through
Cross-Task Consistency", CVPR 2020), repeated as "Direct Map" in JTR's Tables 1-2 (Nishi et al.,
CVPR 2024, which builds it on SegNet). For every sample x and every ordered pair (s, t) with t
labelled for x and s not:

    L = weight / B * sum_x sum_(s,t) L^t( m_(s->t)(y_hat^s), y^t )

with L^t task t's own supervised loss (``Task.loss``: cross-entropy, masked L1, ...) and m_(s->t)
a network of its own per ordered pair: SegNet (encoder and decoder, ``maps.SegNetMap``) from s's
preprocessed prediction (``maps.py``: one-hot Gumbel / softmax class maps, per-sample normalised
depth, (n + 1) / 2 normals, ...) to t's raw output format (logits, metric depth, ...) at the
same resolution. The gradient reaches s's prediction (its head and the encoder) and the pair's
network; t's prediction is not used. The term is "direct_map".

Hyper-parameters:
    weight (float >= 0, default 2.0): the term's weight (MTPSL's cross-task weight; its code has
        no direct-map baseline to take one from).
    channels (ints, default SegNet's (64, 128, 256, 512, 512)), convs (ints, default
        (2, 2, 3, 3, 3)): widths and conv blocks per level of every pair's network.
    class_input ("gumbel" | "softmax", default "gumbel"): how a class map's prediction enters.

Choices where neither paper is explicit (MTPSL's public code has no baseline): the networks are
trained jointly with the model by this very term - no pre-training on labelled pairs, which the
"onelabel" setting would not have; the input preprocessing is MTPSL's, so that the three mapping
methods see the same inputs; the pairs, their sum over pairs and the mean over the batch, and the
one-sample-at-a-time mapping follow MTPSL's loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Mapping, Sequence

from torch import Tensor, nn

from trainables.registry import register_regulariser
from trainables.regularisers import maps
from trainables.regularisers.base import Regulariser, zero_like_outputs


@dataclass(frozen=True)
class DirectMapParams(maps.MapParams):
    """Hyper-parameters of ``direct_map`` (see the module docstring)."""

    PLUGIN: ClassVar[str] = "direct_map"


@register_regulariser("direct_map")
class DirectMap(Regulariser):
    """Map the unlabelled task's prediction to the labelled task's space; the labelled task's loss."""

    Params = DirectMapParams

    def __init__(self, tasks, params=None, context=None, **kwargs):
        super().__init__(tasks, params, context, **kwargs)
        p = self.params
        self.kinds = {name: maps.input_kind(task, self.label()) for name, task in self.tasks.items()}
        self.nets = nn.ModuleDict({
            self.key(s, t): maps.SegNetMap(self.tasks[s].out_channels, self.tasks[t].out_channels, p.channels, p.convs)
            for s in self.task_names for t in self.task_names if s != t})

    @staticmethod
    def key(source: str, target: str) -> str:
        return f"{source}->{target}"

    def terms(self, outputs: Sequence[Mapping[str, Tensor]], batch: Mapping[str, Any],
              features: Any = None) -> Dict[str, Tensor]:
        out, p = outputs[0], self.params
        total = zero_like_outputs(out)
        for i, s, t in maps.pairs_of(batch["mask"], self.task_names):
            source = maps.prediction_input(self.tasks[s], self.kinds[s], out[s][i:i + 1], p.class_input)
            total = total + self.tasks[t].loss(self.nets[self.key(s, t)](source), batch["targets"][t][i:i + 1].detach())
        return {"direct_map": p.weight * total / next(iter(out.values())).shape[0]}

"""Binary image-level attribute (e.g. one CelebA face attribute): BCE with logits, accuracy.

Survey: Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey",
TPAMI 2021 - Sec. 4.5.1 / supp. D.1 and Table 11a: on CelebA (Liu et al., ICCV 2015) each of
the 40 attributes is a task with its own linear head, "learned using a binary cross-entropy
loss", and the table reports accuracy (%), averaged over the attributes (the survey's 91.91
for fixed weights). Other works (MGDA, Sener & Koltun, NeurIPS 2018) report the error
100 - accuracy instead; both keys are given here.

Formats:
    pred: logits [B, 1]; target: [B] or [B, 1] with values in {0, 1} (any numeric dtype;
    the CelebA loader maps the file's -1 / 1 to 0 / 1).

Loss: ``F.binary_cross_entropy_with_logits(pred, target, pos_weight=pos_weight)``, mean over
the samples.

Metric state: [n, #correct, #positive targets, #true positives] in float64; a sample is
predicted positive iff its logit is > 0 (probability > 0.5).
    accuracy = 100 * #correct / n,  error = 100 - accuracy,
    recall   = 100 * #true positives / #positive targets (NaN when the split has none).
An empty state gives NaN for every key.

Hyper-parameters (``AttributeParams``):
    pos_weight (float > 0 or None, default None): weight of the positive term of the BCE (as
        torch's ``pos_weight``), e.g. n_negative / n_positive for a rare attribute.

Primary metric: ``accuracy``, higher is better.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.registry import register_task
from trainables.tasks.base import Task


@dataclass(frozen=True)
class AttributeParams:
    """Parameters of ``attribute`` (see the module docstring)."""

    pos_weight: Optional[float] = None

    def __post_init__(self) -> None:
        w = self.pos_weight
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0):
            raise ValueError(f"attribute: pos_weight must be a finite float > 0 or None, got {w!r}")


@register_task("attribute")
class Attribute(Task):
    """Binary image-level attribute (BCE with logits; accuracy / error in %)."""

    Params = AttributeParams
    kind = "image"
    primary_metric = "accuracy"
    higher_is_better = True

    @property
    def out_channels(self) -> int:
        return 1

    def _target(self, pred: Tensor, target: Tensor) -> Tensor:
        """The target as [B, 1] in pred's dtype, after checking the shapes."""
        if pred.dim() != 2 or pred.shape[1] != 1:
            raise ValueError(f"{self.name}: pred must be [B, 1], got {tuple(pred.shape)}")
        b = pred.shape[0]
        if tuple(target.shape) not in ((b,), (b, 1)):
            raise ValueError(f"{self.name}: target must be [B] or [B, 1] with B = {b}, got {tuple(target.shape)}")
        return target.reshape(b, 1).to(pred.dtype)

    def pseudo_label(self, pred: Tensor) -> Tensor:
        """1 where the attribute's probability exceeds 0.5 (a hard label)."""
        return (pred.detach() > 0).to(pred.dtype)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        y = self._target(pred, target)
        w = self.params.pos_weight
        pw = None if w is None else torch.tensor([w], dtype=pred.dtype, device=pred.device)
        return F.binary_cross_entropy_with_logits(pred, y, pos_weight=pw)

    def metric_state(self, device: torch.device | str = "cpu") -> Tensor:
        return torch.zeros(4, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update_metric(self, state: Tensor, pred: Tensor, target: Tensor) -> None:
        y = self._target(pred, target) >= 0.5
        yhat = pred > 0
        counts = [torch.tensor(float(pred.shape[0]), dtype=torch.float64, device=pred.device),
                  (yhat == y).sum().to(torch.float64), y.sum().to(torch.float64),
                  (yhat & y).sum().to(torch.float64)]
        state += torch.stack(counts).to(state.device)

    def compute_metric(self, state: Tensor) -> Dict[str, float]:
        n, correct, n_pos, tp = (float(v) for v in state.detach().to("cpu", torch.float64))
        if n <= 0:
            return {"accuracy": float("nan"), "error": float("nan"), "recall": float("nan")}
        acc = 100.0 * correct / n
        return {"accuracy": acc, "error": 100.0 - acc,
                "recall": 100.0 * tp / n_pos if n_pos > 0 else float("nan")}

    def predict(self, pred: Tensor) -> Tensor:
        """Probability that the attribute is present, sigmoid(pred)."""
        return torch.sigmoid(pred)

"""The task contract: a loss, a split-level metric, and the metric's direction.

A task sees raw head outputs and the targets of the samples that carry a label for it
(``mask`` selects them), so partially labelled batches need no special loop.

Metrics are accumulated as a *sum-reducible* statistics tensor (a confusion matrix, sums of
squared errors and pixel counts, ...): each data-parallel worker accumulates its shard and the
train loop all-reduces the tensor with SUM before ``compute``. This is what makes e.g. mIoU
"from a confusion matrix over the whole split" and RMSE "pooled over the valid pixels of the
split" exact under DDP.
"""
from __future__ import annotations

import abc
from typing import ClassVar, Dict

import torch
from torch import Tensor


class Task(abc.ABC):
    """Base class of a task plug-in.

    Class attributes every task sets:
        kind: "dense" (per-pixel output at the input resolution, [B, C, H, W]) or "image"
            (one output vector per image, [B, C]).
        primary_metric: the key of ``compute``'s dict used for Delta_m and model selection.
        higher_is_better: direction of ``primary_metric`` (l_i = 0 in survey Eq. 10 when True).
    """

    kind: ClassVar[str] = "dense"
    primary_metric: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True

    def __init__(self, name: str):
        # ``name`` is the task's name in the study ("semseg", "attr_smiling"); the registry
        # name is its type. Subclasses take their own typed keyword arguments after it.
        self.name = name

    @property
    @abc.abstractmethod
    def out_channels(self) -> int:
        """Channels the head must output for this task."""

    @abc.abstractmethod
    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Scalar loss of ``pred`` against ``target`` over the labelled samples given.

        The caller has already selected the samples that carry this task's label; a batch
        with none of them never reaches here.
        """

    @abc.abstractmethod
    def metric_state(self, device: torch.device | str = "cpu") -> Tensor:
        """A zero statistics tensor (float64) to accumulate into."""

    @abc.abstractmethod
    def update_metric(self, state: Tensor, pred: Tensor, target: Tensor) -> None:
        """Add the statistics of one batch to ``state`` in place (no grad)."""

    @abc.abstractmethod
    def compute_metric(self, state: Tensor) -> Dict[str, float]:
        """Metrics of the split from the (all-reduced) statistics; includes ``primary_metric``."""

    def predict(self, pred: Tensor) -> Tensor:
        """Post-process raw outputs into the task's prediction space (e.g. unit normals)."""
        return pred

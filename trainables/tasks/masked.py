"""``MaskedDense``: the shared part of the dense tasks whose targets mark invalid elements.

Depth, dense_l1 (and keypoints), instance_center, normals and edge all read their target the
same way: pred and target must both be [B, C, H, W] (C = ``out_channels``), a task-specific
rule (``valid_mask``) says which target elements or pixels carry a label, and the invalid ones
are replaced by 0 *before* any arithmetic, so no NaN / ignore value reaches the loss or its
gradient. The regression tasks among them also share the masked L1 loss and the float64
difference their metrics accumulate. The same rule, on one sample, is what the data pipeline
reports as ignored (``ignored``).
"""
from __future__ import annotations

import abc
from typing import Tuple

import torch
from torch import Tensor

from trainables.tasks.base import Task


class MaskedDense(Task):
    """A dense task with a validity rule on its targets (see the module docstring)."""

    kind = "dense"

    @abc.abstractmethod
    def valid_mask(self, target: Tensor) -> Tensor:
        """Bool mask of the valid target elements: [B, C, H, W], or [B, 1, H, W] per pixel."""

    def ignored(self, target: Tensor) -> Tensor:
        """The elements of one sample's target [C, H, W] that ``valid_mask`` rejects."""
        return (~self.valid_mask(target[None])[0]).expand_as(target)

    def _valid(self, pred: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
        """(valid mask, target with invalid elements replaced by 0 so no NaN leaks)."""
        c = self.out_channels
        if pred.dim() != 4 or pred.shape[1] != c or target.shape != pred.shape:
            raise ValueError(
                f"{self.name}: pred and target must both be [B, {c}, H, W], "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        valid = self.valid_mask(target)
        return valid, torch.where(valid, target, torch.zeros_like(target))

    def masked_l1(self, pred: Tensor, target: Tensor) -> Tensor:
        """L1 averaged over the valid elements of the batch, sum |pred - gt| / n_valid (a per-pixel
        mask counts each of its C elements); a batch without any gives exactly 0, with a graph."""
        valid, gt = self._valid(pred, target)
        err = torch.where(valid, (pred - gt.to(pred.dtype)).abs(), torch.zeros_like(pred))
        n_valid = valid.sum().clamp_min(1).to(err.dtype)
        per_mask = pred.shape[1] // valid.shape[1]  # elements per mask entry: 1, or C per pixel
        return err.sum() / (n_valid if per_mask == 1 else per_mask * n_valid)

    def masked_diff(self, pred: Tensor, target: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(valid mask, gt in float64, pred - gt in float64 with 0 where invalid), for metrics."""
        valid, gt = self._valid(pred, target)
        gt = gt.double()
        return valid, gt, torch.where(valid, pred.double() - gt, torch.zeros_like(gt))

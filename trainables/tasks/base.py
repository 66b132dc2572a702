"""The task contract: a loss, a split-level metric, its direction - and what the data pipeline
needs to know about a task's targets.

A task sees raw head outputs and the targets of the samples that carry a label for it
(``mask`` selects them), so partially labelled batches need no special loop.

Metrics are accumulated as a *sum-reducible* statistics tensor (a confusion matrix, sums of
squared errors and pixel counts, ...): each data-parallel worker accumulates its shard and the
train loop all-reduces the tensor with SUM before ``compute``. This is what makes e.g. mIoU
"from a confusion matrix over the whole split" and RMSE "pooled over the valid pixels of the
split" exact under DDP.

Target knowledge lives here too, so data code never branches on a task's name: which target
elements carry no label (``ignored``, what ``mtl data check`` reports), and how a target's
*values* change when the image is mirrored, zoomed, rotated or resampled (``hflip``, ``zoom``,
``rotate``, ``resample``). These act on one sample (no batch dimension); the defaults suit label
maps and image-level targets, and tasks whose values are geometric (depth, normals, offsets)
override them.
"""
from __future__ import annotations

import abc
from typing import Callable, ClassVar, Dict, Optional, Tuple

import torch
from torch import Tensor

from trainables.plugins import Configurable

# warp(x, mode): x, a float [C, H, W] map, resampled onto the output grid ("nearest" | "bilinear").
Warp = Callable[[Tensor, str], Tensor]


class Task(Configurable, abc.ABC):
    """Base class of a task plug-in.

    Class attributes every task sets:
        kind: "dense" (per-pixel output at the input resolution, [B, C, H, W]) or "image"
            (one output vector per image, [B, C]).
        primary_metric: the key of ``compute``'s dict used for Delta_m and model selection.
        higher_is_better: direction of ``primary_metric`` (l_i = 0 in survey Eq. 10 when True).
        Params: the frozen dataclass of its keyword arguments (``NoParams`` by default).
    """

    kind: ClassVar[str] = "dense"
    primary_metric: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    plugin_kind: ClassVar[str] = "task"
    # Set on the instance by ``build_tasks`` for a study's auxiliary tasks (trained, not scored).
    auxiliary: bool = False
    # The target value that marks an element without a label (dense tasks; see ``resample``).
    ignore_value: ClassVar[Optional[float]] = None

    def __init__(self, name: Optional[str] = None, params=None, **kwargs):
        """``name`` is the task's name in the study ("semseg", "attr_smiling"; default: the
        registered type); the parameters come as a ``Params`` instance or keyword arguments."""
        self.name = self.plugin_name if name is None else name
        self.params = self.resolve_params(params, kwargs)

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

    # ------------------------------------------------------- one sample's target (no batch dim)
    def pseudo_label(self, pred: Tensor) -> Tensor:
        """A target made from this task's own (detached) prediction, for the task's ``loss``:
        the prediction itself for regression tasks (the default), the hard label for
        classification tasks (argmax, or logit > 0 for binary maps) - MuST's rule (Ghiasi et al.,
        ICCV 2021, Sec. 3.2: hard pseudo-labels for classification and segmentation, the
        teacher's raw output for depth and surface normals). Consistency regularisation compares
        two views through it too."""
        return pred.detach()

    def ignored(self, target: Tensor) -> Tensor:
        """Bool mask, the shape of ``target``, of the elements that carry no label.
        Default: none (an image-level label is whole or absent, see the sample mask)."""
        return torch.zeros_like(target, dtype=torch.bool)

    def hflip(self, target: Tensor) -> Tensor:
        """The target of the left-right mirrored image: dense maps flip their last dimension,
        image-level targets are unchanged. Tasks whose values have an x component override."""
        return target.flip(-1) if self.kind == "dense" else target

    def zoom(self, target: Tensor, s: float, factors: Tuple[float, float]) -> Tensor:
        """The values of a map that was enlarged ``s`` times (exact factors (fy, fx) along
        height and width) by a zoom-crop; the map itself is already cropped and resized.
        Default: unchanged (labels, normals)."""
        return target

    def rotate(self, target: Tensor, angle: float) -> Tensor:
        """The values of a map whose image was rotated by ``angle`` degrees (counter-clockwise
        on screen); the map itself is already resampled. Default: unchanged (values that do not
        depend on the image's orientation)."""
        return target

    def resample(self, target: Tensor, warp: Warp, inside: Optional[Tensor] = None) -> Tensor:
        """The target on a new pixel grid (resize, rotation, scaling): ``warp(x, mode)``
        resamples a float [C, H, W] map; ``inside`` (bool [H', W'], optional) marks output pixels
        that come from inside the source image, the others get ``ignore_value``.

        Default: image-level targets unchanged; dense maps nearest, so labels and invalid
        markers are copied, never blended; the dtype and shape ([H, W] or [C, H, W]) are kept.
        """
        if self.kind != "dense":
            return target
        x = target[None] if target.dim() == 2 else target
        y = warp(x.float(), "nearest")
        if inside is not None:
            y = torch.where(inside, y, torch.tensor(self.ignore_value, dtype=y.dtype))
        y = y.to(target.dtype)
        return y[0] if target.dim() == 2 else y

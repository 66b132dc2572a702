"""What task-grouping searches measure in a trained network, on a fixed set of training images.

``stage_features``: each backbone stage's output for K images (Branched Multi-Task Networks
compare tasks by the representations their single-task networks build at every candidate
sharing location); ``sample_errors``: each task's loss on each of K images (FAFS calls an example
difficult for a task when its error is above the task's mean). The images are a seeded choice from
the training split (``pick``), served without augmentation, never from val or test.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from trainables.tasks.base import Task


def pick(num_available: int, num_images: int, seed: int) -> List[int]:
    """``num_images`` distinct indices of the training split (all of them if fewer), sorted."""
    k = min(num_images, num_available)
    return sorted(np.random.default_rng(seed).choice(num_available, size=k, replace=False).tolist())


def _batches(dataset, indices: Sequence[int], device: torch.device, batch_size: int):
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False)
    for batch in loader:
        yield {k: (v.to(device) if isinstance(v, torch.Tensor) else {t: x.to(device) for t, x in v.items()})
               for k, v in batch.items()}


@torch.no_grad()
def stage_features(backbone: nn.Module, dataset, indices: Sequence[int], device: torch.device,
                   pool: Optional[int] = 8, batch_size: int = 16) -> List[np.ndarray]:
    """Per backbone stage, the features of the images as rows [K, F] (float32).

    Each stage's map is average-pooled to ``pool`` x ``pool`` first (None: full resolution), so
    that K images of a full-size ResNet-50 fit in memory: [K, C * pool^2] per stage.
    """
    was_training = backbone.training
    backbone.eval()
    rows: List[List[np.ndarray]] = []
    for batch in _batches(dataset, indices, device, batch_size):
        for d, f in enumerate(backbone.features(batch["image"])):
            if pool is not None:
                f = F.adaptive_avg_pool2d(f, pool)
            if len(rows) <= d:
                rows.append([])
            rows[d].append(f.flatten(1).float().cpu().numpy())
    backbone.train(was_training)
    return [np.concatenate(r) for r in rows]


@torch.no_grad()
def sample_errors(model: nn.Module, tasks: Mapping[str, Task], dataset, indices: Sequence[int],
                  device: torch.device, batch_size: int = 16) -> np.ndarray:
    """[K, T]: each task's loss on each image alone (NaN where the image has no label for it)."""
    was_training = model.training
    model.eval()
    out_rows: List[np.ndarray] = []
    names = list(tasks)
    for batch in _batches(dataset, indices, device, batch_size):
        out = model(batch["image"])
        errors = np.full((len(batch["image"]), len(names)), np.nan)
        for j, name in enumerate(names):
            for i in range(len(batch["image"])):
                if bool(batch["mask"][name][i]):
                    errors[i, j] = float(tasks[name].loss(out[name][i:i + 1], batch["targets"][name][i:i + 1]))
        out_rows.append(errors)
    model.train(was_training)
    return np.concatenate(out_rows)




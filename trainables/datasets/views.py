"""Extra views of each training image for regularisers that compare them (consistency).

``Views(dataset, views)`` adds ``"views"``: a [views - 1, C, H, W] tensor of photometric
re-augmentations of the item's (already augmented) ``image``. They keep its geometry, so every
view shares the item's targets and label masks pixel for pixel. Each view draws, from torch's
global generator (seeded per (seed, rank, epoch) by the train loop, so a resumed run repeats
them):

    brightness  x + b        b ~ U(-0.2, 0.2)     (in the normalised image's units)
    contrast    m + c (x - m), c ~ U(0.7, 1.3), m the view's per-channel mean
    noise       + N(0, 0.05^2) per pixel

the weak photometric perturbations of consistency-based semi-supervised learning (Laine & Aila,
ICLR 2017; Sohn et al., NeurIPS 2020, "weak" augmentation without the flip, which would need
the labels flipped too).
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor


def photometric(image: Tensor) -> Tensor:
    """One random photometric re-augmentation of ``image`` [C, H, W] (see the module docstring)."""
    c = image.shape[0]
    brightness = (torch.rand(c, 1, 1) * 0.4 - 0.2).to(image.dtype)
    contrast = (torch.rand(1) * 0.6 + 0.7).to(image.dtype)
    mean = image.mean(dim=(1, 2), keepdim=True)
    out = mean + contrast * (image - mean) + brightness
    return out + 0.05 * torch.randn(image.shape, dtype=image.dtype)


class Views(torch.utils.data.Dataset):
    """``dataset`` whose items also carry ``views``: ``views - 1`` re-augmentations of ``image``."""

    def __init__(self, dataset, views: int):
        if views < 2:
            raise ValueError(f"Views: needs views >= 2 (the image itself is view 0), got {views}")
        self.dataset = dataset
        self.views = int(views)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        item = dict(self.dataset[i])
        item["views"] = torch.stack([photometric(item["image"]) for _ in range(self.views - 1)])
        return item

    def __getattr__(self, name: str):  # source_indices etc. of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

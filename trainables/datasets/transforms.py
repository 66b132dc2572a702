"""Image normalisation, resizing and the random augmentations the loaders share.

Geometry is split the same way everywhere: these helpers move *pixels* (crop, resize, mirror),
and each target's task (``trainables.tasks.base.Task``) fixes the *values* the geometry changes
(``zoom``: depth / s, offsets * the zoom factors; ``hflip``: the x of normals and offsets), so no
loader names a task to augment it. Random draws use torch's global generator: it follows
``torch.manual_seed`` and a DataLoader's per-worker seeds.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

import numpy as np
import torch

from trainables.tasks.base import Task

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_image(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """HxWx3 (uint8 or float in [0, 1]) -> normalised float32 [3, H, W]."""
    x = torch.from_numpy(image.astype(np.float32))  # a copy: ``image`` may be a read-only view
    if image.dtype == np.uint8:
        x = x / 255.0
    return standardize(x.permute(2, 0, 1), mean, std)


def standardize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[3, H, W] -> (x - mean) / std per channel."""
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def unit_normals(n: torch.Tensor) -> torch.Tensor:
    """[3, H, W] normals renormalised to unit length; zero vectors (invalid) stay zero."""
    norm = n.norm(dim=0, keepdim=True)
    return torch.where(norm > 0, n / norm.clamp_min(1e-12), torch.zeros_like(n))


def resize_map(t: torch.Tensor, size: Sequence[int], mode: str = "nearest") -> torch.Tensor:
    """Resize a [H, W] or [C, H, W] tensor to ``size`` = (H', W'), keeping its dtype.

    "nearest" takes the source pixel whose centre is nearest (torch's "nearest-exact", as PIL):
    labels, invalid markers (0, 255, NaN) and integer ids are copied, never blended.
    "bilinear" uses pixel-centre alignment (align_corners=False), antialiased when shrinking.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(t.shape[-2:]) == size:
        return t
    x = t[None, None] if t.dim() == 2 else t[None]
    dtype = x.dtype
    x = x.double() if dtype in (torch.int32, torch.int64) else x.float()
    if mode == "nearest":
        y = torch.nn.functional.interpolate(x, size=size, mode="nearest-exact")
    elif mode == "bilinear":
        shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    else:
        raise ValueError(f"resize_map: mode must be 'nearest' or 'bilinear', got {mode!r}")
    y = y.to(dtype)
    return y[0, 0] if t.dim() == 2 else y[0]


def random_scale_crop(image: torch.Tensor, maps: Dict[str, torch.Tensor], scales: Sequence[float]):
    """Zoom into a random window, as the survey's and MTAN's random scaling.

    A scale s is drawn from ``scales`` and a window of int(H / s) x int(W / s) at a uniformly
    random position is resized back to H x W (image bilinear, every dense map nearest), so the
    output is the input enlarged s times and cropped.

    Returns (image, maps, s, (fy, fx)); fy = H / h and fx = W / w are the exact zoom factors
    that ``Task.zoom`` rescales values by.
    """
    s = float(scales[int(torch.randint(len(scales), ()))]) if len(scales) > 1 else float(scales[0])
    H, W = image.shape[-2:]
    h, w = max(1, int(H / s)), max(1, int(W / s))
    if (h, w) == (H, W):
        return image, dict(maps), s, (1.0, 1.0)
    i = int(torch.randint(H - h + 1, ()))
    j = int(torch.randint(W - w + 1, ()))
    image = resize_map(image[:, i:i + h, j:j + w], (H, W), "bilinear")
    out = {k: resize_map(m[..., i:i + h, j:j + w], (H, W), "nearest") for k, m in maps.items()}
    return image, out, s, (H / h, W / w)


def hflip(image: torch.Tensor, targets: Mapping[str, torch.Tensor], tasks: Mapping[str, Task]):
    """The left-right mirror of ``image`` [3, H, W] and of every target (``Task.hflip``)."""
    return image.flip(-1), {k: tasks[k].hflip(t) for k, t in targets.items()}


def random_hflip(image: torch.Tensor, targets: Mapping[str, torch.Tensor], tasks: Mapping[str, Task]):
    """``hflip`` with probability 1/2 (one draw of torch's generator); returns (image, targets)."""
    if bool(torch.rand(()) < 0.5):
        return hflip(image, targets, tasks)
    return image, dict(targets)


def zoom_and_flip(image: torch.Tensor, targets: Mapping[str, torch.Tensor], tasks: Mapping[str, Task],
                  scales: Sequence[float], flip: bool) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The random zoom-crop of ``random_scale_crop`` on the image and the dense targets (each
    task's ``zoom`` fixes the values), then, if ``flip``, ``random_hflip``."""
    dense = {k: t for k, t in targets.items() if tasks[k].kind == "dense"}
    image, zoomed, s, factors = random_scale_crop(image, dense, scales)
    if s != 1.0:
        zoomed = {k: tasks[k].zoom(t, s, factors) for k, t in zoomed.items()}
    targets = {**targets, **zoomed}
    if flip:
        image, targets = random_hflip(image, targets, tasks)
    return image, targets


def pad_random_crop(image: torch.Tensor, padding: int) -> torch.Tensor:
    """The "random crop with padding" of image classification (e.g. CIFAR's 32 + pad 4): pad
    [C, H, W] with ``padding`` zeros on every side and cut a random H x W window. ``padding``
    0 returns the image."""
    if padding <= 0:
        return image
    h, w = image.shape[-2:]
    i, j = (int(v) for v in torch.randint(2 * padding + 1, (2,)))
    return torch.nn.functional.pad(image, (padding,) * 4)[..., i:i + h, j:j + w]

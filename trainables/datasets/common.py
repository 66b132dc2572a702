"""Shared pieces of the real-dataset loaders: file readers that name the file on failure,
the seeded val hold-out, image and augmentation helpers, and the ``mtl data check`` summary
(the loaders' shared class is ``trainables.datasets.disk.DiskDataset``).

Every reader raises ``DataCheckError`` with the path and what was expected, so a corrupt or
missing file is reported as one line before any expensive work starts.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataCheckError(ValueError):
    """A dataset file or folder is missing, unreadable or out of range."""

    def __init__(self, path: str, expected: str):
        super().__init__(f"{path}: {expected}")
        self.path = path
        self.expected = expected


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise DataCheckError(path, f"missing folder ({what})")
    return path


def read_id_list(path: str) -> List[str]:
    """One id per line (blank lines skipped)."""
    try:
        with open(path) as fh:
            ids = [line.strip() for line in fh if line.strip()]
    except OSError as err:
        raise DataCheckError(path, f"cannot read id list ({err.strerror})") from None
    if not ids:
        raise DataCheckError(path, "id list is empty")
    return ids


def read_npy(path: str, shape: Optional[Sequence[Optional[int]]] = None) -> np.ndarray:
    """A .npy array; ``shape`` entries of None match any size."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataCheckError(path, f"not a readable .npy array ({err})") from None
    if shape is not None and (array.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape))):
        raise DataCheckError(path, f"array of shape {tuple(shape)} expected, found {array.shape}")
    return array


def read_image(path: str, mode: str = "RGB") -> np.ndarray:
    """An image file (jpg/png) as a uint8 array (HxWx3 for RGB, HxW for "L"/"P"/"I")."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if mode == "raw":
                return np.array(img)
            return np.array(img.convert(mode))
    except (OSError, ValueError) as err:
        raise DataCheckError(path, f"not a readable image ({err})") from None


def read_mat(path: str, key: str) -> np.ndarray:
    """Variable ``key`` of a MATLAB .mat file."""
    from scipy.io import loadmat

    try:
        data = loadmat(path)
    except (OSError, ValueError, NotImplementedError) as err:
        raise DataCheckError(path, f"not a readable .mat file ({err})") from None
    if key not in data:
        raise DataCheckError(path, f".mat file without variable {key!r} (has {sorted(k for k in data if not k.startswith('__'))})")
    return data[key]


def check_range(path: str, array: np.ndarray, allowed: str, ok: np.ndarray | bool) -> None:
    """Raise naming ``path`` unless every element satisfies ``ok``."""
    if not np.all(ok):
        bad = array[~np.asarray(ok)] if np.ndim(ok) else array
        raise DataCheckError(path, f"values must be {allowed}; found e.g. {bad.flat[0]!r}")


def holdout_split(ids: Sequence, split: str, fraction: float = 0.1, seed: int = 0) -> list:
    """Carve a validation set out of a training list (seeded; disjoint, stable order).

    ``split`` "train" returns the remaining ids, "val" the held-out ones. Datasets that ship
    only train/val use this for model selection and serve their official val as "test".
    """
    if split not in ("train", "val"):
        raise ValueError(f"holdout_split: split must be 'train' or 'val', got {split!r}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = max(1, int(round(fraction * len(ids)))) if len(ids) > 1 else 0
    chosen = sorted(order[:n_val]) if split == "val" else sorted(order[n_val:])
    return [ids[i] for i in chosen]


def normalize_image(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """HxWx3 (uint8 or float in [0, 1]) -> normalised float32 [3, H, W]."""
    x = torch.from_numpy(np.ascontiguousarray(image)).float()
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


def summarize(make: Callable[[str], torch.utils.data.Dataset], splits: Iterable[str], max_samples: int = 8) -> Dict:
    """The JSON summary of ``mtl data check``: samples per split and, per task, the shape,
    dtype, value range and fraction of ignored pixels over the first ``max_samples`` items.

    ``make(split)`` builds the dataset of a split (no augmentation). Ignored pixels: a task's
    ``ignore`` rule is the dataset's ``IGNORE_RULES`` entry (semseg 255 / -1, depth 0,
    normals all-zero); tasks without one report 0.
    """
    summary: Dict = {"splits": {}, "tasks": {}}
    for split in splits:
        ds = make(split)
        summary["splits"][split] = len(ds)
        rules = getattr(ds, "IGNORE_RULES", DEFAULT_IGNORE_RULES)
        for i in range(min(max_samples, len(ds))):
            item = ds[i]
            image = item["image"]
            entry = summary["tasks"].setdefault("image", _stats_entry(image))
            _update_stats(entry, image, torch.zeros_like(image, dtype=torch.bool))
            for task, target in item["targets"].items():
                if not bool(item["mask"][task]):
                    continue
                rule = rules.get(task)
                ignored = rule(target) if rule else torch.zeros_like(target, dtype=torch.bool)
                entry = summary["tasks"].setdefault(task, _stats_entry(target))
                _update_stats(entry, target, ignored)
    for entry in summary["tasks"].values():
        entry["ignored_fraction"] = entry.pop("_ignored") / max(1, entry.pop("_count"))
    return summary


def _stats_entry(t: torch.Tensor) -> Dict:
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "min": None, "max": None,
            "_ignored": 0, "_count": 0}


def _update_stats(entry: Dict, t: torch.Tensor, ignored: torch.Tensor) -> None:
    valid = t[~ignored] if ignored.shape == t.shape else t.flatten()
    if valid.numel():
        lo, hi = float(valid.min()), float(valid.max())
        entry["min"] = lo if entry["min"] is None else min(entry["min"], lo)
        entry["max"] = hi if entry["max"] is None else max(entry["max"], hi)
    entry["_ignored"] += int(ignored.sum())
    entry["_count"] += int(ignored.numel())


DEFAULT_IGNORE_RULES = {
    "semseg": lambda t: t == 255,
    "human_parts": lambda t: t == 255,
    "depth": lambda t: ~(t > 0),
    "normals": lambda t: (t == 0).all(dim=0, keepdim=True).expand_as(t),
    "edge": lambda t: t == 255,
}


# ---------------------------------------------------------------- helpers of the real-data loaders


def params_from_kwargs(cls, dataset: str, params: Mapping[str, object]):
    """Build the frozen params dataclass ``cls``; an unknown name is a ValueError listing the valid."""
    import dataclasses

    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"{dataset}: unknown parameter(s) {', '.join(unknown)}; "
                         f"valid parameters: {', '.join(valid)}")
    return cls(**params)


def as_size(dataset: str, field: str, value, allow_none: bool = True):
    """An (H, W) pair of positive ints (lists from YAML become tuples), or None if allowed."""
    if value is None and allow_none:
        return None
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{dataset}: {field} must be [H, W], two positive ints"
                     f"{' (or null)' if allow_none else ''}; got {value!r}")


def check_common_params(dataset: str, p) -> None:
    """Validate the fields every real-data loader shares: val_fraction, seed, max_samples,
    scales, flip (and normalise list values to tuples on the frozen dataclass ``p``)."""
    v = p.val_fraction
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise ValueError(f"{dataset}: val_fraction must be a float in (0, 1), got {v!r}")
    if isinstance(p.seed, bool) or not isinstance(p.seed, (int, np.integer)) or p.seed < 0:
        raise ValueError(f"{dataset}: seed must be a non-negative int, got {p.seed!r}")
    m = p.max_samples
    if m is not None and (isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1):
        raise ValueError(f"{dataset}: max_samples must be a positive int or null, got {m!r}")
    s = p.scales
    if (not isinstance(s, (list, tuple)) or not s
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 1 <= x <= 4 for x in s)):
        raise ValueError(f"{dataset}: scales must be a non-empty list of zoom factors in [1, 4], got {s!r}")
    object.__setattr__(p, "scales", tuple(float(x) for x in s))
    if not isinstance(p.flip, bool):
        raise ValueError(f"{dataset}: flip must be a bool, got {p.flip!r}")


def decode_sample(n: int, limit: Optional[int]) -> List[int]:
    """Indices of the samples a data check decodes: all of them when ``n <= limit`` (or
    ``limit`` is None), else ``limit`` evenly spaced ones, the first and the last included."""
    if limit is None or n <= limit:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, limit)})


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise DataCheckError(path, f"missing file ({what})")
    return path


def thin(mask: np.ndarray) -> np.ndarray:
    """Zhang & Suen's thinning ("A fast parallel algorithm for thinning digital patterns",
    CACM 1984): peel boundary pixels in two alternating sub-iterations until none changes."""
    img = np.pad(mask.astype(np.uint8), 1)
    changed = True
    while changed:
        changed = False
        for first in (True, False):
            c = img[1:-1, 1:-1]  # a view: deletions apply in place
            ring = [img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:],  # P2..P5
                    img[2:, 1:-1], img[2:, :-2], img[1:-1, :-2], img[:-2, :-2]]  # P6..P9
            p2, p4, p6, p8 = ring[0], ring[2], ring[4], ring[6]
            b = sum(r.astype(np.int32) for r in ring)
            a = sum(((ring[i] == 0) & (ring[(i + 1) % 8] == 1)).astype(np.int32) for i in range(8))
            c1, c2 = (p2 & p4 & p6, p4 & p6 & p8) if first else (p2 & p4 & p8, p2 & p6 & p8)
            kill = (c == 1) & (b >= 2) & (b <= 6) & (a == 1) & (c1 == 0) & (c2 == 0)
            if kill.any():
                c[kill] = 0
                changed = True
    return img[1:-1, 1:-1].astype(bool)


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
    random position is resized back to H x W (image bilinear, every map nearest), so the
    output is the input enlarged s times and cropped. Draws use torch's global generator (it
    follows ``torch.manual_seed`` and a DataLoader's per-worker seeds).

    Returns (image, maps, s, (fy, fx)); fy = H / h and fx = W / w are the exact zoom factors.
    The caller rescales values: metric depth / s (the scene comes s times closer), disparity
    * s, pixel offsets * (fy, fx). Normals and labels keep their values.
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


def hflip(image: torch.Tensor, maps: Dict[str, torch.Tensor]):
    """Mirror the image and every dense map left-right (callers negate x components)."""
    return image.flip(-1), {k: m.flip(-1) for k, m in maps.items()}


def zoom_and_flip(image: torch.Tensor, targets: Dict[str, torch.Tensor], scales: Sequence[float], flip: bool,
                  disparity: bool = False):
    """The random zoom-crop of ``random_scale_crop``, then (if ``flip``) a horizontal flip with
    probability 1/2, fixing the values the geometry changes: "depth" is divided by the zoom s
    (metric: the scene comes s times closer) or, with ``disparity``, multiplied by it;
    "instance_center" offsets are multiplied by the zoom factors; a flip negates the x
    component of "normals" and the dx of "instance_center". Returns (image, targets)."""
    image, targets, s, (fy, fx) = random_scale_crop(image, targets, scales)
    if s != 1.0:
        if "depth" in targets:
            targets["depth"] = targets["depth"] * s if disparity else targets["depth"] / s
        if "instance_center" in targets:
            targets["instance_center"] = targets["instance_center"] * torch.tensor([fy, fx]).view(2, 1, 1)
    if flip and bool(torch.rand(()) < 0.5):
        image, targets = hflip(image, targets)
        if "normals" in targets:
            targets["normals"] = targets["normals"] * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
        if "instance_center" in targets:
            targets["instance_center"] = targets["instance_center"] * torch.tensor([1.0, -1.0]).view(2, 1, 1)
    return image, targets


def pad_random_crop(image: torch.Tensor, padding: int) -> torch.Tensor:
    """The "random crop with padding" of image classification (e.g. CIFAR's 32 + pad 4): pad
    [C, H, W] with ``padding`` zeros on every side and cut a random H x W window (torch's
    global generator, like ``random_scale_crop``). ``padding`` 0 returns the image."""
    if padding <= 0:
        return image
    h, w = image.shape[-2:]
    i, j = (int(v) for v in torch.randint(2 * padding + 1, (2,)))
    return torch.nn.functional.pad(image, (padding,) * 4)[..., i:i + h, j:j + w]

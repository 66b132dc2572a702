"""Shared pieces of the real-dataset loaders: file readers that name the file on failure,
the seeded val hold-out, augmentation helpers, and the ``mtl data check`` summary.

Every reader raises ``DataCheckError`` with the path and what was expected, so a corrupt or
missing file is reported as one line before any expensive work starts.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch


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
    x = x.permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


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

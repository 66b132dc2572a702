"""File readers of the real-dataset loaders: every failure is a ``DataCheckError`` naming the file.

A missing folder, an unreadable or corrupt file and a value out of range are each reported as
one line "<path>: <what was expected>" - by ``mtl data check`` and by ``prepare`` before any
expensive work starts, instead of a stack trace from deep inside a DataLoader worker.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np


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


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise DataCheckError(path, f"missing file ({what})")
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


def read_class_index(path: str, num_classes: int, fix: str) -> int:
    """An image-level label: a .npy holding one integral number in 0..num_classes-1. A missing
    file is reported with ``fix`` (how to provide it)."""
    if not os.path.isfile(path):
        raise DataCheckError(path, f"missing file ({fix})")
    a = read_npy(path)
    if a.size != 1 or not np.issubdtype(a.dtype, np.number):
        raise DataCheckError(path, f"one number expected, found {a.dtype} of shape {a.shape}")
    v = a.reshape(-1)[0].item()
    if not (np.isfinite(v) and v == round(v) and 0 <= v < num_classes):
        raise DataCheckError(path, f"value must be an integer in 0..{num_classes - 1}, found {v!r}")
    return int(v)


def read_image(path: str, mode: str = "RGB") -> np.ndarray:
    """An image file (jpg/png) as an array: HxWx3 uint8 for "RGB", HxW for "L"; "raw" keeps
    the file's own mode and dtype (label pngs, 16-bit disparity)."""
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


def decode_sample(n: int, limit: Optional[int]) -> List[int]:
    """Indices of the samples a data check decodes: all of them when ``n <= limit`` (or
    ``limit`` is None), else ``limit`` evenly spaced ones, the first and the last included."""
    if limit is None or n <= limit:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, limit)})

"""File readers of the real-dataset loaders: every failure is a ``DataCheckError`` naming the file.

A missing folder, an unreadable or corrupt file and a value out of range are each reported as
one line "<path>: <what was expected>" - by ``mtl data check`` and by ``prepare`` before any
expensive work starts, instead of a stack trace from deep inside a DataLoader worker.

``require_file`` also checks a file's header without decoding it (``check_header``): the loaders
call it for every file of every split while ``prepare`` decodes only the first and the last
sample of each list, so an empty, truncated or mislabelled file in the middle of a split is named
before a study starts. Bad pixel values inside an intact file are found only by decoding (``mtl
data check`` decodes up to ``CHECK_DECODE`` samples per list).
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
    """``path`` if it is a file whose header passes ``check_header``."""
    if not os.path.isfile(path):
        raise DataCheckError(path, f"missing file ({what})")
    check_header(path)
    return path


_PNG_SIGNATURE, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC end every PNG
_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"  # SOI + a marker; EOI
_JPEG_TAIL = 1024  # EOI may be followed by padding: look for it in the last KiB


def check_header(path: str) -> None:
    """Cheap checks of a .npy, .png or .jpg / .jpeg file, reading its first and last bytes only:
    not empty; a .npy's magic and header readable, no Python objects, and at least the data bytes
    its header declares; an image (told by its signature, whatever its extension) a PNG ending
    with the IEND chunk, or a JPEG with an end-of-image marker in its last KiB (JPEG's
    entropy-coded data never holds one). Other files are not looked into. Raises
    ``DataCheckError`` naming the file."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".png", ".jpg", ".jpeg"):
        return
    kind = ".npy array" if ext == ".npy" else "image"
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise DataCheckError(path, f"not a readable {kind} (empty file)")
        with open(path, "rb") as fh:
            if ext == ".npy":
                _check_npy(path, fh, size)
                return
            head = fh.read(8)
            fh.seek(max(0, size - _JPEG_TAIL))
            tail = fh.read()
    except OSError as err:
        raise DataCheckError(path, f"not a readable {kind} ({err.strerror})") from None
    if head == _PNG_SIGNATURE:
        if not tail.endswith(_PNG_END):
            raise DataCheckError(path, "not a readable image (truncated PNG: it does not end with the IEND chunk)")
    elif head.startswith(_JPEG_START):
        if _JPEG_END not in tail:
            raise DataCheckError(path, "not a readable image (truncated JPEG: no end-of-image marker)")
    else:
        raise DataCheckError(path, "not a readable image (neither a PNG nor a JPEG signature)")


def _check_npy(path: str, fh, size: int) -> None:
    try:
        major, _ = np.lib.format.read_magic(fh)
        # format 3.0 differs from 2.0 only in the header's text encoding (utf-8)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
    except ValueError as err:
        raise DataCheckError(path, f"not a readable .npy array ({err})") from None
    if dtype.hasobject:
        raise DataCheckError(path, f"not a readable .npy array (it holds Python objects, dtype {dtype}; "
                                   "numbers expected)")
    need, have = int(np.prod(shape)) * dtype.itemsize, size - fh.tell()
    if have < need:
        raise DataCheckError(path, f"not a readable .npy array (truncated: its header declares {dtype} {shape}, "
                                   f"{need} data bytes; the file holds {have})")


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

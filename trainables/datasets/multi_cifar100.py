"""Multi-task CIFAR-100: 20 five-way tasks, one per superclass (Auto-Lambda's benchmark).

Liu, Johns and Davison, "Auto-Lambda: Disentangling Dynamic Task Relationships", TMLR 2022:
CIFAR-100 (Krizhevsky, 2009) split into 20 tasks, task k classifying the 5 fine classes of
superclass k; every image belongs to exactly one task. Read from the official python files
in torchvision's layout (pickles with byte keys, read with ``encoding="bytes"``):

    <root>/cifar-100-python/train   b'data' uint8 [50000, 3072] (R, G, B planes of 32 x 32),
    <root>/cifar-100-python/test    b'fine_labels' [N] in 0..99, b'coarse_labels' [N] in 0..19
    <root>/cifar-100-python/meta    b'fine_label_names' (100), b'coarse_label_names' (20)

Tasks: "task_00" .. "task_19" = superclass 0 .. 19, each Plugin("scene", {"num_classes": 5})
(image-level cross-entropy, top-1 accuracy - ``scene`` is the repository's generic image
classifier). The fine -> (task, class) mapping: task = the image's coarse label; class = the
rank of its fine label among the sorted fine ids of that superclass (e.g. fine ids 4, 30, 55,
72, 95 of superclass 0 become classes 0..4). It is derived from the file being read, which
must hold exactly 5 fine ids per superclass and one superclass per fine id. A sample's target
is that class with mask True for its own task, and 0 with mask False for the 19 others, so a
batch mixes tasks and each task's loss sees only its images (Auto-Lambda instead draws one
batch per task).

Splits: "train" / "val" = seeded hold-out of the official train file (``val_fraction``),
"test" = the official test file. Images: CIFAR-100 mean / std. Augmentation
(``augment=True``): random 32 x 32 crop of the image zero-padded by 4 and a horizontal flip.
Default batch sizes (32, 64, 128) are our choice (the survey grid has none for this set).

Safe loading: the files are read by a restricted unpickler, never ``pickle.load``. A pickle
can name any importable callable and have it called (a planted file would run code), so only
what the official files hold is resolved: dicts, lists, bytes / str and ints (pickle opcodes,
no import) and numpy arrays, i.e. the globals ``numpy.core.multiarray._reconstruct`` (numpy 1
and the Python 2 files; ``numpy._core.multiarray`` under numpy 2), ``numpy.ndarray`` and
``numpy.dtype``, plus ``numpy._core.numeric._frombuffer`` of files re-saved with pickle
protocol 5. Any other global is refused in one line naming the file and the global (so is a
file re-saved by Python 3 with protocol 2, whose bytes go through ``_codecs.encode``).
"""
from __future__ import annotations

import functools
import importlib
import os
import pickle
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from trainables.datasets import readers
from trainables.datasets.base import DatasetInfo
from trainables.datasets.disk import DiskDataset
from trainables.datasets.params import HoldoutParams
from trainables.datasets.transforms import pad_random_crop, random_hflip, standardize
from trainables.plugins import Plugin
from trainables.registry import register_dataset

N_TASKS, N_WAY, N_FINE = 20, 5, 100
TASK_NAMES = tuple(f"task_{k:02d}" for k in range(N_TASKS))
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class MultiCifar100Params(HoldoutParams):
    """Parameters of the ``multi_cifar100`` loader (besides ``HoldoutParams``': max_samples,
    flip, val_fraction, seed - the seeded hold-out of the official train file as "val").

    Attributes:
        crop_padding: zero padding of the random 32 x 32 crop when augmenting (0 = no crop).
    """

    crop_padding: int = 4
    dataset: ClassVar[str] = "multi_cifar100"

    def __post_init__(self) -> None:
        super().__post_init__()
        c = self.crop_padding
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ValueError(f"multi_cifar100: crop_padding must be an int >= 0, got {c!r}")


# (module, name) a CIFAR pickle may name -> (its module under numpy 2, under numpy 1, its name)
_ALLOWED = {
    **dict.fromkeys([("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")],
                    ("numpy._core.multiarray", "numpy.core.multiarray", "_reconstruct")),
    **dict.fromkeys([("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")],
                    ("numpy._core.numeric", "numpy.core.numeric", "_frombuffer")),
    ("numpy", "ndarray"): ("numpy", "numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "numpy", "dtype"),
}


class _CifarUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals of ``_ALLOWED`` (see the docstring)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a CIFAR-100 file holds only dicts, "
                                         "lists, bytes and numpy arrays")
        current, legacy, attr = _ALLOWED[module, name]
        try:
            return getattr(importlib.import_module(current), attr)
        except ImportError:  # numpy 1 has no numpy._core
            return getattr(importlib.import_module(legacy), attr)


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            data = _CifarUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise readers.DataCheckError(path, "missing file (CIFAR-100 python version)") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise readers.DataCheckError(path, f"not a readable CIFAR-100 pickle ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise readers.DataCheckError(path, f"a pickled dict expected, found {type(data).__name__}")
    return data


def task_mapping(fine: np.ndarray, coarse: np.ndarray, path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(task of each fine id, class of each fine id), both int64 [100] (see the docstring)."""
    pairs = np.unique(np.stack([fine, coarse], 1), axis=0)
    task, cls = np.full(N_FINE, -1, np.int64), np.full(N_FINE, -1, np.int64)
    for f, c in pairs:
        if task[f] >= 0:
            raise readers.DataCheckError(path, f"one superclass per fine label expected; fine {f} has {task[f]} and {c}")
        task[f] = c
    for c in range(N_TASKS):
        members = np.flatnonzero(task == c)  # sorted fine ids
        if len(members) != N_WAY:
            raise readers.DataCheckError(path, f"{N_WAY} fine labels per superclass expected; superclass {c} has "
                                              f"{len(members)} ({members.tolist()})")
        cls[members] = np.arange(N_WAY)
    return task, cls


@functools.lru_cache(maxsize=2)
def read_file(path: str, stamp: int) -> Dict[str, np.ndarray]:
    """A train / test file as {"images": uint8 [N, 32, 32, 3], "task", "cls": int64 [N]}, with
    format checks. ``stamp`` (the mtime) keys the cache shared by the train and val splits."""
    data = _unpickle(path)
    missing = [k for k in (b"data", b"fine_labels", b"coarse_labels") if k not in data]
    if missing:
        raise readers.DataCheckError(path, f"keys b'data', b'fine_labels', b'coarse_labels' expected; missing {missing}")
    x = np.asarray(data[b"data"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or not len(x):
        raise readers.DataCheckError(path, f"b'data' uint8 [N, 3072] expected, found {x.dtype} {x.shape}")
    labels = {}
    for key, hi in ((b"fine_labels", N_FINE), (b"coarse_labels", N_TASKS)):
        a = np.asarray(data[key])
        if a.shape != (len(x),) or not np.issubdtype(a.dtype, np.integer):
            raise readers.DataCheckError(path, f"{key!r}: {len(x)} integer labels expected, found {a.dtype} {a.shape}")
        readers.check_range(path, a, f"{key.decode()} in 0..{hi - 1}", (a >= 0) & (a < hi))
        labels[key] = a.astype(np.int64)
    task, cls = task_mapping(labels[b"fine_labels"], labels[b"coarse_labels"], path)
    fine = labels[b"fine_labels"]
    return {"images": x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), "task": task[fine], "cls": cls[fine]}


def load(root: str, name: str) -> Dict[str, np.ndarray]:
    base = readers.require_dir(os.path.join(root, "cifar-100-python"), "CIFAR-100 folder <root>/cifar-100-python")
    path = readers.require_file(os.path.join(base, name), f"CIFAR-100 {name} file")
    return read_file(path, os.stat(path).st_mtime_ns)


def verify(root: str, p: Optional[MultiCifar100Params] = None, decode: Optional[int] = None) -> Dict[str, str]:
    """Both data files (decoded whole, whatever ``decode``; ``p`` changes nothing) and the meta
    file; returns task -> superclass name."""
    for name in ("train", "test"):
        load(root, name)
    path = os.path.join(root, "cifar-100-python", "meta")
    meta = _unpickle(path)
    fine, coarse = (list(meta.get(k, [])) for k in (b"fine_label_names", b"coarse_label_names"))
    if len(fine) != N_FINE or len(coarse) != N_TASKS:
        raise readers.DataCheckError(path, f"100 b'fine_label_names' and 20 b'coarse_label_names' expected, "
                                          f"found {len(fine)} and {len(coarse)}")
    return {t: c.decode() if isinstance(c, bytes) else str(c) for t, c in zip(TASK_NAMES, coarse)}


@register_dataset("multi_cifar100")
class MultiCifar100(DiskDataset):
    """Multi-task CIFAR-100: 20 five-way superclass tasks, one labelled task per image.

    Args:
        root: the folder holding ``cifar-100-python/`` (torchvision's ``root``).
        split: "train" / "val" (seeded hold-out of the train file) or "test".
        tasks: a subset of TASK_NAMES.
        augment: random padded crops and horizontal flips.
        **params: MultiCifar100Params fields.
    """

    NAME, TASK_NAMES, Params = "multi_cifar100", TASK_NAMES, MultiCifar100Params
    ROOT = "the folder holding cifar-100-python/"
    ROOT_HINTS = dict.fromkeys(("prepare", "check", "init"), "(--data-root / dataset.root)")
    HOLDOUT = ("train", "test")  # the official files
    PREPARE_DECODE = CHECK_DECODE = None  # the files are small: always decoded whole
    CHECK_KEY = "superclasses"  # check reports each task's superclass (verify's result)
    SMOKE_PARAMS = {"max_samples": 256}
    verify = staticmethod(verify)  # the module's verify(root, p, decode)

    @classmethod
    def describe(cls, **params) -> DatasetInfo:
        cls.params_of(params)
        return DatasetInfo(
            name="multi_cifar100",
            tasks={t: Plugin("scene", {"num_classes": N_WAY}) for t in TASK_NAMES},
            input_size=(32, 32),
            default_batch_sizes=(32, 64, 128),
            notes="CIFAR-100 as 20 five-way superclass tasks (Auto-Lambda); one task labelled per image",
        )

    def official_items(self, name: str) -> range:
        """The rows of the official file ``name`` (the items are their own source index)."""
        return range(len(load(self.root, name)["task"]))

    def __init__(self, root: Optional[str], split: str, tasks: Sequence[str], augment: bool = False, **params):
        super().__init__(root, split, tasks, augment, **params)
        self.data = load(self.root, self.official_split)
        self.task_ids = [TASK_NAMES.index(t) for t in self.tasks]

    def __getitem__(self, i: int) -> Dict[str, object]:
        j, p = self.source_indices[i], self.params
        image = torch.from_numpy(self.data["images"][j].copy()).permute(2, 0, 1).float() / 255.0
        own, cls = int(self.data["task"][j]), int(self.data["cls"][j])
        targets = {t: torch.tensor(cls if k == own else 0, dtype=torch.long) for t, k in zip(self.tasks, self.task_ids)}
        mask = {t: torch.tensor(k == own) for t, k in zip(self.tasks, self.task_ids)}
        if self.augment:
            image = pad_random_crop(image, p.crop_padding)
            if p.flip:
                image, targets = random_hflip(image, targets, self.task_objects)
        return self.make_item(standardize(image, CIFAR100_MEAN, CIFAR100_STD), targets, mask)

"""Partially labelled multi-task data: which task labels each training image keeps.

Settings of MTPSL (Li, Liu and Bilen, "Learning Multiple Dense Prediction Tasks from Partially
Annotated Data", CVPR 2022) and JTR (Nishi et al., CVPR 2024, Sec. 4.1 and 4.4), for K tasks:
    full          every image keeps every label.
    onelabel      "each example has exactly one label for a randomly chosen task"; here the
                  tasks are dealt out balanced (counts differ by at most one) in random order.
    randomlabels  "a random number of labels between 1 and at most K-1": the number is uniform
                  on 1..K-1, then a uniformly random subset of that size (needs K >= 2).
    halflabels    JTR's Taskonomy setting, "3 or 4 labels out of 7 tasks ... the mean number of
                  labels in both settings is the same" (K/2): every image keeps floor(K/2) or
                  ceil(K/2) labels, each count on half of the images (exactly K/2 for even K),
                  as a uniformly random subset (needs K >= 2).
    unlabelled_fraction in [0, 1): JTR Sec. 4.4 - that share of images (round(f * N), chosen at
                  random) keeps no label at all; the rest follow the setting.
    unlabelled    "keep" (default) or "drop": what the train loop does with the images that keep
                  no label of the study's tasks - keep them in the batches (JTR's and MTPSL's
                  regularisers read them), or leave them out of the main loader (MGM Sec. 4: ST and
                  MT train on the labelled share only; its weakly labelled images come back
                  through a regulariser's ``weak_stream``). Stored in the mask file's meta.
Everything is drawn from ``numpy.random.default_rng(seed)``.

MTPSL and JTR ship their masks as ``{'labels_weights': FloatTensor[N, K]}`` .pth files (row i =
training image i, columns in the file's task order, e.g. NYUv2 semseg, depth, normals);
``load_label_weights`` reads them.

A study fixes one mask for all its models: ``materialize`` writes it once to
``<study_dir>/labels/<setting>-<hash>.npz`` (the hash keys everything that determines it) and
the train loop wraps the training split in ``LabelMasked.from_file``.

Row indexing: a mask made by ``materialize`` from a setting has one row per item of the
training split. A weights file has one row per image of the *official* training list, while
our "train" split holds part of it out as "val"; such a mask is saved with
``meta["rows"] = "source"`` and ``LabelMasked`` picks row ``dataset.source_indices[i]`` for item
i (the real-data loaders expose ``source_indices``).

``split_unlabelled`` parts a masked split into the items that keep some of the given tasks'
labels and those that keep none (MGM's weakly labelled images, which keep only the scene label).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Subset

from trainables.atomic import atomic_write

SETTINGS = ("full", "onelabel", "randomlabels", "halflabels")
SETTING_KEYS = ("setting", "seed", "unlabelled_fraction", "unlabelled")
WEIGHTS_KEYS = ("weights_file", "tasks", "unlabelled")
UNLABELLED = ("keep", "drop")
FORMAT_VERSION = 1


def make_label_mask(setting: str, num_samples: int, num_tasks: int, seed: int = 0,
                    unlabelled_fraction: float = 0.0) -> np.ndarray:
    """Bool [num_samples, num_tasks]: True where image i keeps the label of task j."""
    if setting not in SETTINGS:
        raise ValueError(f"labels.setting: unknown setting {setting!r}; valid settings: {', '.join(SETTINGS)}")
    for name, v in (("num_samples", num_samples), ("num_tasks", num_tasks)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"labels.seed must be a non-negative int, got {seed!r}")
    f = unlabelled_fraction
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
        raise ValueError(f"labels.unlabelled_fraction must be a float in [0, 1), got {f!r}")
    if setting in ("randomlabels", "halflabels") and num_tasks < 2:
        raise ValueError(f"labels.setting: {setting!r} needs at least 2 tasks, got {num_tasks}")
    rng = np.random.default_rng(seed)
    n, k = int(num_samples), int(num_tasks)
    order = rng.permutation(n)
    labelled = np.sort(order[int(round(f * n)):])
    m = len(labelled)
    mask = np.zeros((n, k), dtype=bool)
    if setting == "full":
        mask[labelled] = True
    elif setting == "onelabel":
        task = rng.permutation(np.resize(np.arange(k), m))  # balanced: each task m // k or m // k + 1 times
        mask[labelled, task] = True
    else:
        if setting == "randomlabels":
            counts = rng.integers(1, k, size=m)  # uniform on 1..K-1
        else:
            counts = rng.permutation(np.resize([k // 2, (k + 1) // 2], m))
        rank = rng.random((m, k)).argsort(axis=1).argsort(axis=1)  # a random permutation per row
        mask[labelled] = rank < counts[:, None]
    return mask


def save_label_mask(path: str, mask: np.ndarray, task_names: Sequence[str], meta: Mapping) -> str:
    """Write ``mask`` (bit-packed), its task names and ``meta`` to ``path`` (.npz), atomically."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or mask.shape[1] != len(task_names):
        raise ValueError(f"{path}: mask of shape [N, {len(task_names)}] expected, got {mask.shape}")
    return atomic_write(path, lambda tmp: np.savez(
        tmp, bits=np.packbits(mask, axis=None), shape=np.array(mask.shape, dtype=np.int64),
        task_names=np.array(list(task_names), dtype=str),
        meta=np.array(json.dumps({**dict(meta), "format": FORMAT_VERSION}, sort_keys=True))))


def load_label_mask(path: str) -> Tuple[np.ndarray, List[str], Dict]:
    """(bool mask [N, T], task names, meta) of a file written by ``save_label_mask``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            shape = tuple(int(v) for v in data["shape"])
            mask = np.unpackbits(data["bits"], count=shape[0] * shape[1]).astype(bool).reshape(shape)
            names = [str(t) for t in data["task_names"]]
            meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable label-mask file ({err})") from None
    if len(names) != shape[1]:
        raise ValueError(f"{path}: {shape[1]} mask columns but {len(names)} task names")
    return mask, names, meta


def load_label_weights(path: str, task_names: Sequence[str]) -> np.ndarray:
    """Bool [N, T] from an MTPSL / JTR ``{'labels_weights': FloatTensor[N, T]}`` .pth file.

    ``task_names`` name the file's columns, in the file's order; a weight > 0 keeps the label.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ValueError(f"{path}: not a readable .pth file ({type(err).__name__}: {err})") from None
    if not isinstance(data, Mapping) or "labels_weights" not in data:
        keys = sorted(map(str, data)) if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(f"{path}: a dict with key 'labels_weights' expected, found {keys}")
    w = data["labels_weights"]
    try:
        w = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
    except (TypeError, ValueError) as err:  # e.g. ragged rows
        raise ValueError(f"{path}: labels_weights of shape [N, {len(task_names)}] (tasks {list(task_names)}) "
                         f"expected, found {type(w).__name__} that is no array ({err})") from None
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] != len(task_names):
        raise ValueError(f"{path}: labels_weights of shape [N, {len(task_names)}] (tasks {list(task_names)}) "
                         f"expected, found {tuple(w.shape)}")
    if not np.issubdtype(w.dtype, np.number) or not np.isfinite(w).all():
        raise ValueError(f"{path}: labels_weights must be finite numbers, found dtype {w.dtype}")
    return w > 0


def check_labels(labels: Mapping, task_names: Sequence[str]) -> None:
    """Check a study's ``labels`` before any data is read; a ValueError names the key ("labels.<key>:").

    The keys, the setting, its seed and unlabelled fraction (and that the setting fits the number
    of tasks), or that the weights file is readable and has a column for every task. The number
    of rows against the training split is checked by ``materialize``, which knows the split.
    """
    labels = dict(labels)
    if labels.get("unlabelled", "keep") not in UNLABELLED:
        raise ValueError(f"labels.unlabelled: {labels['unlabelled']!r} is not one of {', '.join(UNLABELLED)}")
    if "weights_file" in labels:
        _known_keys(labels, WEIGHTS_KEYS)
        try:
            load_label_weights(str(labels["weights_file"]), _weights_columns(labels, task_names))
        except ValueError as err:
            raise ValueError(f"labels.weights_file: {err}") from None
        return
    _known_keys(labels, SETTING_KEYS)
    if "setting" not in labels:
        raise ValueError(f"labels.setting: give 'setting' ({', '.join(SETTINGS)}) or 'weights_file'")
    make_label_mask(labels["setting"], 1, len(task_names), labels.get("seed", 0), labels.get("unlabelled_fraction", 0.0))


def _weights_columns(labels: Mapping, task_names: Sequence[str]) -> List[str]:
    """The weights file's column names (``labels.tasks``, default the study's tasks), checked to
    hold every task of the study."""
    columns = list(labels.get("tasks") or task_names)
    missing = [t for t in task_names if t not in columns]
    if missing:
        raise ValueError(f"labels.tasks: the study's tasks {missing} are not columns of {labels['weights_file']} "
                         f"({columns}); name the file's columns with labels.tasks")
    return columns


def materialize(study_dir: str, num_train: int, task_names: list, labels: Mapping) -> str:
    """Write the study's label mask once and return its path (see the module docstring).

    ``labels``: {"setting": one of SETTINGS, "seed": int = 0, "unlabelled_fraction": float = 0}
    or {"weights_file": path, "tasks": the file's column names (default ``task_names``)}.
    An existing file with the same content key is reused, so every model sees the same labels.
    """
    check_labels(labels, task_names)
    labels = dict(labels)
    if "weights_file" in labels:
        source = str(labels["weights_file"])
        columns = _weights_columns(labels, task_names)
        with open(source, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        mask = load_label_weights(source, columns)
        if mask.shape[0] < num_train:
            raise ValueError(f"{source}: {mask.shape[0]} rows, fewer than the {num_train} training samples; "
                             f"labels_weights of shape [>= {num_train}, {len(columns)}] (tasks {columns}) expected")
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(source))[0]) or "weights"
        meta = {"weights_file": os.path.abspath(source), "sha256": digest, "tasks": columns,
                "rows": "items" if mask.shape[0] == num_train else "source"}
        name = stem
    else:
        setting, seed = labels["setting"], labels.get("seed", 0)
        fraction = labels.get("unlabelled_fraction", 0.0)
        mask = make_label_mask(setting, num_train, len(task_names), seed, fraction)
        columns = list(task_names)
        meta = {"setting": setting, "seed": seed, "unlabelled_fraction": float(fraction),
                "num_samples": int(num_train), "tasks": columns, "rows": "items"}
        name = setting
    if labels.get("unlabelled", "keep") != "keep":  # the loader differs, so the file (and every cache key) does
        meta["unlabelled"] = labels["unlabelled"]
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(study_dir, "labels", f"{name}-{key}.npz")
    try:
        old_mask, old_names, old_meta = load_label_mask(path)
        if old_names == columns and np.array_equal(old_mask, mask) and old_meta.get("key") == key:
            return path
    except ValueError:
        pass  # absent or unreadable: (re)write it
    return save_label_mask(path, mask, columns, {**meta, "key": key})


def _known_keys(labels: Mapping, valid: Sequence[str]) -> None:
    unknown = sorted(set(labels) - set(valid))
    if unknown:
        raise ValueError(f"labels.{unknown[0]}: unknown key; valid keys: {', '.join(valid)} "
                         f"(or {', '.join(SETTING_KEYS if valid is WEIGHTS_KEYS else WEIGHTS_KEYS)})")


class LabelMasked(torch.utils.data.Dataset):
    """A dataset whose per-task masks are ANDed with a label-mask row per item.

    Args:
        dataset: the wrapped dataset (items carry ``mask``: {task: BoolTensor[]}).
        mask: bool [N, len(tasks)]; row ``rows[i]`` belongs to item i.
        tasks: the tasks of the mask's columns, in order (other tasks are left alone).
        rows: the row of each item (default: row i for item i).
    """

    def __init__(self, dataset, mask: np.ndarray, tasks: Sequence[str], rows: Optional[Sequence[int]] = None):
        self.dataset = dataset
        self.mask = torch.as_tensor(np.asarray(mask, dtype=bool))
        self.tasks = list(tasks)
        self.rows = list(range(len(dataset))) if rows is None else [int(r) for r in rows]
        if self.mask.dim() != 2 or self.mask.shape[1] != len(self.tasks) or len(self.rows) != len(dataset):
            raise ValueError(f"LabelMasked: mask {tuple(self.mask.shape)}, {len(self.tasks)} tasks and "
                             f"{len(self.rows)} rows for {len(dataset)} items do not fit")

    @classmethod
    def from_file(cls, dataset, path: str, tasks: Sequence[str]) -> "LabelMasked":
        """Mask ``dataset`` with the file's columns for ``tasks`` (a subset of the file's tasks)."""
        mask, names, meta = load_label_mask(path)
        source = meta.get("weights_file", path)  # the user's file, when the mask came from one
        expected = f"labels_weights of shape [{{}}, {len(names)}] (tasks {names}) expected"
        missing = [t for t in tasks if t not in names]
        if missing:
            raise ValueError(f"{path}: no labels for task(s) {missing}; the file has {names}")
        columns = [names.index(t) for t in tasks]
        rows = None
        if meta.get("rows") == "source":
            rows = getattr(dataset, "source_indices", None)
            if rows is None:
                raise ValueError(f"{source}: {mask.shape[0]} rows for a training split of {len(dataset)} samples, "
                                 f"and dataset {type(dataset).__name__} has no official list (no source_indices) "
                                 f"that its rows could index; {expected.format(len(dataset))}")
            if len(rows) and max(rows) >= mask.shape[0]:
                raise ValueError(f"{source}: {mask.shape[0]} rows, but the training split uses row {max(rows)} of "
                                 f"the official training list; {expected.format(f'>= {max(rows) + 1}')}")
        elif mask.shape[0] != len(dataset):
            raise ValueError(f"{source}: {mask.shape[0]} rows for a dataset of {len(dataset)} samples; "
                             f"{expected.format(len(dataset))}")
        return cls(dataset, mask[:, columns], tasks, rows)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Dict[str, object]:
        item = self.dataset[i]
        row = self.mask[self.rows[i]]
        keep = dict(item["mask"])
        for j, task in enumerate(self.tasks):
            if task in keep:
                keep[task] = keep[task] & row[j]
        return {**item, "mask": keep}


def split_unlabelled(dataset: LabelMasked, tasks: Sequence[str]) -> Tuple[Subset, Subset]:
    """The items of ``dataset`` that keep the label of at least one of ``tasks``, and those that
    keep none - MGM's fully and weakly labelled images (Bao et al., ICML 2022: dense labels on
    100 / 50 / 25 / 10 % of the training set, the image-level scene label on every image). An
    unlabelled item still serves the tasks outside ``tasks`` (e.g. scene) with their own mask.

    Decided from the label mask alone, without reading an item: an item whose wrapped dataset
    lacks a label anyway (a missing file) counts as labelled if its mask row keeps the label.

    Args:
        dataset: the label-masked training split.
        tasks: the tasks that make an item labelled, a subset of ``dataset.tasks``.
    Returns:
        (labelled, unlabelled): ``torch.utils.data.Subset``s of ``dataset``, in item order.
    """
    if not isinstance(dataset, LabelMasked):
        raise TypeError(f"split_unlabelled: a LabelMasked dataset expected, got {type(dataset).__name__}; "
                        f"wrap the training split with LabelMasked (or LabelMasked.from_file) first")
    tasks = list(tasks)
    missing = [t for t in tasks if t not in dataset.tasks]
    if not tasks or missing:
        raise ValueError(f"split_unlabelled: tasks must be a non-empty subset of the mask's tasks {dataset.tasks}; "
                         f"got {tasks}")
    columns = [dataset.tasks.index(t) for t in tasks]
    keeps = dataset.mask[torch.tensor(dataset.rows, dtype=torch.long)][:, columns].any(dim=1).tolist()
    labelled = [i for i, k in enumerate(keeps) if k]
    unlabelled = [i for i, k in enumerate(keeps) if not k]
    return Subset(dataset, labelled), Subset(dataset, unlabelled)

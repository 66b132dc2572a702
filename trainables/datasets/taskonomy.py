"""Tiny Taskonomy: the survey's five tasks and JTR's seven, split by building.

Zamir et al., "Taskonomy: Disentangling Task Transfer Learning", CVPR 2018 (the 'tiny'
split: 275k train / 52k val / 54k test images in 35 / 5 / 5 buildings). Two studies use it:
the survey (Vandenhende et al., TPAMI 2021, Sec. 4.2.3, Table 5: depth, semantic
segmentation, scene categorisation, edge detection, keypoints - all L1 but segmentation and
scene) and JTR (Nishi et al., CVPR 2024, Sec. 4.1, Table 3, after Standley et al., ICML 2020:
semseg, depth, normals, edge occlusion, reshading, 2-D keypoints, edge texture).

Layout (``layout``): "building_first" ``<root>/<building>/<folder>/<file>`` (one folder per
building, as the per-building archives unpack), "task_first" ``<root>/<folder>/<building>/``
(Standley's taskgrouping code), or "auto" (task_first iff ``<root>/rgb`` exists). Files are
``point_<i>_view_<j>_domain_<folder>.png`` (``.npy`` for class_scene); the samples of a building
are its rgb files, ordered by (point, view).

Targets (task name: folder -> served value; task type):
    semseg: segment_semantic, uint8 0..17 -> 0 = unlabelled -> 255, k -> k - 1 (17 classes,
        as Standley's cross-entropy with ignore_index 0); ``semseg``.
    depth: depth_zbuffer, uint16 in 1/512 m -> metres [1, H, W], raw >= ``depth_invalid_from``
        (65535) -> 0 = invalid; ``dense_l1`` with invalid 0 (L1 is the metric of both studies).
    normals: normal, RGB 127-centred -> n = 2 x / 255 - 1, [3, H, W]; ``normals`` (cosine loss,
        JTR).
    edge_texture, edge_occlusion, keypoints2d, reshading: single-channel (reshading: channel
        mean) maps -> value / the dtype's maximum (255 or 65535, the 'img_as_float' scaling of
        Taskonomy's own loaders) in [0, 1], [1, H, W]; ``dense_l1`` (``keypoints`` for
        keypoints2d). Standley standardises instead ((x - mean) / std); L1s differ by the scale.
    scene: class_scene, a .npy of 365 Places365 scores -> its argmax, LongTensor []; with
        ``scene_classes`` (a list of Places365 indices, e.g. Taskonomy's 63 indoor classes, not
        shipped here) the argmax among those, labelled by position; ``scene``.
``mask_from_depth`` (default on, as Standley): normals, edge_occlusion and reshading are set to
their task's ignore value (zero normals; NaN, invalid for dense_l1) where the depth is invalid. Images: ImageNet
mean / std; every map is resized to ``image_size`` (default 256 x 256; files are 512 x 512):
image and continuous maps bilinear (antialiased), labels and depth nearest.

Splits: Taskonomy's ``train_val_test_tiny.csv`` (columns id, train, val, test; one row per
building, 1 marks its split; ``splits_file``, relative to root) or the explicit
``train_buildings`` / ``val_buildings`` / ``test_buildings`` lists. Augmentation
(``augment=True``): horizontal flip with probability 1/2 (normals x negated), as Standley's
loader; JTR's RandAugment is not implemented.

Checks: the split lists, every building's folders, every file of every task in
``tasks_on_disk`` (default all; ``allow_missing`` tolerates missing label files - such samples
carry mask False), decoding with range checks of every sample of a split of <= 200 images and
200 evenly spaced ones of a larger split (``prepare``: the first and last).
"""
from __future__ import annotations

import csv
import functools
import os
import re
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from trainables.datasets import readers
from trainables.datasets.base import SPLITS, DatasetInfo
from trainables.datasets.disk import DiskDataset
from trainables.datasets.params import SampleParams, as_size
from trainables.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, random_hflip, resize_map, standardize
from trainables.plugins import Plugin
from trainables.registry import register_dataset

# task name -> (folder, extension)
FOLDERS = {"semseg": ("segment_semantic", "png"), "depth": ("depth_zbuffer", "png"), "normals": ("normal", "png"),
           "edge_texture": ("edge_texture", "png"), "edge_occlusion": ("edge_occlusion", "png"),
           "reshading": ("reshading", "png"), "keypoints2d": ("keypoints2d", "png"), "scene": ("class_scene", "npy")}
TASK_NAMES = tuple(FOLDERS)
SURVEY_TASKS = ("depth", "semseg", "scene", "edge_texture", "keypoints2d")  # survey Table 5: D, S, C, E, K
JTR_TASKS = ("semseg", "depth", "normals", "edge_occlusion", "reshading", "keypoints2d", "edge_texture")
N_SEG, N_PLACES, DEPTH_UNITS_PER_M = 17, 365, 512.0
CONTINUOUS = ("edge_texture", "edge_occlusion", "keypoints2d", "reshading")
DEPTH_MASKED = ("normals", "edge_occlusion", "reshading")
RGB_FILE = re.compile(r"^point_(\d+)_view_(\d+)_domain_rgb\.png$")


@dataclass(frozen=True)
class TaskonomyParams(SampleParams):
    """Parameters of the ``taskonomy`` loader (see the module docstring), besides
    ``SampleParams``' max_samples and flip (no hold-out: every split is a list of buildings).

    Attributes:
        image_size: [H, W] every sample is resized to.
        layout: "auto", "building_first" or "task_first".
        splits_file: the split csv, relative to root (or absolute); used unless the three
            building lists are given.
        train_buildings / val_buildings / test_buildings: explicit building lists (all three).
        tasks_on_disk: the tasks whose folders exist (None: all of TASK_NAMES).
        allow_missing: a missing label file gives mask False instead of a check error.
        depth_invalid_from: raw depth values >= this are invalid (65535; Standley: 8192).
        mask_from_depth: invalidate normals / edge_occlusion / reshading where depth is invalid.
        scene_classes: Places365 indices of the scene classes (None: all 365).
    """

    image_size: Tuple[int, int] = (256, 256)
    layout: str = "auto"
    splits_file: str = "train_val_test_tiny.csv"
    train_buildings: Optional[Tuple[str, ...]] = None
    val_buildings: Optional[Tuple[str, ...]] = None
    test_buildings: Optional[Tuple[str, ...]] = None
    tasks_on_disk: Optional[Tuple[str, ...]] = None
    allow_missing: bool = False
    depth_invalid_from: int = 65535
    mask_from_depth: bool = True
    scene_classes: Optional[Tuple[int, ...]] = None
    dataset: ClassVar[str] = "taskonomy"

    def __post_init__(self) -> None:
        super().__post_init__()
        d, set_ = "taskonomy", object.__setattr__
        set_(self, "image_size", as_size(d, "image_size", self.image_size, allow_none=False))
        if self.layout not in ("auto", "building_first", "task_first"):
            raise ValueError(f"{d}: layout must be 'auto', 'building_first' or 'task_first', got {self.layout!r}")
        if not isinstance(self.splits_file, str) or not self.splits_file:
            raise ValueError(f"{d}: splits_file must be a file name, got {self.splits_file!r}")
        lists = [getattr(self, f"{s}_buildings") for s in SPLITS]
        if any(x is not None for x in lists) and any(x is None for x in lists):
            raise ValueError(f"{d}: give all of train_buildings, val_buildings, test_buildings or none of them")
        for s, x in zip(SPLITS, lists):
            if x is not None:
                if not isinstance(x, (list, tuple)) or not x or not all(isinstance(b, str) and b for b in x):
                    raise ValueError(f"{d}: {s}_buildings must be a non-empty list of building names, got {x!r}")
                set_(self, f"{s}_buildings", tuple(x))
        t = self.tasks_on_disk
        if t is not None:
            if not isinstance(t, (list, tuple)) or not t or any(name not in TASK_NAMES for name in t):
                raise ValueError(f"{d}: tasks_on_disk must be a non-empty list of {', '.join(TASK_NAMES)}; got {t!r}")
            set_(self, "tasks_on_disk", tuple(t))
        for name in ("allow_missing", "mask_from_depth"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{d}: {name} must be a bool, got {getattr(self, name)!r}")
        v = self.depth_invalid_from
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
            raise ValueError(f"{d}: depth_invalid_from must be an int in [1, 65535], got {v!r}")
        c = self.scene_classes
        if c is not None:
            if (not isinstance(c, (list, tuple)) or len(c) < 2 or len(set(c)) != len(c)
                    or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < N_PLACES for i in c)):
                raise ValueError(f"{d}: scene_classes must be >= 2 distinct Places365 indices in [0, 365), got {c!r}")
            set_(self, "scene_classes", tuple(c))

    @property
    def on_disk(self) -> Tuple[str, ...]:
        return self.tasks_on_disk or TASK_NAMES


# --------------------------------------------------------------------------------- layout
def buildings(root: str, p: TaskonomyParams, split: str) -> List[str]:
    """The buildings of ``split``: the explicit list, else the split csv's rows marked 1."""
    if p.train_buildings is not None:
        return list(getattr(p, f"{split}_buildings"))
    path = p.splits_file if os.path.isabs(p.splits_file) else os.path.join(root, p.splits_file)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as err:
        raise readers.DataCheckError(path, f"cannot read the split csv ({err.strerror}); or give "
                                          f"train_buildings / val_buildings / test_buildings") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if not {"id", *SPLITS} <= set(header):
        raise readers.DataCheckError(path, f"csv with columns id,train,val,test expected, found header {header}")
    col, out = {h: i for i, h in enumerate(header)}, []
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            flags = {s: row[col[s]].strip().lower() in ("1", "true", "1.0") for s in SPLITS}
            name = row[col["id"]].strip()
        except IndexError:
            raise readers.DataCheckError(path, f"line {n}: {len(header)} columns expected, found {len(row)}") from None
        if sum(flags.values()) > 1:
            raise readers.DataCheckError(path, f"line {n}: building {name!r} marked for more than one split")
        if flags[split]:
            out.append(name)
    if not out:
        raise readers.DataCheckError(path, f"at least one building with {split}=1 expected, found none")
    return out


@functools.lru_cache(maxsize=16)
def _detect_layout(root: str) -> str:
    return "task_first" if os.path.isdir(os.path.join(root, "rgb")) else "building_first"


def task_dir(root: str, layout: str, building: str, folder: str) -> str:
    layout = _detect_layout(root) if layout == "auto" else layout
    return os.path.join(root, folder, building) if layout == "task_first" else os.path.join(root, building, folder)


def samples(root: str, p: TaskonomyParams, split: str) -> List[Tuple[str, str]]:
    """[(building, 'point_<i>_view_<j>')] of ``split`` in building order, then (point, view)."""
    out = []
    for b in buildings(root, p, split):
        rgb = readers.require_dir(task_dir(root, p.layout, b, "rgb"), f"rgb images of building {b!r}")
        found = [RGB_FILE.match(f) for f in os.listdir(rgb)]
        keys = sorted((int(m.group(1)), int(m.group(2))) for m in found if m)
        if not keys:
            raise readers.DataCheckError(rgb, "point_<i>_view_<j>_domain_rgb.png images expected, found none")
        out += [(b, f"point_{i}_view_{j}") for i, j in keys]
    return out


def path(root: str, p: TaskonomyParams, sample: Tuple[str, str], task: str) -> str:
    folder, ext = ("rgb", "png") if task == "image" else FOLDERS[task]
    return os.path.join(task_dir(root, p.layout, sample[0], folder), f"{sample[1]}_domain_{folder}.{ext}")


# -------------------------------------------------------------------------------- readers
def _scaled(path_: str, raw: np.ndarray) -> np.ndarray:
    """An integer image as float32 in [0, 1]: value / 255 (8-bit) or / 65535 (16-bit)."""
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    if not np.issubdtype(raw.dtype, np.integer) or raw.min() < 0 or raw.max() > 65535:
        raise readers.DataCheckError(path_, f"an 8- or 16-bit png expected, found {raw.dtype} values "
                                           f"{raw.min()}..{raw.max()}")
    return raw.astype(np.float32) / 65535.0


def read_target(path_: str, task: str, p: TaskonomyParams) -> np.ndarray:
    """One decoded label (float32 maps HxW / HxWx3, uint8 semseg, int64 scene) or DataCheckError."""
    if task == "scene":
        a = readers.read_npy(path_).reshape(-1)
        if a.shape != (N_PLACES,) or not np.issubdtype(a.dtype, np.number) or not np.isfinite(a).all():
            raise readers.DataCheckError(path_, f"{N_PLACES} finite Places365 scores expected, found {a.dtype} {a.shape}")
        c = p.scene_classes
        return np.int64(np.argmax(a) if c is None else int(np.argmax(a[list(c)])))
    if task == "normals":
        return 2.0 * readers.read_image(path_, "RGB").astype(np.float32) / 255.0 - 1.0
    raw = readers.read_image(path_, "raw")
    if raw.ndim == 3 and task == "reshading":
        raw = raw[..., :3].mean(axis=2).astype(raw.dtype)
    if raw.ndim != 2:
        raise readers.DataCheckError(path_, f"a single-channel png expected, found shape {raw.shape}")
    if task == "semseg":
        readers.check_range(path_, raw, f"0..{N_SEG} (0 = unlabelled)", (raw >= 0) & (raw <= N_SEG))
        return raw.astype(np.uint8)
    if task == "depth":
        if raw.dtype == np.uint8 or not np.issubdtype(raw.dtype, np.integer) or raw.min() < 0 or raw.max() > 65535:
            raise readers.DataCheckError(path_, f"a 16-bit depth png expected, found {raw.dtype}")
        return np.where(raw >= p.depth_invalid_from, 0.0, raw / DEPTH_UNITS_PER_M).astype(np.float32)
    return _scaled(path_, raw)


def read_sample(root: str, p: TaskonomyParams, sample: Tuple[str, str], tasks: Sequence[str]) -> Dict[str, object]:
    """Image (uint8 HxWx3) and the ``tasks``' targets (None where a file is missing and
    ``allow_missing``), plus the depth that ``mask_from_depth`` needs even if not asked for."""
    out: Dict[str, object] = {"image": readers.read_image(path(root, p, sample, "image"), "RGB")}
    h, w = out["image"].shape[:2]
    need_depth = p.mask_from_depth and "depth" in p.on_disk and any(t in DEPTH_MASKED for t in tasks)
    for task in list(tasks) + (["depth"] if need_depth and "depth" not in tasks else []):
        f = path(root, p, sample, task)
        if p.allow_missing and not os.path.isfile(f):
            out[task] = None
            continue
        a = read_target(f, task, p)
        if task != "scene" and a.shape[:2] != (h, w):
            raise readers.DataCheckError(f, f"{h}x{w} like its rgb image expected, found {a.shape[0]}x{a.shape[1]}")
        out[task] = a
    return out


def verify(root: str, p: TaskonomyParams, decode: Optional[int]) -> Dict[str, int]:
    """Split lists, folders, every file's existence, and decoding of ``decode`` samples per split."""
    readers.require_dir(root, "Taskonomy root")
    n_files = n_decoded = 0
    for split in SPLITS:
        items = samples(root, p, split)
        for b in dict.fromkeys(b for b, _ in items):
            for task in p.on_disk:
                readers.require_dir(task_dir(root, p.layout, b, FOLDERS[task][0]),
                                   f"{task} of building {b!r} (or leave {task} out of tasks_on_disk)")
        if not p.allow_missing:
            for s in items:
                for task in p.on_disk:
                    readers.require_file(path(root, p, s, task), f"{task} of {s[1]} in building {s[0]!r}")
                    n_files += 1
        for i in readers.decode_sample(len(items), decode):
            read_sample(root, p, items[i], p.on_disk)
            n_decoded += 1
    return {"files": n_files, "decoded": n_decoded}


# ------------------------------------------------------------------------------ dataset
@register_dataset("taskonomy")
class Taskonomy(DiskDataset):
    """Tiny Taskonomy: semseg, depth, normals, edges, reshading, keypoints, scene; by building.

    Args:
        root: the Taskonomy data folder.
        split: "train", "val" or "test" (by building).
        tasks: a subset of the tasks on disk (TASK_NAMES).
        augment: random horizontal flips.
        **params: TaskonomyParams fields.
    """

    NAME, TASK_NAMES, Params, ROOT = "taskonomy", TASK_NAMES, TaskonomyParams, "the Taskonomy data folder"
    ROOT_HINTS = dict.fromkeys(("prepare", "check", "init"), "(--data-root / dataset.root)")
    HOLDOUT = None  # split by building: every split is official
    SMOKE_PARAMS = {"max_samples": 8, "image_size": (64, 64)}
    verify = staticmethod(verify)  # the module's verify(root, p, decode)
    samples = property(lambda self: self.items, doc="(building, 'point_<i>_view_<j>') of each item")

    @classmethod
    def valid_tasks(cls, p: TaskonomyParams) -> Tuple[str, ...]:
        return p.on_disk

    @classmethod
    def describe(cls, **params) -> DatasetInfo:
        p = cls.params_of(params)
        n_scene = len(p.scene_classes) if p.scene_classes else N_PLACES
        specs = {"semseg": Plugin("semseg", {"num_classes": N_SEG}),
                 "depth": Plugin("dense_l1", {"channels": 1, "invalid_value": 0.0}),
                 "normals": Plugin("normals", {"loss": "cosine"}),
                 "keypoints2d": Plugin("keypoints", {"channels": 1}),
                 "scene": Plugin("scene", {"num_classes": n_scene}),
                 **{t: Plugin("dense_l1", {"channels": 1}) for t in ("edge_texture", "edge_occlusion", "reshading")}}
        return DatasetInfo(
            name="taskonomy",
            tasks={t: specs[t] for t in p.on_disk},
            input_size=p.image_size,
            # Our choice around JTR's batch size 8; the survey does not state Taskonomy's.
            default_batch_sizes=(8, 16, 32),
            notes=f"Tiny Taskonomy by building; survey Table 5 tasks {list(SURVEY_TASKS)}, JTR's seven "
                  f"{list(JTR_TASKS)}; continuous maps in [0, 1], depth in metres",
        )

    def official_items(self, name: str) -> List[Tuple[str, str]]:
        return samples(self.root, self.params, name)

    def __getitem__(self, i: int) -> Dict[str, object]:
        p, size = self.params, self.params.image_size
        a = read_sample(self.root, p, self.items[i], self.tasks)
        if p.mask_from_depth and a.get("depth") is not None:
            invalid = a["depth"] <= 0
            for task in DEPTH_MASKED:
                if a.get(task) is not None and task in self.tasks:
                    a[task][invalid] = self.task_objects[task].ignore_value
        image = resize_map(torch.from_numpy(a["image"]).permute(2, 0, 1).float() / 255.0, size, "bilinear")
        targets, mask = {}, {}
        for task in self.tasks:
            x, mask[task] = a[task], torch.tensor(a[task] is not None)
            if task == "scene":
                targets[task] = torch.tensor(0 if x is None else int(x), dtype=torch.long)
            elif task == "semseg":  # file 0 = unlabelled -> 255, k -> class k - 1
                seg = None if x is None else torch.from_numpy(x.astype(np.int64))
                targets[task] = (torch.full(size, 255, dtype=torch.long) if seg is None
                                 else resize_map(torch.where(seg == 0, 255, seg - 1), size))
            elif x is None:
                targets[task] = torch.zeros(self.task_objects[task].out_channels, *size)
            elif task in CONTINUOUS:
                targets[task] = _resize_continuous(torch.from_numpy(x)[None], size)
            else:  # depth nearest, normals bilinear and renormalised: the task's own resampling
                x = torch.from_numpy(x)
                x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
                targets[task] = self.task_objects[task].resample(x, lambda m, mode: resize_map(m, size, mode))
        if self.augment and p.flip:
            image, targets = random_hflip(image, targets, self.task_objects)
        return self.make_item(standardize(image, IMAGENET_MEAN, IMAGENET_STD), targets, mask)


def _resize_continuous(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of a map with NaN holes; the holes are resized nearest and stay NaN."""
    hole = torch.isnan(x)
    if not hole.any():
        return resize_map(x, size, "bilinear")
    y = resize_map(torch.where(hole, torch.zeros_like(x), x), size, "bilinear")
    return torch.where(resize_map(hole.float(), size, "nearest") > 0.5, torch.full_like(y, float("nan")), y)

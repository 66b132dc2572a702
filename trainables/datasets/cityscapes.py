"""Cityscapes in its official layout: 19-class semseg, depth from disparity, instance centres.

Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016
(layout and the labelId -> trainId table of cityscapesScripts' ``labels.py``); survey
(Vandenhende et al., TPAMI 2021) Sec. 4.2.2 / Table 4: S (mIoU), I (px), D (px), images scaled
to 512 x 256, the instance task as Kendall et al. (CVPR 2018)'s proxy of regressing each
instance pixel to its instance's centre. On disk (<split> = train / val, <b> =
<city>_<seq>_<frame>):

    leftImg8bit/<split>/<city>/<b>_leftImg8bit.png      RGB 8 bit
    gtFine/<split>/<city>/<b>_gtFine_labelIds.png        uint8 label ids 0..33
    gtFine/<split>/<city>/<b>_gtFine_instanceIds.png     16 bit: id < 1000 = label id of a
                                                         pixel without instance; labelId * 1000
                                                         + k = instance k of class labelId
    disparity/<split>/<city>/<b>_disparity.png           uint16 p: disparity = (p - 1) / 256
                                                         px for p > 0; p = 0 invalid

Targets (all three folders are required by the checks):
    semseg: labelIds -> the 19 trainIds of the official table, every other id -> 255.
    depth: ``depth_from_disparity="disparity"`` (default; the survey's D column is in px):
        the disparity in px of the full-resolution (2048 px wide) image, not rescaled with
        the image; "metric": depth = baseline * focal / disparity in metres with the nominal
        calibration (baseline 0.209313 m, focal 2262.52 px). p in {0, 1} (disparity 0:
        infinitely far or unknown) is invalid = 0 in both modes.
    instance_center: [2, H, W] (dy, dx) in px of the served image from each instance pixel
        to its instance's centroid, NaN on every other pixel (the ignore convention of
        trainables/tasks/instance_center.py). Instance pixels: instanceIds >= 1000 of the
        classes with a trainId (person, rider, car, truck, bus, train, motorcycle, bicycle:
        the official instance benchmark's classes); caravan / trailer instances are ignored,
        like their semseg label. Centroids are computed at full resolution and mapped to the
        served grid (c' = (c + 0.5) * H'/H - 0.5), pixels come from the nearest-resized map.
Resizing to ``size`` (default 256 x 512): image bilinear (antialiased), label maps nearest.
Images: ImageNet mean / std.

Splits: "train" / "val" are a seeded hold-out of the official train list; the official val
(the survey's reported split) is served as "test".

Augmentation (``augment=True``): the survey gives none for Cityscapes (its code for it was not
released); here a horizontal flip with probability 1/2 (negating dx) and, with ``scales``
other than (1,), the random zoom-crop of ``transforms.random_scale_crop`` (disparity * s, metric
depth / s, offsets * the zoom factors: the tasks' ``zoom``; ``describe`` marks the depth task as
a disparity in "disparity" mode).

Checks: every folder; for each image its three label files; decoding with range checks
(labelIds <= 33; instanceIds < 34 or labelId * 1000 + k with labelId in 24..33; disparity a
16-bit png; every map the size of its image; every image the size of the first or of
``native_size``). ``check`` decodes every sample of a split of <= 200 images and 200 evenly
spaced ones otherwise; ``prepare`` the first and last of each split.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from trainables.datasets import readers
from trainables.datasets.base import DatasetInfo
from trainables.datasets.disk import DiskDataset
from trainables.datasets.params import ZoomParams, as_size
from trainables.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_image, resize_map, zoom_and_flip
from trainables.plugins import Plugin
from trainables.registry import register_dataset

TASK_NAMES = ("semseg", "depth", "instance_center")
N_CLASSES = 19
NATIVE_SIZE = (1024, 2048)
BASELINE_M, FOCAL_PX = 0.209313, 2262.52
# labelId -> trainId (cityscapesScripts labels.py); ids not listed are ignored (255).
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
             25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
MAX_LABEL_ID = 33
LUT = np.full(256, 255, dtype=np.int64)
for _label, _train in TRAIN_IDS.items():
    LUT[_label] = _train
INSTANCE_CLASSES = (24, 25, 26, 27, 28, 31, 32, 33)  # things with a trainId
SUFFIX = {"image": ("leftImg8bit", "_leftImg8bit.png"), "semseg": ("gtFine", "_gtFine_labelIds.png"),
          "instance_center": ("gtFine", "_gtFine_instanceIds.png"), "depth": ("disparity", "_disparity.png")}


@dataclass(frozen=True)
class CityscapesParams(ZoomParams):
    """Parameters of the ``cityscapes`` loader (besides ``ZoomParams``': max_samples, flip,
    val_fraction, seed - the seeded hold-out of the official train list served as "val" -
    and scales, here by default (1,): no zoom).

    Attributes:
        size: [H, W] served (default [256, 512], the survey's 512 x 256); None: native.
        native_size: expected [H, W] of the files; None: the first image's (1024 x 2048).
        depth_from_disparity: "disparity" (px) or "metric" (metres); see the module docstring.
    """

    scales: Tuple[float, ...] = (1.0,)
    size: Optional[Tuple[int, int]] = (256, 512)
    native_size: Optional[Tuple[int, int]] = None
    depth_from_disparity: str = "disparity"
    dataset: ClassVar[str] = "cityscapes"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "size", as_size("cityscapes", "size", self.size))
        object.__setattr__(self, "native_size", as_size("cityscapes", "native_size", self.native_size))
        if self.depth_from_disparity not in ("disparity", "metric"):
            raise ValueError(f"cityscapes: depth_from_disparity must be 'disparity' or 'metric', "
                             f"got {self.depth_from_disparity!r}")


def official_samples(root: str, folder_split: str) -> List[Tuple[str, str]]:
    """(city, base name) of every image of ``leftImg8bit/<folder_split>``, sorted."""
    readers.require_dir(root, "Cityscapes root")
    top = readers.require_dir(os.path.join(root, "leftImg8bit", folder_split), f"images of {folder_split}")
    suffix = SUFFIX["image"][1]
    samples = [(os.path.basename(os.path.dirname(p)), os.path.basename(p)[: -len(suffix)])
               for p in glob.glob(os.path.join(top, "*", "*" + suffix))]
    if not samples:
        raise readers.DataCheckError(top, f"<city>/<city>_<seq>_<frame>{suffix} files expected, found none")
    return sorted(samples)


def paths(root: str, folder_split: str, city: str, base: str) -> Dict[str, str]:
    return {k: os.path.join(root, folder, folder_split, city, base + suffix) for k, (folder, suffix) in SUFFIX.items()}


def read_sample(files: Dict[str, str], kinds: Sequence[str], native: Optional[Tuple[int, int]]) -> Dict[str, np.ndarray]:
    """Decode one sample's ``kinds`` at native resolution, with format and range checks."""
    image = readers.read_image(files["image"], "RGB")
    if native is not None and image.shape[:2] != tuple(native):
        raise readers.DataCheckError(files["image"], f"image of {native[0]}x{native[1]} expected, "
                                                    f"found {image.shape[0]}x{image.shape[1]}")
    out = {"image": image}
    for kind in kinds:
        path = files[kind]
        a = readers.read_image(path, "raw")
        if a.ndim != 2 or a.shape != image.shape[:2]:
            raise readers.DataCheckError(path, f"single-channel png of {image.shape[0]}x{image.shape[1]} "
                                              f"(like its image) expected, found {a.dtype} {a.shape}")
        if kind == "semseg":
            if a.dtype != np.uint8:
                raise readers.DataCheckError(path, f"8-bit label ids expected, found {a.dtype}")
            readers.check_range(path, a, f"label ids 0..{MAX_LABEL_ID}", a <= MAX_LABEL_ID)
        elif kind == "instance_center":
            a = a.astype(np.int64)
            ok = (a >= 0) & ((a <= MAX_LABEL_ID) | ((a >= 24000) & (a < 34000)))
            readers.check_range(path, a, "label ids 0..33 or labelId*1000+k with labelId in 24..33", ok)
        else:
            if a.dtype not in (np.uint16, np.int32, np.uint8):
                raise readers.DataCheckError(path, f"16-bit disparity png expected, found {a.dtype}")
            a = a.astype(np.int64)
            readers.check_range(path, a, "16-bit values 0..65535", (a >= 0) & (a <= 65535))
        out[kind] = a
    return out


def depth_target(raw: np.ndarray, mode: str) -> np.ndarray:
    """uint16 disparity png values -> disparity (px) or metric depth (m); invalid = 0."""
    p = raw.astype(np.float64)
    disparity = np.where(p > 0, (p - 1.0) / 256.0, 0.0)
    if mode == "disparity":
        return disparity.astype(np.float32)
    valid = disparity > 0
    return np.where(valid, BASELINE_M * FOCAL_PX / np.where(valid, disparity, 1.0), 0.0).astype(np.float32)


def instance_offsets(ids: np.ndarray, size: Optional[Tuple[int, int]]) -> torch.Tensor:
    """[2, H', W'] (dy, dx) from each instance pixel to its centroid in px of the ``size``
    grid (native when None), NaN elsewhere (see the module docstring)."""
    H, W = ids.shape
    Ht, Wt = size or (H, W)
    thing = (ids >= 1000) & np.isin(ids // 1000, INSTANCE_CLASSES)
    ids = np.where(thing, ids, 0)
    out = torch.full((2, Ht, Wt), float("nan"))
    if not thing.any():
        return out
    uniq, inverse = np.unique(ids[thing], return_inverse=True)
    ys, xs = np.nonzero(thing)  # row-major, the order of ids[thing]
    count = np.bincount(inverse)
    cy = np.bincount(inverse, ys) / count
    cx = np.bincount(inverse, xs) / count
    cy, cx = (cy + 0.5) * Ht / H - 0.5, (cx + 0.5) * Wt / W - 0.5  # pixel-centre mapping
    grid = resize_map(torch.from_numpy(ids), (Ht, Wt), "nearest").numpy()
    yt, xt = np.nonzero(grid > 0)
    k = np.searchsorted(uniq, grid[yt, xt])
    out[0, yt, xt] = torch.from_numpy((cy[k] - yt).astype(np.float32))
    out[1, yt, xt] = torch.from_numpy((cx[k] - xt).astype(np.float32))
    return out


def verify(root: str, p: CityscapesParams, decode: Optional[int]) -> Dict[str, int]:
    """Folders, every image's label files, and decoding of ``decode`` samples per split."""
    for folder in ("leftImg8bit", "gtFine", "disparity"):
        readers.require_dir(os.path.join(root, folder), f"Cityscapes {folder}")
    native, n_files, n_decoded = p.native_size, 0, 0
    for folder_split in ("train", "val"):
        samples = official_samples(root, folder_split)
        for city, base in samples:
            for kind, path in paths(root, folder_split, city, base).items():
                readers.require_file(path, f"{kind} of {base}")
                n_files += 1
        for i in readers.decode_sample(len(samples), decode):
            arrays = read_sample(paths(root, folder_split, *samples[i]), TASK_NAMES, native)
            native = native or arrays["image"].shape[:2]
            n_decoded += 1
    return {"files": n_files, "decoded": n_decoded}


@register_dataset("cityscapes")
class Cityscapes(DiskDataset):
    """Cityscapes (official layout): 19-class semseg, disparity / depth, instance centres, 256 x 512.

    Args:
        root: the folder holding leftImg8bit/, gtFine/ and disparity/.
        split: "train" / "val" (seeded hold-out of the official train) or "test" (official val).
        tasks: a subset of TASK_NAMES.
        augment: random flips (and zoom with ``scales``); see the module docstring.
        **params: CityscapesParams fields.
    """

    NAME, TASK_NAMES, Params, ROOT = "cityscapes", TASK_NAMES, CityscapesParams, "the Cityscapes folder"
    SMOKE_PARAMS = {"max_samples": 8}
    verify = staticmethod(verify)  # the module's verify(root, p, decode)
    samples = property(lambda self: self.items, doc="(city, base name) of each item")

    @classmethod
    def describe(cls, **params) -> DatasetInfo:
        p = cls.params_of(params)
        return DatasetInfo(
            name="cityscapes",
            tasks={"semseg": Plugin("semseg", {"num_classes": N_CLASSES}),
                   "depth": Plugin("depth", {"disparity": p.depth_from_disparity == "disparity"}),
                   "instance_center": Plugin("instance_center")},
            input_size=p.size or p.native_size or NATIVE_SIZE,
            default_batch_sizes=(4, 6, 8),  # the survey gives none for Cityscapes: NYUD's trio
            notes=f"Cityscapes official layout; depth as {p.depth_from_disparity}; official val served as test",
        )

    def official_items(self, name: str) -> List[Tuple[str, str]]:
        return official_samples(self.root, name)

    def __getitem__(self, i: int) -> Dict[str, object]:
        p = self.params
        a = read_sample(paths(self.root, self.official_split, *self.items[i]), self.tasks, p.native_size)
        size = p.size or a["image"].shape[:2]
        image = resize_map(normalize_image(a["image"], IMAGENET_MEAN, IMAGENET_STD), size, "bilinear")
        targets: Dict[str, torch.Tensor] = {}
        for task in self.tasks:
            if task == "semseg":
                targets[task] = resize_map(torch.from_numpy(LUT[a["semseg"]]), size, "nearest")
            elif task == "depth":
                d = torch.from_numpy(depth_target(a["depth"], p.depth_from_disparity))[None]
                targets[task] = resize_map(d, size, "nearest")
            else:
                targets[task] = instance_offsets(a["instance_center"], size)
        if self.augment:
            image, targets = zoom_and_flip(image, targets, self.task_objects, p.scales, p.flip)
        return self.make_item(image, targets)

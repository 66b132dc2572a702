"""The preprocessed NYUv2 and Cityscapes of MTAN (.npy per sample), also used by MTPSL, JTR
and Auto-Lambda.

Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019 (MTAN; code
lorenmt/mtan, ``create_dataset.py``); Li, Liu and Bilen, "Learning Multiple Dense Prediction
Tasks from Partially Annotated Data", CVPR 2022 (MTPSL); JTR (seeds/001_...). On disk:

    <root>/{train,val}/image/<i>.npy    H x W x 3 float in [0, 1]
    <root>/{train,val}/label/<i>.npy    H x W float in {-1, 0..C-1}; -1 = ignore -> 255
    <root>/{train,val}/depth/<i>.npy    H x W x 1 (H x W accepted); 0 = invalid
    <root>/{train,val}/normal/<i>.npy   H x W x 3 unit vectors; all-zero = invalid (NYUv2 only)

with i = 0..N-1 (N counted from ``image/``; every folder must hold exactly those files).

``nyuv2_mtan``: 288 x 384, 13 classes, depth in metres; tasks semseg, depth, normals.
``cityscapes_mtan``: 128 x 256, ``label_7/`` or ``label_19/`` instead of ``label/``
(param ``num_classes`` 7 or 19), ``depth/`` is disparity-like (larger = closer; 0 invalid);
tasks semseg, depth. No normals.

Images: MTAN and its successors feed the [0, 1] arrays un-normalised; ``normalize="none"``
(default) does the same, ``"imagenet"`` applies ImageNet mean / std (for pretrained backbones).

Splits: the reference codes train on ``train`` and select and report on ``val``. Here "val"
is a seeded hold-out of ``train`` (``disk.holdout_split``) and ``val`` is served as "test".

Augmentation (``augment=True``): MTAN / MTPSL's random scale crop (zoom s in ``scales``,
window int(H/s) x int(W/s), image bilinear, maps nearest) and, as in Auto-Lambda / MTPSL, a
horizontal flip with probability 1/2 negating the normals' x. Metric depth is divided by s
(as MTAN); a disparity map is multiplied by s (nearer = larger disparity; ``describe`` marks
cityscapes_mtan's depth task as a disparity) - MTAN's code divides its Cityscapes depth too,
which is wrong for disparity. Normals use nearest, not bilinear, so
that invalid zeros never blend with valid vectors.

Checks: every folder and file; decoding with range checks (image in [0, 1]; labels integral in
{-1..C-1}; depth finite >= 0; normals finite with components in [-1, 1]; every array of the
first image's size or ``image_size``). ``check`` decodes all samples of a split of <= 200 and
200 evenly spaced ones otherwise; ``prepare`` the first and last of each split.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from trainables.datasets import readers
from trainables.datasets.base import DatasetInfo
from trainables.datasets.disk import DiskDataset
from trainables.datasets.params import ZoomParams, as_size
from trainables.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_image, unit_normals, zoom_and_flip
from trainables.plugins import Plugin
from trainables.registry import register_dataset

TASK_FOLDER = {"semseg": "label", "depth": "depth", "normals": "normal"}
_NPY = re.compile(r"^(\d+)\.npy$")


@dataclass(frozen=True)
class MTANParams(ZoomParams):
    """Parameters of ``nyuv2_mtan`` / ``cityscapes_mtan`` (besides ``ZoomParams``': max_samples,
    flip, val_fraction, seed - the seeded hold-out of ``train`` served as "val" - and scales).

    Attributes:
        image_size: expected [H, W]; None: the size of the first image, all must match.
        num_classes: cityscapes_mtan only, 7 or 19 (the ``label_7`` / ``label_19`` folder).
        normalize: "none" (MTAN's [0, 1] input) or "imagenet" (ImageNet mean / std).
    """

    image_size: Optional[Tuple[int, int]] = None
    num_classes: Optional[int] = None
    normalize: str = "none"
    dataset: ClassVar[str] = "mtan"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "image_size", as_size("mtan", "image_size", self.image_size))
        if self.normalize not in ("none", "imagenet"):
            raise ValueError(f"mtan: normalize must be 'none' or 'imagenet', got {self.normalize!r}")


def indices(folder: str) -> List[int]:
    """The sample numbers of ``folder/<i>.npy``; they must be exactly 0..N-1."""
    readers.require_dir(folder, "one .npy per sample")
    found = sorted(int(m.group(1)) for m in map(_NPY.match, os.listdir(folder)) if m)
    if not found:
        raise readers.DataCheckError(folder, "files 0.npy .. N-1.npy expected, found none")
    if found != list(range(len(found))):
        gap = next(i for i, v in enumerate(found) if v != i)
        raise readers.DataCheckError(os.path.join(folder, f"{gap}.npy"), f"missing file (samples are 0..{found[-1]})")
    return found


class _MTANArrays(DiskDataset):
    """The shared reader; subclasses set the name, root wording, tasks, folders and sizes."""

    Params = MTANParams
    ROOT_HINTS = {"prepare": "holding train/ and val/", "check": "holding train/ and val/", "init": "(dataset.root)"}
    DEFAULT_SIZE: ClassVar[Tuple[int, int]] = (0, 0)
    BATCH_SIZES: ClassVar[Tuple[int, int, int]] = (2, 4, 8)
    DEPTH_IS_DISPARITY: ClassVar[bool] = False
    SMOKE_PARAMS = {"max_samples": 8}

    @classmethod
    def num_classes(cls, p: MTANParams) -> int:
        raise NotImplementedError

    @classmethod
    def folder(cls, task: str, p: MTANParams) -> str:
        return TASK_FOLDER[task]

    @classmethod
    def describe(cls, **params) -> DatasetInfo:
        p = cls.params_of(params)
        tasks = {"semseg": Plugin("semseg", {"num_classes": cls.num_classes(p)}),
                 "depth": Plugin("depth", {"disparity": cls.DEPTH_IS_DISPARITY}), "normals": Plugin("normals")}
        return DatasetInfo(name=cls.NAME, tasks={t: tasks[t] for t in cls.TASK_NAMES},
                           input_size=p.image_size or cls.DEFAULT_SIZE,
                           default_batch_sizes=cls.BATCH_SIZES,
                           notes=f"MTAN preprocessed .npy, {cls.num_classes(p)} classes; official val served as test")

    @classmethod
    def verify(cls, root: str, p: MTANParams, decode: Optional[int]) -> Dict[str, int]:
        readers.require_dir(root, f"{cls.NAME} root")
        size, n_files, n_decoded = p.image_size, 0, 0
        for folder_split in ("train", "val"):
            base = readers.require_dir(os.path.join(root, folder_split), f"{cls.NAME} {folder_split} split")
            n = len(indices(os.path.join(base, "image")))
            for task in cls.TASK_NAMES:
                folder = readers.require_dir(os.path.join(base, cls.folder(task, p)), f"{task} of {folder_split}")
                for i in range(n):
                    readers.require_file(os.path.join(folder, f"{i}.npy"), f"{task} of sample {i}")
            n_files += n * (1 + len(cls.TASK_NAMES))
            for i in readers.decode_sample(n, decode):
                arrays = cls.read(root, folder_split, i, cls.TASK_NAMES, p, size)
                size = size or arrays["image"].shape[:2]
                n_decoded += 1
        return {"files": n_files, "decoded": n_decoded}

    @classmethod
    def read(cls, root: str, folder_split: str, i: int, tasks: Sequence[str], p: MTANParams,
             size: Optional[Tuple[int, int]]) -> Dict[str, np.ndarray]:
        """Decode sample ``i`` with format and range checks (errors name the file)."""
        path = os.path.join(root, folder_split, "image", f"{i}.npy")
        image = _numeric(path, readers.read_npy(path, (None, None, 3)))
        readers.check_range(path, image, "in [0, 1]", np.isfinite(image) & (image >= -1e-6) & (image <= 1 + 1e-6))
        if size is not None and image.shape[:2] != tuple(size):
            raise readers.DataCheckError(path, f"image of {size[0]}x{size[1]} expected, found {image.shape[0]}x{image.shape[1]}")
        out = {"image": image}
        for task in tasks:
            path = os.path.join(root, folder_split, cls.folder(task, p), f"{i}.npy")
            a = _numeric(path, readers.read_npy(path))
            if task != "normals" and a.ndim == 3 and a.shape[2] == 1:
                a = a[..., 0]
            want = (image.shape[0], image.shape[1], 3) if task == "normals" else image.shape[:2]
            if a.shape != want:
                raise readers.DataCheckError(path, f"array of shape {want} (like its image) expected, found {a.shape}")
            if task == "semseg":
                c = cls.num_classes(p)
                ok = np.isfinite(a) & (a == np.round(a)) & (a >= -1) & (a <= c - 1)
                readers.check_range(path, a, f"integers in -1..{c - 1} (-1 = ignore)", ok)
            elif task == "depth":
                readers.check_range(path, a, "finite and >= 0", np.isfinite(a) & (a >= 0))
            else:
                readers.check_range(path, a, "finite components in [-1, 1]", np.isfinite(a) & (np.abs(a) <= 1 + 1e-3))
            out[task] = a
        return out

    def official_items(self, name: str) -> List[int]:
        """The sample numbers of the ``name`` folder (the items are their own source index)."""
        return indices(os.path.join(self.root, name, "image"))

    def __getitem__(self, i: int) -> Dict[str, object]:
        p = self.params
        a = self.read(self.root, self.official_split, self.source_indices[i], self.tasks, p, p.image_size)
        if p.normalize == "imagenet":
            image = normalize_image(a["image"].astype(np.float32), IMAGENET_MEAN, IMAGENET_STD)
        else:
            image = torch.from_numpy(a["image"].astype(np.float32)).permute(2, 0, 1)
        targets: Dict[str, torch.Tensor] = {}
        for task in self.tasks:
            if task == "semseg":
                seg = a["semseg"].astype(np.int64)
                seg[seg < 0] = 255
                targets[task] = torch.from_numpy(seg)
            elif task == "normals":
                targets[task] = unit_normals(torch.from_numpy(a["normals"].astype(np.float32)).permute(2, 0, 1))
            else:
                targets[task] = torch.from_numpy(a["depth"].astype(np.float32))[None]
        if self.augment:
            image, targets = zoom_and_flip(image, targets, self.task_objects, p.scales, p.flip)
        return self.make_item(image, targets)


def _numeric(path: str, a: np.ndarray) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.number):
        raise readers.DataCheckError(path, f"numeric array expected, found {a.dtype}")
    return a.astype(np.float32, copy=False)


@register_dataset("nyuv2_mtan")
class NYUv2MTAN(_MTANArrays):
    """NYUv2 as preprocessed by MTAN (288 x 384, 13 classes, depth, normals; .npy per sample)."""

    NAME, ROOT = "nyuv2_mtan", "the nyuv2_mtan folder"
    TASK_NAMES = ("semseg", "depth", "normals")
    DEFAULT_SIZE = (288, 384)
    BATCH_SIZES = (2, 4, 8)  # MTAN / MTPSL train NYUv2 with batch 2; not in the survey

    @classmethod
    def num_classes(cls, p: MTANParams) -> int:
        if p.num_classes not in (None, 13):
            raise ValueError(f"nyuv2_mtan: num_classes is fixed at 13, got {p.num_classes!r}")
        return 13


@register_dataset("cityscapes_mtan")
class CityscapesMTAN(_MTANArrays):
    """Cityscapes as preprocessed by MTAN (128 x 256, 7 or 19 classes, disparity; .npy per sample)."""

    NAME, ROOT = "cityscapes_mtan", "the cityscapes_mtan folder"
    TASK_NAMES = ("semseg", "depth")
    DEFAULT_SIZE = (128, 256)
    BATCH_SIZES = (8, 16, 32)  # MTAN trains Cityscapes with batch 8; not in the survey
    DEPTH_IS_DISPARITY = True

    @classmethod
    def num_classes(cls, p: MTANParams) -> int:
        if p.num_classes not in (None, 7, 19):
            raise ValueError(f"cityscapes_mtan: num_classes must be 7 or 19, got {p.num_classes!r}")
        return p.num_classes or 7

    @classmethod
    def folder(cls, task: str, p: MTANParams) -> str:
        return f"label_{cls.num_classes(p)}" if task == "semseg" else TASK_FOLDER[task]

"""The preprocessed NYUv2 and Cityscapes of MTAN (.npy per sample), also used by MTPSL, JTR
and Auto-Lambda, and Auto-Lambda's CityScapes with part segmentation (IAL Table I).

Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019 (MTAN; code
lorenmt/mtan, ``create_dataset.py``); Li, Liu and Bilen, "Learning Multiple Dense Prediction
Tasks from Partially Annotated Data", CVPR 2022 (MTPSL); JTR (Nishi et al., CVPR 2024). On disk:

    <root>/{train,val}/image/<i>.npy    H x W x 3 float in [0, 1]
    <root>/{train,val}/label/<i>.npy    H x W float in {-1, 0..C-1}; -1 = ignore -> 255
    <root>/{train,val}/depth/<i>.npy    H x W x 1 (H x W accepted); 0 = invalid
    <root>/{train,val}/normal/<i>.npy   H x W x 3 unit vectors; all-zero = invalid (NYUv2 only)

with i = 0..N-1 (N counted from ``image/``; every folder must hold exactly those files).

``nyuv2_mtan``: 288 x 384, 13 classes, depth in metres; tasks semseg, depth, normals, and with
``num_scenes`` set the image-level task scene (the weak label of MGM, Bao et al., ICML 2022):

    <root>/{train,val}/scene/<i>.npy    one integral number, the scene type in 0..num_scenes-1

MTAN's files carry no scene type, so the user writes them from the ``sceneTypes`` field of the
official ``nyu_depth_v2_labeled.mat`` (one name per image; MGM's code counts 27; number them by
their position in the sorted list of distinct names, as MGM's code numbers its sorted scene
folders). Sample i of ``train/`` / ``val/`` is taken to be the i-th image of the official
795 / 654 split (``splits.mat`` ``trainNdxs`` / ``testNdxs``, in order) - MTAN does not
document its order, so compare a few images with the .mat's before trusting the labels.
Without ``num_scenes`` nothing under ``scene/`` is read; with it, ``prepare`` and ``check`` read
every scene file and an item reads its own only when the study asks for the scene task.

``cityscapes_mtan``: 128 x 256, ``label_7/`` or ``label_19/`` instead of ``label/``
(param ``num_classes`` 7 or 19), ``depth/`` is disparity-like (larger = closer; 0 invalid);
tasks semseg, depth. No normals.

``cityscapes_mtan`` with ``layout="auto_lambda"``: Auto-Lambda's CityScapes (Liu, James, Davison
and Johns, "Auto-Lambda: Disentangling Dynamic Task Relationships", TMLR 2022; code
lorenmt/auto-lambda, ``create_dataset.py`` and ``dataset/cityscapes_preprocess.py``), the set
IAL's Cityscapes columns follow: 256 x 512 (the official images resized, labels nearest),
19-class semseg, disparity and 10-class part segmentation. Its files are images, not arrays:

    <root>/{train,val}/image/<i>.png      RGB 8 bit -> / 255
    <root>/{train,val}/seg/<i>.png        official labelIds 0..33 -> the 19 trainIds of
                                          cityscapesScripts' table, every other id ignored
    <root>/{train,val}/depth/<i>.png      uint16 disparity p of the 2048-px-wide original:
                                          (p - 1) / 256 / 4 px of the 512-px-wide image, as
                                          the code; p = 0 invalid
    <root>/{train,val}/part_seg/<i>.tif   Cityscapes-Panoptic-Parts uids (int32; de Geus,
                                          Meletis et al., CVPR 2021): up to 7 digits
                                          sid | iid (3) | pid (2), i.e. pid = uid % 100 and
                                          sid = uid // 10^5 for uids >= 10^5; 1-2 digit uids
                                          carry a sid only, 4-5 digit ones a sid and an iid

Task ``parts`` (semseg type, 10 classes, the code's mapping): 0 background; person (sid 24) and
rider (25) parts torso / head / arms / legs (pid 1..4) -> 1..4; car (26), truck (27) and bus
(28) parts windows / wheels / lights / license plate / chassis (pid 1..5) -> 5..9; every other
pixel 0, void parts (pid 0) and unlabelled pixels included - the code's part task has no
ignore label (mIoU over all 10 classes). It exists only in this layout (tasks semseg, depth,
parts; ``num_classes`` 19). ``prepare`` / ``check`` need all four folders; part files are
decoded only when a study asks for the task. Auto-Lambda's preprocessing script writes the
training part files as ``train/part_seg<i>.tif`` (a '/' missing): move them into
``train/part_seg/``. Deviations: a disparity of exactly 0 (p = 1, infinitely far) is invalid here
(the depth task's rule, as the ``cityscapes`` loader), valid in the code; training images are not
cropped to the code's 256 x 256 but take this module's augmentation below.

Images: MTAN and its successors feed the [0, 1] arrays un-normalised; ``normalize="none"``
(default) does the same, ``"imagenet"`` applies ImageNet mean / std (for pretrained backbones).
(Auto-Lambda's code maps them to [-1, 1] instead.)

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
{-1..C-1}; depth finite >= 0; normals finite with components in [-1, 1]; Auto-Lambda's label ids
0..33, 16-bit disparities, valid uids; every array of the first image's size or ``image_size``).
``check`` decodes all samples of a split of <= 200 and 200 evenly spaced ones otherwise;
``prepare`` the first and last of each split.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from trainables.datasets import readers
from trainables.datasets.base import DatasetInfo
from trainables.datasets.cityscapes import LUT, MAX_LABEL_ID
from trainables.datasets.disk import DiskDataset
from trainables.datasets.params import ZoomParams, as_size, is_int
from trainables.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_image, unit_normals, zoom_and_flip
from trainables.plugins import Plugin
from trainables.registry import register_dataset

TASK_FOLDER = {"semseg": "label", "depth": "depth", "normals": "normal"}
LABEL_TASKS = ("semseg", "parts")  # class maps: -1 (MTAN's ignore) -> 255
LAYOUTS = ("mtan", "auto_lambda")
# Auto-Lambda's CityScapes: what -> (folder, extension)
AUTO_LAMBDA_FILES = {"image": ("image", ".png"), "semseg": ("seg", ".png"), "depth": ("depth", ".png"),
                     "parts": ("part_seg", ".tif")}
AUTO_LAMBDA_SIZE = (256, 512)
DISPARITY_SCALE = 1 / (256 * 4)  # png value - 1 -> px at 512 of the original 2048 px width
N_PARTS = 10
HUMAN_SIDS, VEHICLE_SIDS = (24, 25), (26, 27, 28)  # person, rider; car, truck, bus
_NAMED = re.compile(r"^(\d+)\.(npy|png|tif)$")


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
        object.__setattr__(self, "image_size", as_size(self.dataset, "image_size", self.image_size))
        if self.normalize not in ("none", "imagenet"):
            raise ValueError(f"{self.dataset}: normalize must be 'none' or 'imagenet', got {self.normalize!r}")


@dataclass(frozen=True)
class CityscapesMTANParams(MTANParams):
    """``MTANParams`` plus ``layout``: "mtan" (MTAN's .npy set, 7 or 19 classes, no parts) or
    "auto_lambda" (Auto-Lambda's png / tif set with part segmentation, 19 classes)."""

    layout: str = "mtan"
    dataset: ClassVar[str] = "cityscapes_mtan"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layout not in LAYOUTS:
            raise ValueError(f"cityscapes_mtan: layout must be 'mtan' (MTAN's .npy files) or 'auto_lambda' "
                             f"(Auto-Lambda's png / tif files with part_seg/), got {self.layout!r}")


def indices(folder: str, ext: str = ".npy") -> List[int]:
    """The sample numbers of ``folder/<i><ext>``; they must be exactly 0..N-1."""
    readers.require_dir(folder, f"one {ext} per sample")
    found = sorted(int(m.group(1)) for m in map(_NAMED.match, os.listdir(folder)) if m and "." + m.group(2) == ext)
    if not found:
        raise readers.DataCheckError(folder, f"files 0{ext} .. N-1{ext} expected, found none")
    if found != list(range(len(found))):
        gap = next(i for i, v in enumerate(found) if v != i)
        raise readers.DataCheckError(os.path.join(folder, f"{gap}{ext}"), f"missing file (samples are 0..{found[-1]})")
    return found


def part_classes(uids: np.ndarray) -> np.ndarray:
    """Cityscapes-Panoptic-Parts uids -> Auto-Lambda's 10 part classes (see the module docstring)."""
    uids = uids.astype(np.int64)
    sid, pid = uids // 100_000, uids % 100
    has_part = uids >= 100_000
    human = has_part & np.isin(sid, HUMAN_SIDS) & (pid >= 1) & (pid <= 4)
    vehicle = has_part & np.isin(sid, VEHICLE_SIDS) & (pid >= 1) & (pid <= 5)
    return np.where(human, pid, np.where(vehicle, pid + 4, 0))


def _valid_uids(a: np.ndarray) -> np.ndarray:
    """The panoptic-parts format's uids: 1-2, 4-5 or 6-7 digits (no 3-digit ones), >= 0."""
    return ((a >= 0) & (a <= 99)) | ((a >= 1_000) & (a <= 9_999_999))


def _check_size(path: str, image: np.ndarray, size: Optional[Tuple[int, int]]) -> None:
    if size is not None and image.shape[:2] != tuple(size):
        raise readers.DataCheckError(path, f"image of {size[0]}x{size[1]} expected, "
                                          f"found {image.shape[0]}x{image.shape[1]}")


class _MTANArrays(DiskDataset):
    """The shared reader; subclasses set the name, root wording, tasks, folders and sizes."""

    Params = MTANParams
    ROOT_HINTS = {"prepare": "holding train/ and val/", "check": "holding train/ and val/", "init": "(dataset.root)"}
    DEFAULT_SIZE: ClassVar[Tuple[int, int]] = (0, 0)
    BATCH_SIZES: ClassVar[Tuple[int, int, int]] = (2, 4, 8)
    DEPTH_IS_DISPARITY: ClassVar[bool] = False
    SMOKE_PARAMS = {"max_samples": 8}
    MISSING_FIX: ClassVar[Mapping[str, str]] = {}  # task -> how to get its folder, for the missing-folder error

    @classmethod
    def num_classes(cls, p: MTANParams) -> int:
        raise NotImplementedError

    @classmethod
    def dense_tasks(cls, p: MTANParams) -> Tuple[str, ...]:
        """The tasks whose per-sample maps ``verify`` and ``read`` handle (Auto-Lambda's layout adds parts)."""
        return cls.TASK_NAMES

    @classmethod
    def file(cls, what: str, p: MTANParams) -> Tuple[str, str]:
        """(folder, extension) of ``what`` ("image" or a task) under <root>/<split>/."""
        return ("image" if what == "image" else TASK_FOLDER[what]), ".npy"

    @classmethod
    def path(cls, root: str, folder_split: str, what: str, i: int, p: MTANParams) -> str:
        folder, ext = cls.file(what, p)
        return os.path.join(root, folder_split, folder, f"{i}{ext}")

    @classmethod
    def default_size(cls, p: MTANParams) -> Tuple[int, int]:
        return cls.DEFAULT_SIZE

    @classmethod
    def source(cls, p: MTANParams) -> str:
        """Who preprocessed the files (``describe``'s notes)."""
        return "MTAN preprocessed .npy"

    @classmethod
    def describe(cls, **params) -> DatasetInfo:
        p = cls.params_of(params)
        tasks = {"semseg": Plugin("semseg", {"num_classes": cls.num_classes(p)}),
                 "depth": Plugin("depth", {"disparity": cls.DEPTH_IS_DISPARITY}), "normals": Plugin("normals"),
                 "parts": Plugin("semseg", {"num_classes": N_PARTS})}
        return DatasetInfo(name=cls.NAME, tasks={t: tasks[t] for t in cls.dense_tasks(p)},
                           input_size=p.image_size or cls.default_size(p),
                           default_batch_sizes=cls.BATCH_SIZES,
                           notes=f"{cls.source(p)}, {cls.num_classes(p)} classes; official val served as test")

    @classmethod
    def verify(cls, root: str, p: MTANParams, decode: Optional[int]) -> Dict[str, int]:
        readers.require_dir(root, f"{cls.NAME} root")
        size, n_files, n_decoded, tasks = p.image_size, 0, 0, cls.dense_tasks(p)
        for folder_split in ("train", "val"):
            base = readers.require_dir(os.path.join(root, folder_split), f"{cls.NAME} {folder_split} split")
            folder, ext = cls.file("image", p)
            n = len(indices(os.path.join(base, folder), ext))
            for task in tasks:
                fix = f"; {cls.MISSING_FIX[task]}" if task in cls.MISSING_FIX else ""
                folder = readers.require_dir(os.path.join(base, cls.file(task, p)[0]), f"{task} of {folder_split}{fix}")
                for i in range(n):
                    readers.require_file(cls.path(root, folder_split, task, i, p), f"{task} of sample {i}")
            n_files += n * (1 + len(tasks))
            for i in readers.decode_sample(n, decode):
                arrays = cls.read(root, folder_split, i, tasks, p, size)
                size = size or arrays["image"].shape[:2]
                n_decoded += 1
        return {"files": n_files, "decoded": n_decoded}

    @classmethod
    def read(cls, root: str, folder_split: str, i: int, tasks: Sequence[str], p: MTANParams,
             size: Optional[Tuple[int, int]]) -> Dict[str, np.ndarray]:
        """Decode sample ``i`` with format and range checks (errors name the file)."""
        path = cls.path(root, folder_split, "image", i, p)
        image = _numeric(path, readers.read_npy(path, (None, None, 3)))
        readers.check_range(path, image, "in [0, 1]", np.isfinite(image) & (image >= -1e-6) & (image <= 1 + 1e-6))
        _check_size(path, image, size)
        out = {"image": image}
        for task in tasks:
            path = cls.path(root, folder_split, task, i, p)
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
        folder, ext = self.file("image", self.params)
        return indices(os.path.join(self.root, name, folder), ext)

    def __getitem__(self, i: int) -> Dict[str, object]:
        p = self.params
        a = self.read(self.root, self.official_split, self.source_indices[i], self.tasks, p, p.image_size)
        if p.normalize == "imagenet":
            image = normalize_image(a["image"].astype(np.float32), IMAGENET_MEAN, IMAGENET_STD)
        else:
            image = torch.from_numpy(a["image"].astype(np.float32)).permute(2, 0, 1)
        targets: Dict[str, torch.Tensor] = {}
        for task in self.tasks:
            if task in LABEL_TASKS:
                seg = a[task].astype(np.int64)
                seg[seg < 0] = 255
                targets[task] = torch.from_numpy(seg)
            elif task == "normals":
                targets[task] = unit_normals(torch.from_numpy(a["normals"].astype(np.float32)).permute(2, 0, 1))
            elif self.task_objects[task].kind == "image":  # nyuv2_mtan's scene type
                targets[task] = torch.tensor(a[task], dtype=torch.long)
            else:
                targets[task] = torch.from_numpy(a["depth"].astype(np.float32))[None]
        if self.augment:
            image, targets = zoom_and_flip(image, targets, self.task_objects, p.scales, p.flip)
        return self.make_item(image, targets)


def _numeric(path: str, a: np.ndarray) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.number):
        raise readers.DataCheckError(path, f"numeric array expected, found {a.dtype}")
    return a.astype(np.float32, copy=False)


def read_auto_lambda(paths: Mapping[str, str], tasks: Sequence[str],
                     size: Optional[Tuple[int, int]]) -> Dict[str, np.ndarray]:
    """Decode one sample of Auto-Lambda's CityScapes (``paths``: "image" and each task -> its
    file) into MTAN's conventions: image float [0, 1], semseg trainIds with -1 = ignore, parts
    0..9, disparity (0 = invalid); with format and range checks."""
    rgb = readers.read_image(paths["image"], "RGB")
    _check_size(paths["image"], rgb, size)
    out = {"image": rgb.astype(np.float32) / 255.0}
    for task in tasks:
        path, a = paths[task], readers.read_image(paths[task], "raw")
        if a.ndim != 2 or a.shape != rgb.shape[:2] or not np.issubdtype(a.dtype, np.integer):
            raise readers.DataCheckError(path, f"single-channel integer map of {rgb.shape[0]}x{rgb.shape[1]} "
                                              f"(like its image) expected, found {a.dtype} {a.shape}")
        a = a.astype(np.int64)
        if task == "semseg":
            readers.check_range(path, a, f"label ids 0..{MAX_LABEL_ID}", (a >= 0) & (a <= MAX_LABEL_ID))
            train_ids = LUT[a]
            out[task] = np.where(train_ids == 255, -1, train_ids).astype(np.float32)
        elif task == "depth":
            readers.check_range(path, a, "16-bit values 0..65535", (a >= 0) & (a <= 65535))
            out[task] = np.where(a > 0, (a - 1) * DISPARITY_SCALE, 0.0).astype(np.float32)
        else:
            readers.check_range(path, a, "panoptic-parts uids (1-2, 4-5 or 6-7 digits)", _valid_uids(a))
            out[task] = part_classes(a).astype(np.float32)
    return out


@dataclass(frozen=True)
class NYUv2MTANParams(MTANParams):
    """``MTANParams`` plus nyuv2_mtan's optional scene task.

    Attributes:
        num_scenes: the number of scene types in the ``scene/<i>.npy`` files (27 for the
            distinct ``sceneTypes`` of NYUv2); None (default): no scene task.
    """

    num_scenes: Optional[int] = None
    dataset: ClassVar[str] = "nyuv2_mtan"

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.num_scenes
        if s is not None and (not is_int(s) or s < 2):
            raise ValueError(f"nyuv2_mtan: num_scenes must be an int >= 2 (27 for NYUv2's sceneTypes) "
                             f"or null (no scene task), got {s!r}")


@register_dataset("nyuv2_mtan")
class NYUv2MTAN(_MTANArrays):
    """NYUv2 as preprocessed by MTAN (288 x 384, 13 classes, depth, normals; .npy per sample;
    optional scene types)."""

    NAME, ROOT = "nyuv2_mtan", "the nyuv2_mtan folder"
    TASK_NAMES = ("semseg", "depth", "normals")
    Params = NYUv2MTANParams
    DEFAULT_SIZE = (288, 384)
    BATCH_SIZES = (2, 4, 8)  # MTAN / MTPSL train NYUv2 with batch 2; not in the survey

    @classmethod
    def num_classes(cls, p: MTANParams) -> int:
        if p.num_classes not in (None, 13):
            raise ValueError(f"nyuv2_mtan: num_classes is fixed at 13, got {p.num_classes!r}")
        return 13

    @classmethod
    def valid_tasks(cls, p: NYUv2MTANParams) -> Tuple[str, ...]:
        return cls.TASK_NAMES + (("scene",) if p.num_scenes else ())

    @classmethod
    def describe(cls, **params) -> DatasetInfo:
        info, p = super().describe(**params), cls.params_of(params)
        if not p.num_scenes:
            return info
        return dataclasses.replace(info, tasks={**info.tasks, "scene": Plugin("scene", {"num_classes": p.num_scenes})},
                                   notes=f"{info.notes}; {p.num_scenes} scene types from scene/<i>.npy")

    @classmethod
    def verify(cls, root: str, p: NYUv2MTANParams, decode: Optional[int]) -> Dict[str, int]:
        """The dense files as every MTAN set, then every scene file when ``num_scenes`` is set."""
        counts = super().verify(root, p, decode)
        if p.num_scenes:
            for folder_split in ("train", "val"):
                n = len(indices(os.path.join(root, folder_split, "image")))
                for i in range(n):
                    scene_type(root, folder_split, i, p.num_scenes)
                counts["files"] += n
        return counts

    @classmethod
    def read(cls, root: str, folder_split: str, i: int, tasks: Sequence[str], p: NYUv2MTANParams,
             size: Optional[Tuple[int, int]]) -> Dict[str, np.ndarray]:
        out = super().read(root, folder_split, i, [t for t in tasks if t != "scene"], p, size)
        if "scene" in tasks:
            out["scene"] = np.int64(scene_type(root, folder_split, i, p.num_scenes))
        return out


def scene_type(root: str, folder_split: str, i: int, num_scenes: int) -> int:
    """The scene type of sample ``i`` (``<root>/<folder_split>/scene/<i>.npy``)."""
    return readers.read_class_index(
        os.path.join(root, folder_split, "scene", f"{i}.npy"), num_scenes,
        f"the scene type of sample {i}: np.save one int in 0..{num_scenes - 1} per sample, from sceneTypes "
        f"of nyu_depth_v2_labeled.mat (see the nyuv2_mtan docstring), or drop the scene task")


@register_dataset("cityscapes_mtan")
class CityscapesMTAN(_MTANArrays):
    """Cityscapes as preprocessed by MTAN (128 x 256, 7 or 19 classes, disparity; .npy per sample)
    or by Auto-Lambda (``layout="auto_lambda"``: 256 x 512, 19 classes, disparity, 10 part classes)."""

    NAME, ROOT = "cityscapes_mtan", "the cityscapes_mtan folder"
    Params = CityscapesMTANParams
    TASK_NAMES = ("semseg", "depth")
    DEFAULT_SIZE = (128, 256)
    BATCH_SIZES = (8, 16, 32)  # MTAN trains Cityscapes with batch 8; not in the survey
    DEPTH_IS_DISPARITY = True
    MISSING_FIX = {"parts": "Auto-Lambda's Cityscapes-Panoptic-Parts labels <i>.tif, shipped with its CityScapes "
                            "download; its preprocessing script writes the training ones as train/part_seg<i>.tif: "
                            "move them into train/part_seg/"}

    @classmethod
    def dense_tasks(cls, p: CityscapesMTANParams) -> Tuple[str, ...]:
        return ("semseg", "depth", "parts") if p.layout == "auto_lambda" else cls.TASK_NAMES

    @classmethod
    def valid_tasks(cls, p: CityscapesMTANParams) -> Tuple[str, ...]:
        return cls.dense_tasks(p)

    @classmethod
    def num_classes(cls, p: CityscapesMTANParams) -> int:
        if p.layout == "auto_lambda":
            if p.num_classes not in (None, 19):
                raise ValueError(f"cityscapes_mtan: layout 'auto_lambda' has 19 classes, "
                                 f"got num_classes={p.num_classes!r}")
            return 19
        if p.num_classes not in (None, 7, 19):
            raise ValueError(f"cityscapes_mtan: num_classes must be 7 or 19, got {p.num_classes!r}")
        return p.num_classes or 7

    @classmethod
    def default_size(cls, p: CityscapesMTANParams) -> Tuple[int, int]:
        return AUTO_LAMBDA_SIZE if p.layout == "auto_lambda" else cls.DEFAULT_SIZE

    @classmethod
    def source(cls, p: CityscapesMTANParams) -> str:
        return "Auto-Lambda's png / tif with part segmentation" if p.layout == "auto_lambda" else super().source(p)

    @classmethod
    def file(cls, what: str, p: CityscapesMTANParams) -> Tuple[str, str]:
        if p.layout == "auto_lambda":
            return AUTO_LAMBDA_FILES[what]
        if what == "semseg":
            return f"label_{cls.num_classes(p)}", ".npy"
        return super().file(what, p)

    @classmethod
    def read(cls, root: str, folder_split: str, i: int, tasks: Sequence[str], p: CityscapesMTANParams,
             size: Optional[Tuple[int, int]]) -> Dict[str, np.ndarray]:
        if p.layout == "mtan":
            return super().read(root, folder_split, i, tasks, p, size)
        paths = {what: cls.path(root, folder_split, what, i, p) for what in ("image", *tasks)}
        return read_auto_lambda(paths, tasks, size)

"""CelebA: 40 binary face attributes, one task each (the survey's task-balancing benchmark).

Liu et al., "Deep Learning Face Attributes in the Wild", ICCV 2015; used for MTL by the survey
(Vandenhende et al., TPAMI 2021, Sec. 4.5.1, supp. D.1, Table 11a: ResNet-18, one linear
head per attribute, binary cross-entropy, images "rescaled to 224 by 224 pixels, and augmented
with random crops and horizontal flips", batch sizes 32 / 128 / 256). Read from torchvision's
on-disk layout, without torchvision's loader (it verifies the official files' MD5 sums):

    <root>/celeba/img_align_celeba/<file>.jpg   aligned and cropped faces (178 x 218)
    <root>/celeba/list_attr_celeba.txt          line 1: image count; line 2: the 40 attribute
                                                names; then "<file> <40 values in {-1, 1}>"
    <root>/celeba/list_eval_partition.txt       "<file> <0|1|2>": 0 train, 1 val, 2 test
                                                (162,770 / 19,867 / 19,962 images)

Tasks: "attr_<name lower-cased>" (e.g. "attr_smiling", "attr_5_o_clock_shadow"), each
Plugin("attribute"): target FloatTensor [] with -1 -> 0 and 1 -> 1; every sample carries all
40 labels. Splits: the official partition. Images: resized to ``image_size`` (bilinear,
antialiased; default 224 x 224), ImageNet mean / std. Augmentation (``augment=True``): a
random crop of the image zero-padded by ``crop_padding`` pixels (default 16; the survey does
not give its crop - this keeps the train and test scales equal) and a horizontal flip with
probability 1/2.

Checks: both list files (header, 40 names in the official order, values, counts, the same
file set in both), every image's existence, and decoding of every image of a split of <= 200
images and 200 evenly spaced ones of a larger split (``prepare``: the first and last).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from trainables.datasets import readers
from trainables.datasets.base import SPLITS, DatasetInfo
from trainables.datasets.disk import DiskDataset
from trainables.datasets.params import SampleParams, as_size
from trainables.datasets.transforms import (IMAGENET_MEAN, IMAGENET_STD, pad_random_crop, random_hflip, resize_map,
                                            standardize)
from trainables.plugins import Plugin
from trainables.registry import register_dataset

ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
TASK_NAMES = tuple(f"attr_{a.lower()}" for a in ATTRIBUTES)
PARTITION = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class CelebAParams(SampleParams):
    """Parameters of the ``celeba`` loader (besides ``SampleParams``': max_samples, flip; no
    hold-out: the official partition has all three splits).

    Attributes:
        image_size: [H, W] the images are resized to (survey: 224 x 224).
        crop_padding: zero padding (pixels) of the random crop when augmenting; 0 = no crop.
    """

    image_size: Tuple[int, int] = (224, 224)
    crop_padding: int = 16
    dataset: ClassVar[str] = "celeba"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "image_size", as_size("celeba", "image_size", self.image_size, allow_none=False))
        c = self.crop_padding
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ValueError(f"celeba: crop_padding must be an int >= 0, got {c!r}")


def folder(root: str) -> str:
    return os.path.join(root, "celeba")


def _lines(path: str) -> List[str]:
    try:
        with open(path) as fh:
            return fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise readers.DataCheckError(path, f"cannot read ({getattr(err, 'strerror', None) or err})") from None


def read_attributes(path: str) -> Tuple[List[str], np.ndarray]:
    """(files, int8 [N, 40] in {-1, 1}) of ``list_attr_celeba.txt``, with format checks."""
    lines = _lines(path)
    try:
        count = int(lines[0].strip())
    except (IndexError, ValueError):
        raise readers.DataCheckError(path, "line 1: the image count expected") from None
    names = lines[1].split() if len(lines) > 1 else []
    if names != ATTRIBUTES:
        raise readers.DataCheckError(path, f"line 2: the 40 CelebA attribute names in order expected, found {names[:4]}...")
    files, values = [], []
    for n, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 41 or any(v not in ("-1", "1") for v in parts[1:]):
            raise readers.DataCheckError(path, f"line {n}: '<file> <40 values in {{-1, 1}}>' expected, found {line[:60]!r}")
        files.append(parts[0])
        values.append([int(v) for v in parts[1:]])
    if len(files) != count:
        raise readers.DataCheckError(path, f"{count} images (line 1) expected, found {len(files)} rows")
    return files, np.asarray(values, dtype=np.int8).reshape(-1, len(ATTRIBUTES))


def read_partition(path: str) -> Dict[str, int]:
    """file -> 0 / 1 / 2 of ``list_eval_partition.txt``."""
    out = {}
    for n, line in enumerate(_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise readers.DataCheckError(path, f"line {n}: '<file> <0|1|2>' expected, found {line[:60]!r}")
        out[parts[0]] = int(parts[1])
    return out


@functools.lru_cache(maxsize=2)
def _lists(root: str, stamp: tuple) -> Tuple[Dict[str, List[str]], Dict[str, np.ndarray]]:
    """Per split: the files (list order) and their {0, 1} labels [n, 40]. ``stamp`` (the
    files' mtimes) keys the cache, so the three splits parse the 200k-line files once."""
    attr_path = os.path.join(folder(root), "list_attr_celeba.txt")
    part_path = os.path.join(folder(root), "list_eval_partition.txt")
    files, values = read_attributes(attr_path)
    partition = read_partition(part_path)
    if set(partition) != set(files):
        extra = sorted(set(partition) ^ set(files))[:3]
        raise readers.DataCheckError(part_path, f"the same images as {attr_path} expected; they differ on e.g. {extra}")
    code = np.array([partition[f] for f in files])
    labels = (values > 0).astype(np.float32)
    return ({s: [files[i] for i in np.flatnonzero(code == c)] for s, c in PARTITION.items()},
            {s: labels[code == c] for s, c in PARTITION.items()})


def lists(root: str):
    base = readers.require_dir(folder(root), "CelebA folder <root>/celeba")
    names = ("list_attr_celeba.txt", "list_eval_partition.txt")
    paths = [readers.require_file(os.path.join(base, n), "CelebA list file") for n in names]
    return _lists(root, tuple(os.stat(p).st_mtime_ns for p in paths))


def verify(root: str, p: CelebAParams, decode: Optional[int]) -> Dict[str, int]:
    """List files, every image's existence, and decoding of ``decode`` images per split
    (no parameter changes what is checked)."""
    files, _ = lists(root)
    images = readers.require_dir(os.path.join(folder(root), "img_align_celeba"), "CelebA images")
    n_decoded = 0
    for split in SPLITS:
        for f in files[split]:
            readers.require_file(os.path.join(images, f), f"image of {split} in list_eval_partition.txt")
        for i in readers.decode_sample(len(files[split]), decode):
            readers.read_image(os.path.join(images, files[split][i]), "RGB")
            n_decoded += 1
    return {"files": sum(len(v) for v in files.values()), "decoded": n_decoded}


@register_dataset("celeba")
class CelebA(DiskDataset):
    """CelebA: 40 binary face attributes (one "attribute" task each), official partition.

    Args:
        root: the folder holding ``celeba/`` (torchvision's ``root``).
        split: "train", "val" or "test" (list_eval_partition.txt's 0 / 1 / 2).
        tasks: a subset of TASK_NAMES ("attr_smiling", ...).
        augment: random padded crops and horizontal flips.
        **params: CelebAParams fields.
    """

    NAME, TASK_NAMES, Params, ROOT = "celeba", TASK_NAMES, CelebAParams, "the folder holding celeba/"
    ROOT_HINTS = dict.fromkeys(("prepare", "check", "init"), "(--data-root / dataset.root)")
    HOLDOUT = None  # the official partition has all three splits
    SMOKE_PARAMS = {"max_samples": 64, "image_size": (64, 64), "crop_padding": 4}
    verify = staticmethod(verify)  # the module's verify(root, p, decode)
    files = property(lambda self: self.items, doc="the image file of each item")

    @classmethod
    def describe(cls, **params) -> DatasetInfo:
        p = cls.params_of(params)
        return DatasetInfo(
            name="celeba",
            tasks={t: Plugin("attribute") for t in TASK_NAMES},
            input_size=p.image_size,
            default_batch_sizes=(32, 128, 256),  # survey supp. D.1
            notes="CelebA: 40 binary attributes (attr_<name>), official partition 162,770 / 19,867 / 19,962",
        )

    def official_items(self, name: str) -> List[str]:
        return lists(self.root)[0][name]

    def __init__(self, root: Optional[str], split: str, tasks: Sequence[str], augment: bool = False, **params):
        super().__init__(root, split, tasks, augment, **params)
        columns = [TASK_NAMES.index(t) for t in self.tasks]
        labels = lists(self.root)[1][split][: len(self.source_indices)]
        self.labels = torch.from_numpy(np.ascontiguousarray(labels[:, columns]))
        self.images = os.path.join(folder(self.root), "img_align_celeba")

    def __getitem__(self, i: int) -> Dict[str, object]:
        p = self.params
        rgb = readers.read_image(os.path.join(self.images, self.items[i]), "RGB")
        image = resize_map(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0, p.image_size, "bilinear")
        targets = {t: self.labels[i, k].clone() for k, t in enumerate(self.tasks)}
        if self.augment:
            image = pad_random_crop(image, p.crop_padding)
            if p.flip:
                image, targets = random_hflip(image, targets, self.task_objects)
        return self.make_item(standardize(image, IMAGENET_MEAN, IMAGENET_STD), targets)

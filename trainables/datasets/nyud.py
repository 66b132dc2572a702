"""NYUD-v2 in the layout of the survey's code (``NYUD_MT``): semseg, depth, normals, edge.

Survey: Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI
2021, Sec. 4.1.1 and supp. B.1 (795 train / 654 val images at 480 x 640; ResNet-50 dilated +
ASPP; random scaling in {1, 1.2, 1.5} and horizontal flips); the data is the NYUD_MT folder of
the survey's repository (SimonVandenhende/Multi-Task-Learning-PyTorch):

    <root>/gt_sets/train.txt, val.txt   one image id per line
    <root>/images/<id>.jpg              RGB
    <root>/segmentation/<id>.png        uint8; 0 = void -> ignore 255, 1..40 -> classes 0..39
    <root>/depth/<id>.npy               metres, H x W or H x W x 1 (both accepted); 0 = invalid
    <root>/normals/<id>.npy             H x W x 3 in [-1, 1]; the zero vector = invalid
    <root>/edge/<id>.npy                {0, 1}, H x W (H x W x 1 accepted)
    <root>/scene/<id>.npy               with ``num_scenes`` only: one integral number, the scene
                                        type in 0..num_scenes-1 (task scene, MGM's weak label)

NYUD_MT ships no scene types: the user writes them from the ``sceneTypes`` field of the official
``nyu_depth_v2_labeled.mat`` (one name per image, numbered by position in the sorted list of
distinct names, as MGM's code numbers its sorted scene folders; MGM's code counts 27). Without
``num_scenes`` nothing under ``scene/`` is read; with it, ``prepare`` and ``check`` read every
scene file and an item reads its own only when the study asks for the scene task.

Served targets follow trainables/tasks: semseg LongTensor [H, W]; depth [1, H, W]; normals
[3, H, W] renormalised to unit length (zero vectors stay zero = invalid); edge [1, H, W];
scene LongTensor [].
Images: ImageNet mean / std, as the survey's ImageNet-pretrained ResNets expect.

Splits: the survey's code selects its best model on ``val``, which is also its test set (a
known defect). Here "val" is a seeded hold-out of the official train list
(``disk.holdout_split``, ``val_fraction``) and the official val list is served as "test".

Augmentation (``augment=True``, the train split), as supp. B.1: zoom by s in ``scales`` (enlarge
s times - image bilinear, maps nearest - and crop back to H x W; depth divided by s, since the
scene comes s times closer) and a horizontal flip with probability 1/2 (negating the normals'
x component). Nearest for normals, unlike bilinear in some codes, so invalid zeros never blend.

Checks (``prepare`` before a study, ``check`` for ``mtl data check``): both id lists, every
folder, every file's existence; then decoding with range checks (semseg <= 40, depth finite
and >= 0, normals finite in [-1, 1], edge in {0, 1}, every map the size of its image, every
image the size of the first or of ``image_size``). ``check`` decodes every sample of a list
of <= 200 ids and 200 evenly spaced ones of a longer list (NYUD: 400 samples, ~10 ms each);
``prepare`` decodes the first and last of each list.

Params (``NYUDParams``): image_size, num_scenes, and ``params.ZoomParams``' max_samples, flip,
val_fraction, seed, scales.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from trainables.datasets import readers
from trainables.datasets.base import DatasetInfo
from trainables.datasets.disk import DiskDataset
from trainables.datasets.params import ZoomParams, as_size, is_int
from trainables.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_image, unit_normals, zoom_and_flip
from trainables.plugins import Plugin
from trainables.registry import register_dataset

TASK_NAMES = ("semseg", "depth", "normals", "edge")
N_CLASSES = 40
DEFAULT_SIZE = (480, 640)
# file kind -> (folder, extension)
FILES = {"image": ("images", ".jpg"), "semseg": ("segmentation", ".png"), "depth": ("depth", ".npy"),
         "normals": ("normals", ".npy"), "edge": ("edge", ".npy")}


@dataclass(frozen=True)
class NYUDParams(ZoomParams):
    """Parameters of the ``nyud`` loader (besides ``ZoomParams``': max_samples, flip,
    val_fraction, seed, scales).

    Attributes:
        image_size: expected [H, W] of every file; None: the size of the first image
            (480 x 640 on NYUD-v2), every other file must match it.
        num_scenes: the number of scene types in the ``scene/<id>.npy`` files; None (default):
            no scene task.
    """

    image_size: Optional[Tuple[int, int]] = None
    num_scenes: Optional[int] = None
    dataset: ClassVar[str] = "nyud"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "image_size", as_size("nyud", "image_size", self.image_size))
        s = self.num_scenes
        if s is not None and (not is_int(s) or s < 2):
            raise ValueError(f"nyud: num_scenes must be an int >= 2 (27 for NYUv2's sceneTypes) "
                             f"or null (no scene task), got {s!r}")


def official_ids(root: str, list_name: str) -> List[str]:
    """The ids of ``gt_sets/<list_name>.txt`` ("train" or "val")."""
    readers.require_dir(root, "NYUD_MT root")
    path = os.path.join(readers.require_dir(os.path.join(root, "gt_sets"), "id lists"), f"{list_name}.txt")
    ids = readers.read_id_list(path)
    if len(set(ids)) != len(ids):
        raise readers.DataCheckError(path, "each id at most once; found duplicates")
    return ids


def paths(root: str, sample_id: str) -> Dict[str, str]:
    return {k: os.path.join(root, folder, sample_id + ext) for k, (folder, ext) in FILES.items()}


def scene_type(root: str, sample_id: str, num_scenes: int) -> int:
    """The scene type of ``sample_id`` (``<root>/scene/<id>.npy``)."""
    return readers.read_class_index(
        os.path.join(root, "scene", f"{sample_id}.npy"), num_scenes,
        f"the scene type of id {sample_id!r}: np.save one int in 0..{num_scenes - 1} per id, from sceneTypes "
        f"of nyu_depth_v2_labeled.mat (see the nyud docstring), or drop the scene task")


def read_sample(files: Dict[str, str], kinds: Sequence[str], size: Optional[Tuple[int, int]]) -> Dict[str, np.ndarray]:
    """Decode the ``kinds`` of one sample with format and range checks (errors name the file)."""
    image = readers.read_image(files["image"], "RGB")
    if size is not None and image.shape[:2] != tuple(size):
        raise readers.DataCheckError(files["image"], f"image of {size[0]}x{size[1]} expected, found "
                                                    f"{image.shape[0]}x{image.shape[1]}")
    h, w = image.shape[:2]
    out = {"image": image}
    for kind in kinds:
        path = files[kind]
        if kind == "semseg":
            a = readers.read_image(path, "raw")
            if a.ndim != 2 or a.dtype != np.uint8:
                raise readers.DataCheckError(path, f"single-channel uint8 label png expected, found {a.dtype} {a.shape}")
            readers.check_range(path, a, f"in 0..{N_CLASSES} (0 = void)", a <= N_CLASSES)
        else:
            a = readers.read_npy(path)
            if kind in ("depth", "edge") and a.ndim == 3 and a.shape[2] == 1:
                a = a[..., 0]
            channels = 3 if kind == "normals" else None
            if a.ndim != (3 if channels else 2) or (channels and a.shape[2] != channels):
                raise readers.DataCheckError(path, f"array of shape {'H x W x 3' if channels else 'H x W'} expected, found {a.shape}")
            if not np.issubdtype(a.dtype, np.number):
                raise readers.DataCheckError(path, f"numeric array expected, found {a.dtype}")
            a = a.astype(np.float32)
            if kind == "depth":
                readers.check_range(path, a, "finite metres >= 0", np.isfinite(a) & (a >= 0))
            elif kind == "normals":
                readers.check_range(path, a, "finite components in [-1, 1]", np.isfinite(a) & (np.abs(a) <= 1 + 1e-3))
            else:
                readers.check_range(path, a, "0 or 1", (a == 0) | (a == 1))
        if a.shape[:2] != (h, w):
            raise readers.DataCheckError(path, f"{h}x{w} like its image expected, found {a.shape[0]}x{a.shape[1]}")
        out[kind] = a
    return out


def verify(root: str, p: NYUDParams, decode: Optional[int]) -> Dict[str, int]:
    """Folders, id lists, existence of every file, and decoding of ``decode`` samples per list
    (None: all). Returns {"files": n_checked, "decoded": n_decoded}."""
    for folder, _ in FILES.values():
        readers.require_dir(os.path.join(root, folder), f"NYUD_MT {folder}")
    size, n_files, n_decoded = p.image_size, 0, 0
    for list_name in ("train", "val"):
        ids = official_ids(root, list_name)
        for sample_id in ids:
            for kind, path in paths(root, sample_id).items():
                readers.require_file(path, f"{kind} of id {sample_id!r} in gt_sets/{list_name}.txt")
                n_files += 1
        for i in readers.decode_sample(len(ids), decode):
            arrays = read_sample(paths(root, ids[i]), TASK_NAMES, size)
            size = size or arrays["image"].shape[:2]
            n_decoded += 1
        if p.num_scenes:
            for sample_id in ids:
                scene_type(root, sample_id, p.num_scenes)
            n_files += len(ids)
    return {"files": n_files, "decoded": n_decoded}


@register_dataset("nyud")
class NYUD(DiskDataset):
    """NYUD-v2 (survey layout): 40-class semseg, depth, normals, edge at 480 x 640.

    Args:
        root: the NYUD_MT folder.
        split: "train" / "val" (seeded hold-out of the official train list) or "test"
            (the official val list).
        tasks: a subset of TASK_NAMES (plus "scene" when num_scenes is set).
        augment: random scaling and flips (see the module docstring).
        **params: NYUDParams fields.
    """

    NAME, TASK_NAMES, Params, ROOT = "nyud", TASK_NAMES, NYUDParams, "the NYUD_MT folder"
    SMOKE_PARAMS = {"max_samples": 8}
    verify = staticmethod(verify)  # the module's verify(root, p, decode)
    ids = property(lambda self: self.items, doc="the official id of each item")

    @classmethod
    def valid_tasks(cls, p: NYUDParams) -> Tuple[str, ...]:
        return TASK_NAMES + (("scene",) if p.num_scenes else ())

    @classmethod
    def describe(cls, **params) -> DatasetInfo:
        p = cls.params_of(params)
        scene = {"scene": Plugin("scene", {"num_classes": p.num_scenes})} if p.num_scenes else {}
        return DatasetInfo(
            name="nyud",
            tasks={"semseg": Plugin("semseg", {"num_classes": N_CLASSES}), "depth": Plugin("depth"),
                   "normals": Plugin("normals"), "edge": Plugin("edge"), **scene},
            input_size=p.image_size or DEFAULT_SIZE,
            default_batch_sizes=(4, 6, 8),
            notes="NYUD-v2 (survey NYUD_MT layout): 795 train / 654 val served as test; 40 classes",
        )

    def official_items(self, name: str) -> List[str]:
        return official_ids(self.root, name)

    def __getitem__(self, i: int) -> Dict[str, object]:
        dense = [t for t in self.tasks if t != "scene"]
        a = read_sample(paths(self.root, self.items[i]), dense, self.params.image_size)
        image = normalize_image(a["image"], IMAGENET_MEAN, IMAGENET_STD)
        targets: Dict[str, torch.Tensor] = {}
        for task in self.tasks:
            if task == "semseg":
                seg = a["semseg"].astype(np.int64) - 1
                seg[seg < 0] = 255
                targets[task] = torch.from_numpy(seg)
            elif task == "normals":
                targets[task] = unit_normals(torch.from_numpy(a["normals"]).permute(2, 0, 1))
            elif task == "scene":
                targets[task] = torch.tensor(scene_type(self.root, self.items[i], self.params.num_scenes))
            else:  # depth, edge
                targets[task] = torch.from_numpy(a[task])[None]
        if self.augment:
            image, targets = zoom_and_flip(image, targets, self.task_objects, self.params.scales, self.params.flip)
        return self.make_item(image, targets)

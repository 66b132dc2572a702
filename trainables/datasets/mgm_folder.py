"""The data layout of MGM's code: one folder per modality, one sub-folder per scene class.

Bao, Hebert and Wang, "Generative Modeling for Multi-task Visual Learning", ICML 2022 (MGM;
code zpbao/multi-task-oriented_generative_modeling, ``datasets.py`` and ``train_light.py``;
supp. B "Data Processing" and B.1 "Dataset Setting"). On disk:

    <root>/rgb/<scene>/<stem>.png   RGB image (.jpg / .jpeg accepted)
    <root>/ss/<scene>/<stem>.npy    semantic classes, H x W (H x W x 1 accepted), integers
                                    0..C-1; 255 = unlabelled
    <root>/de/<scene>/<stem>.npy    depth, H x W (H x W x 1), not normalised (metres on NYUv2)
    <root>/nm/<scene>/<stem>.png    normals as RGB, "standardised to (0, 1)": n = 2 v / 255 - 1
    <root>/msk/<scene>/<stem>.png   valid-normal mask: a pixel is valid where any channel is > 0

(MGM's readme draws the normals folder as ``sn``; its code reads ``nm``, as here.) The scene
label of a sample is the position of ``<scene>`` in the sorted list of the folders of ``rgb/``
(the code's ``find_classes``), so every folder holds the same scene folders and stems. The
samples are ordered by (scene, file name); MGM pairs the modalities by that position, here they
are paired by stem and a missing partner is an error naming the file.

Targets (task: served value; task type):
    semseg: LongTensor [H, W], the file's classes (255 passes through as ignore); ``semseg``.
        MGM's cross-entropy has no ignore index, so its files can hold only 0..C-1.
    depth: [1, H, W] as on disk; ``depth`` (0 = invalid there). MGM's L1 counts every pixel;
        NYUv2's labelled depth is inpainted, so it has no zeros and the two agree.
    normals: [3, H, W] unit vectors 2 v / 255 - 1 renormalised, the zero vector where the mask
        is 0; ``normals`` (L1 on the normalised prediction, averaged over valid pixels). MGM's
        L1 compares its raw output with the (0, 1) code (n + 1) / 2, weighted by mask / 255 and
        averaged over all pixels: on unit vectors the L1 is twice that, a fractional mask value
        counts fully, and masked pixels leave the average.
    scene: LongTensor [], the scene-folder index; ``scene`` (cross-entropy, MGM's refinement
        network's loss). Every image carries it: MGM's weak annotation.

Images: ``normalize="mgm"`` (default) maps RGB to (-1, 1) as MGM's code, (x / 255 - 0.5) / 0.5;
``"imagenet"`` applies ImageNet mean / std. Every sample is resized to ``image_size`` (default
128 x 128, MGM's resolution): image bilinear (as the code's PIL resize), classes and depth
nearest, normals by their task (bilinear, renormalised). MGM's code ``np.resize``-s the ss / de
arrays, which reshapes rather than resamples and is only right for files already at 128 x 128;
there the two agree.

Splits: a seeded random partition of all samples (``seed``): ``test_size`` and ``val_size``
are each a fraction of the samples (a float in (0, 1), rounded) or a count (an int), as
scikit-learn's ``train_test_split``; the rest is "train". Defaults 0.1 / 0.1 give the paper's
Tiny-Taskonomy 80 / 10 / 10 (supp. B.1); ``val_size=200, test_size=200`` its NYUv2 split of the
1,449 labelled images into 1,049 / 200 / 200. The paper publishes no split indices, and MGM's
code instead draws 80 % train / 20 % val with ``torch.utils.data.random_split`` (seed 42) and no
test split, so neither split is reproduced sample for sample. Dense labels on part of "train"
(MGM's 100 / 50 / 25 / 10 % settings) come from the study's ``labels.unlabelled_fraction`` and
``partial.split_unlabelled``; the scene label stays on every image.

Augmentation (``augment=True``): MGM trains its multi-task network on un-augmented images (the
SimCLR augmentations belong to its self-supervision network), so ``flip`` defaults to False;
``flip=True`` mirrors with probability 1/2 (normals' x negated).

Checks (``prepare`` / ``check``): the five folders, the same scene folders in each and
``num_scenes`` of them, every file of every sample, then decoding with range checks (classes
integral in 0..C-1 or 255; depth finite >= 0; every map the size of its image) of all samples up
to 200 and 200 evenly spaced ones beyond (``prepare``: the first and the last).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from trainables.datasets import readers
from trainables.datasets.base import DatasetInfo
from trainables.datasets.disk import DiskDataset
from trainables.datasets.params import SampleParams, as_size, is_int, is_number
from trainables.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, random_hflip, resize_map, standardize
from trainables.plugins import Plugin
from trainables.registry import register_dataset

FOLDERS = ("rgb", "ss", "de", "nm", "msk")
TASK_NAMES = ("semseg", "depth", "normals", "scene")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
IGNORE = 255
# A sample: (scene index, scene folder, stem, rgb file name).
Sample = Tuple[int, str, str, str]


@dataclass(frozen=True)
class MGMFolderParams(SampleParams):
    """Parameters of ``mgm_folder`` (see the module docstring), besides ``SampleParams``'
    max_samples and flip (default False here, as MGM).

    Attributes:
        image_size: [H, W] every sample is resized to.
        num_classes: semantic classes C of the ss files (40 in MGM's NYUv2 code).
        num_scenes: scene folders under ``rgb/`` (27 in MGM's NYUv2 code, 35 on its
            Tiny-Taskonomy).
        val_size / test_size: a fraction (float in (0, 1)) or a count (int >= 1) of all samples.
        seed: seed of the random partition.
        normalize: "mgm" (RGB to (-1, 1)) or "imagenet".
    """

    flip: bool = False
    image_size: Tuple[int, int] = (128, 128)
    num_classes: int = 40
    num_scenes: int = 27
    val_size: Union[int, float] = 0.1
    test_size: Union[int, float] = 0.1
    seed: int = 0
    normalize: str = "mgm"
    dataset: ClassVar[str] = "mgm_folder"

    def __post_init__(self) -> None:
        super().__post_init__()
        d = self.dataset
        object.__setattr__(self, "image_size", as_size(d, "image_size", self.image_size, allow_none=False))
        for name in ("num_classes", "num_scenes"):
            v = getattr(self, name)
            if not is_int(v) or v < 2:
                raise ValueError(f"{d}: {name} must be an int >= 2, got {v!r}")
        if self.num_classes > IGNORE:
            raise ValueError(f"{d}: num_classes must be at most {IGNORE} (255 marks unlabelled pixels), "
                             f"got {self.num_classes}")
        for name in ("val_size", "test_size"):
            v = getattr(self, name)
            if not (is_int(v) and v >= 1) and not (is_number(v) and not is_int(v) and 0 < v < 1):
                raise ValueError(f"{d}: {name} must be a fraction in (0, 1) or a count >= 1 (an int), got {v!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"{d}: seed must be a non-negative int, got {self.seed!r}")
        if self.normalize not in ("mgm", "imagenet"):
            raise ValueError(f"{d}: normalize must be 'mgm' or 'imagenet', got {self.normalize!r}")


# --------------------------------------------------------------------------------- layout
def scene_folders(root: str) -> List[str]:
    """The sorted scene folders of ``<root>/rgb`` (a scene's label is its position here)."""
    rgb = readers.require_dir(os.path.join(root, "rgb"), "RGB images, one folder per scene class")
    found = sorted(f for f in os.listdir(rgb) if os.path.isdir(os.path.join(rgb, f)))
    if not found:
        raise readers.DataCheckError(rgb, "one folder per scene class expected, found none")
    return found


def samples(root: str) -> List[Sample]:
    """Every sample, ordered by (scene, file name)."""
    out = []
    for index, scene in enumerate(scene_folders(root)):
        folder = os.path.join(root, "rgb", scene)
        names = sorted(f for f in os.listdir(folder) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
        if not names:
            raise readers.DataCheckError(folder, f"images ({', '.join(IMAGE_EXTENSIONS)}) expected, found none")
        out += [(index, scene, os.path.splitext(f)[0], f) for f in names]
    return out


def partition(n: int, p: MGMFolderParams) -> Dict[str, List[int]]:
    """Positions of the train / val / test samples among ``n``: a seeded permutation whose first
    ``test_size`` go to "test", the next ``val_size`` to "val", the rest to "train" (each sorted)."""
    def count(size: Union[int, float]) -> int:
        return int(size) if is_int(size) else int(round(size * n))

    n_test, n_val = count(p.test_size), count(p.val_size)
    if min(n_test, n_val) < 1 or n_test + n_val >= n:
        raise ValueError(f"mgm_folder: test_size {p.test_size!r} and val_size {p.val_size!r} give {n_test} test and "
                         f"{n_val} val of {n} samples; each split needs at least one - change them")
    order = np.random.default_rng(p.seed).permutation(n)
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {k: sorted(int(i) for i in v) for k, v in parts.items()}


def paths(root: str, sample: Sample) -> Dict[str, str]:
    """Folder -> file of one sample."""
    _, scene, stem, rgb_name = sample
    ext = {"rgb": rgb_name[len(stem):], "ss": ".npy", "de": ".npy", "nm": ".png", "msk": ".png"}
    return {f: os.path.join(root, f, scene, stem + ext[f]) for f in FOLDERS}


# -------------------------------------------------------------------------------- readers
def _map(path: str) -> np.ndarray:
    """An H x W (or H x W x 1) numeric .npy as H x W."""
    a = readers.read_npy(path)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
        raise readers.DataCheckError(path, f"a numeric H x W array expected, found {a.dtype} of shape {a.shape}")
    return a


def read_sample(root: str, sample: Sample, tasks: Sequence[str], p: MGMFolderParams) -> Dict[str, np.ndarray]:
    """Image (uint8 H x W x 3) and the dense ``tasks``' maps, with format and range checks."""
    files = paths(root, sample)
    out = {"image": readers.read_image(files["rgb"], "RGB")}
    h, w = out["image"].shape[:2]
    for task in tasks:
        if task == "semseg":
            a, path = _map(files["ss"]), files["ss"]
            ok = (a == np.round(a)) & (((a >= 0) & (a < p.num_classes)) | (a == IGNORE))
            readers.check_range(path, a, f"integers in 0..{p.num_classes - 1} or {IGNORE} (unlabelled)", ok)
            a = a.astype(np.int64)
        elif task == "depth":
            a, path = _map(files["de"]).astype(np.float32), files["de"]
            readers.check_range(path, a, "finite and >= 0", np.isfinite(a) & (a >= 0))
        elif task == "normals":
            path = files["nm"]
            code = readers.read_image(path, "RGB")
            mask = readers.read_image(files["msk"], "raw")
            if mask.ndim == 3:
                mask = mask[..., :3].max(axis=2)
            if mask.shape != code.shape[:2]:
                raise readers.DataCheckError(files["msk"], f"{code.shape[0]}x{code.shape[1]} like its normals "
                                                           f"expected, found {mask.shape[0]}x{mask.shape[1]}")
            a = 2.0 * code.astype(np.float32) / 255.0 - 1.0
            a[mask == 0] = 0.0
        else:  # scene: the folder, no file
            continue
        if a.shape[:2] != (h, w):
            raise readers.DataCheckError(path, f"{h}x{w} like its image expected, found {a.shape[0]}x{a.shape[1]}")
        out[task] = a
    return out


def verify(root: str, p: MGMFolderParams, decode: Optional[int]) -> Dict[str, int]:
    """Folders, scene folders, every file's existence, and decoding of ``decode`` samples."""
    readers.require_dir(root, "MGM data root")
    for folder in FOLDERS:
        what = "normals as RGB pngs; MGM's readme calls it sn" if folder == "nm" else f"{folder} of MGM's layout"
        readers.require_dir(os.path.join(root, folder), what)
    scenes = scene_folders(root)
    if len(scenes) != p.num_scenes:
        raise readers.DataCheckError(os.path.join(root, "rgb"), f"{p.num_scenes} scene folders expected (num_scenes), "
                                                                f"found {len(scenes)}: set num_scenes: {len(scenes)}")
    for folder in FOLDERS[1:]:
        for scene in scenes:
            readers.require_dir(os.path.join(root, folder, scene), f"scene {scene!r} of {folder}")
    items = samples(root)
    partition(len(items), p)  # the split sizes fit
    for sample in items:
        for folder, path in paths(root, sample).items():
            readers.require_file(path, f"{folder} of {sample[2]!r} in scene {sample[1]!r}")
    decoded = readers.decode_sample(len(items), decode)
    for i in decoded:
        read_sample(root, items[i], TASK_NAMES, p)
    return {"files": len(items) * len(FOLDERS), "decoded": len(decoded)}


@register_dataset("mgm_folder")
class MGMFolder(DiskDataset):
    """MGM's layout (rgb / ss / de / nm / msk, one folder per scene class): semseg, depth,
    normals and the scene label, split at random 80 / 10 / 10 or by counts."""

    NAME, TASK_NAMES, Params = "mgm_folder", TASK_NAMES, MGMFolderParams
    ROOT = "the MGM data folder (holding rgb/, ss/, de/, nm/, msk/)"
    HOLDOUT = None  # all three splits come from ``partition``
    SMOKE_PARAMS = {"max_samples": 8}
    verify = staticmethod(verify)  # the module's verify(root, p, decode)

    @classmethod
    def describe(cls, **params) -> DatasetInfo:
        p = cls.params_of(params)
        return DatasetInfo(
            name="mgm_folder",
            # MGM's Table 2: mIoU, mean absolute depth error, mean angular distance
            tasks={"semseg": Plugin("semseg", {"num_classes": p.num_classes}),
                   "depth": Plugin("depth", {"primary": "l1"}), "normals": Plugin("normals"), "scene": Plugin("scene", {"num_classes": p.num_scenes})},
            input_size=p.image_size,
            default_batch_sizes=(8, 16, 32),  # MGM trains with batch 32 (supp. B)
            notes=f"MGM's scene-folder layout; {p.num_classes} classes, {p.num_scenes} scenes; seeded random "
                  f"split, val {p.val_size!r} / test {p.test_size!r}",
        )

    def official_items(self, name: str) -> List[Sample]:
        everything = samples(self.root)
        return [everything[i] for i in partition(len(everything), self.params)[name]]

    def __getitem__(self, i: int) -> Dict[str, object]:
        p, size, sample = self.params, self.params.image_size, self.items[i]
        a = read_sample(self.root, sample, self.tasks, p)
        image = resize_map(torch.from_numpy(a["image"]).permute(2, 0, 1).float() / 255.0, size, "bilinear")
        image = (image - 0.5) / 0.5 if p.normalize == "mgm" else standardize(image, IMAGENET_MEAN, IMAGENET_STD)
        targets: Dict[str, torch.Tensor] = {}
        for task in self.tasks:
            if task == "scene":
                targets[task] = torch.tensor(sample[0], dtype=torch.long)
                continue
            x = torch.from_numpy(a[task])
            if task == "normals":
                x = x.permute(2, 0, 1)
            elif task == "depth":
                x = x[None]
            targets[task] = self.task_objects[task].resample(x, lambda m, mode: resize_map(m, size, mode))
        if self.augment and p.flip:
            image, targets = random_hflip(image, targets, self.task_objects)
        return self.make_item(image, targets)

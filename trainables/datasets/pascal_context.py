"""PASCAL-Context in the survey code's PASCAL_MT layout: semseg, parts, saliency, normals, edge.

Survey: Vandenhende et al., TPAMI 2021, Sec. 4.1.1, Tables 8-9; the PASCAL_MT archive of its
code (from ASTMT, Maninis et al., CVPR 2019; 4,998 train / 5,105 val). ``root`` holds:

    ImageSets/Context/{train,val}.txt   one image id per line
    JPEGImages/<id>.jpg                 RGB
    semseg/VOC12/<id>.png               one-channel labels 0..20, 255 = ignore
    semseg/pascal-context/<id>.png      the same, for ids without a VOC12 file
    human_parts/<id>.mat                PASCAL-Part annotation (below)
    normals_distill/<id>.png            RGB, n = 2 x / 255 - 1 (distilled)
    sal_distill/<id>.png                grey, salient iff x / 255 > 0.5 (distilled)
    pascal-context/trainval/<id>.mat    ``LabelMap``: the 459-class context labels

Targets (trainables/tasks formats):
    semseg       LongTensor [H, W]; ``semseg_source`` "auto" (the survey code's rule: VOC12 if
                 that file exists, else pascal-context), "voc12" or "pascal_context".
    human_parts  LongTensor [H, W] in 0..6 from ``loadmat(squeeze_me=True,
                 struct_as_record=False)["anno"]``, relying on: ``anno.objects`` (a struct or
                 an array of them) with ``class_ind`` (15 = person) and ``parts`` (empty, a
                 struct or an array) with ``part_name`` and ``mask`` [H, W]. Every part of
                 every person is painted in file order (later parts overwrite) with the survey
                 code's grouping PART_GROUPS (head, torso, upper / lower arms, upper / lower
                 legs); other pixels are background 0. No person with parts: mask False.
    saliency     FloatTensor [1, H, W] in {0, 1}.
    normals      FloatTensor [3, H, W], all-zero = invalid. The survey code also zeroes normals
                 outside the context classes that exist in NYUD (from two JSON tables of its
                 repository, not shipped): pass those LabelMap ids as ``normals_valid_labels``.
    edge         FloatTensor [1, H, W] in {0, 1}, the survey code's rule on ``LabelMap``: an
                 edge iff the 4-neighbour Laplacian sum(neighbours) - 4 * label is non-zero
                 (borders reflected as OpenCV's default), i.e. both sides of a boundary (2 px
                 wide), then thinned to 1 px (``edge_thin``) by Zhang & Suen's algorithm (CACM
                 1984) where the survey uses scikit-image's ``thin`` (they can differ on a few
                 junction pixels). Computed at the file's resolution, then resized.
Images: ImageNet mean / std. Every map is resized to ``image_size`` (default 512 x 512, the
survey code's): image and normals bilinear (normals renormalised), labels nearest.

Splits: "train" / "val" = seeded hold-out of the official train list (``val_fraction``),
"test" = the official val list (on which the survey code also selects - a known defect).

Augmentation (``augment=True``; the survey code's transforms): rotation by a uniform angle in
[-rotation, rotation] degrees and scaling by a uniform factor in ``scale_range`` about the
centre, then a horizontal flip with probability 1/2. Each target's task resamples it and fixes
its values (``Task.resample`` / ``rotate`` / ``hflip``: labels nearest, normals bilinear,
renormalised, rotated in-plane with the image as the survey code and x negated by a flip).
Pixels from outside the image are ignored (the task's ignore value: 255 / zero normals); the
survey code pads labels with 0 (background) instead.

Checks: id lists, folders, every file of both lists; decoding with range checks (semseg 0..20
or 255, maps the size of their image, known part names) of every sample of a list of <= 200
ids, else 200 evenly spaced ones (``prepare``: the first and last of each list).
The survey code's fixed loss weights: SURVEY_LOSS_WEIGHTS.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from trainables.datasets import readers
from trainables.datasets.base import DatasetInfo
from trainables.datasets.disk import DiskDataset
from trainables.datasets.label_edges import label_edges
from trainables.datasets.params import HoldoutParams, as_size, is_int, is_number
from trainables.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, hflip, standardize
from trainables.plugins import Plugin
from trainables.registry import register_dataset
from trainables.tasks.base import Task

TASK_NAMES = ("semseg", "human_parts", "saliency", "normals", "edge")
N_CLASSES, N_PARTS, PERSON_CLASS = 21, 7, 15
SURVEY_LOSS_WEIGHTS = {"semseg": 1.0, "human_parts": 2.0, "saliency": 5.0, "edge": 50.0, "normals": 10.0}
SEMSEG_DIRS = {"voc12": "VOC12", "pascal_context": "pascal-context"}
# The survey code's 6-part grouping of PASCAL-Part person parts (0 = background).
_GROUPS = {1: "hair head lear lebrow leye mouth nose rear rebrow reye", 2: "neck torso",
           3: "luarm ruarm", 4: "lhand llarm rhand rlarm", 5: "luleg ruleg", 6: "lfoot llleg rfoot rlleg"}
PART_GROUPS = {part: g for g, names in _GROUPS.items() for part in names.split()}
FOLDERS = ("JPEGImages", "human_parts", "normals_distill", "sal_distill", os.path.join("pascal-context", "trainval"))


@dataclass(frozen=True)
class PascalContextParams(HoldoutParams):
    """Parameters of the ``pascal_context`` loader (besides ``HoldoutParams``': max_samples, flip,
    val_fraction, seed).

    Attributes:
        image_size: [H, W] every sample is resized to (the survey code: 512 x 512).
        semseg_source: "auto" (VOC12 file if present, else pascal-context), "voc12" or
            "pascal_context".
        rotation: maximum |angle| in degrees of the random rotation (survey code: 20).
        scale_range: [lo, hi] of the uniform random scale (survey code: [0.75, 1.25]).
        edge_thin: thin the 2-px label boundaries to 1 px (the survey code does).
        normals_valid_labels: LabelMap ids where normals are kept (None: everywhere).
    """

    image_size: Tuple[int, int] = (512, 512)
    semseg_source: str = "auto"
    rotation: float = 20.0
    scale_range: Tuple[float, float] = (0.75, 1.25)
    edge_thin: bool = True
    normals_valid_labels: Optional[Tuple[int, ...]] = None
    dataset: ClassVar[str] = "pascal_context"

    def __post_init__(self) -> None:
        super().__post_init__()
        s, ids = self.scale_range, self.normals_valid_labels
        checks = [  # (field, valid?, what it must be)
            ("semseg_source", self.semseg_source in ("auto", *SEMSEG_DIRS), "'auto', 'voc12' or 'pascal_context'"),
            ("rotation", is_number(self.rotation) and 0 <= self.rotation <= 180, "a number of degrees in [0, 180]"),
            ("scale_range", isinstance(s, (list, tuple)) and len(s) == 2 and all(map(is_number, s))
             and 0 < s[0] <= s[1] <= 4, "[lo, hi] with 0 < lo <= hi <= 4"),
            ("edge_thin", isinstance(self.edge_thin, bool), "a bool"),
            ("normals_valid_labels", ids is None or isinstance(ids, (list, tuple)) and all(map(is_int, ids)),
             "a list of LabelMap ids or null"),
        ]
        for field, ok, what in checks:
            if not ok:
                raise ValueError(f"pascal_context: {field} must be {what}, got {getattr(self, field)!r}")
        object.__setattr__(self, "image_size", as_size("pascal_context", "image_size", self.image_size,
                                                        allow_none=False))
        object.__setattr__(self, "scale_range", (float(s[0]), float(s[1])))
        object.__setattr__(self, "normals_valid_labels", None if ids is None else tuple(ids))


# --------------------------------------------------------------------------------- readers
def official_ids(root: str, list_name: str) -> List[str]:
    """The ids of ``ImageSets/Context/<list_name>.txt`` ("train" or "val")."""
    readers.require_dir(root, "PASCAL_MT root")
    folder = readers.require_dir(os.path.join(root, "ImageSets", "Context"), "id lists")
    path = os.path.join(folder, f"{list_name}.txt")
    ids = readers.read_id_list(path)
    if len(set(ids)) != len(ids):
        raise readers.DataCheckError(path, "each id at most once; found duplicates")
    return ids


def paths(root: str, sample_id: str, semseg_source: str) -> Dict[str, str]:
    """File of each kind of one sample ("labelmap" = the context LabelMap .mat)."""
    if semseg_source == "auto":
        voc = os.path.join(root, "semseg", "VOC12", sample_id + ".png")
        seg = voc if os.path.isfile(voc) else os.path.join(root, "semseg", "pascal-context", sample_id + ".png")
    else:
        seg = os.path.join(root, "semseg", SEMSEG_DIRS[semseg_source], sample_id + ".png")
    return {"image": os.path.join(root, "JPEGImages", sample_id + ".jpg"), "semseg": seg,
            "human_parts": os.path.join(root, "human_parts", sample_id + ".mat"),
            "normals": os.path.join(root, "normals_distill", sample_id + ".png"),
            "saliency": os.path.join(root, "sal_distill", sample_id + ".png"),
            "labelmap": os.path.join(root, "pascal-context", "trainval", sample_id + ".mat")}


def _structs(x, path: str, what: str) -> list:
    """A loadmat(squeeze_me=True) struct field as a list: one struct, an array of them, or empty."""
    from scipy.io.matlab import mat_struct

    if isinstance(x, mat_struct):
        return [x]
    if isinstance(x, np.ndarray) and all(isinstance(e, mat_struct) for e in x.ravel()):
        return list(x.ravel())
    raise readers.DataCheckError(path, f"{what}: a struct (array) expected, found {type(x).__name__}")


def read_human_parts(path: str) -> Optional[np.ndarray]:
    """The 0..6 part map of ``path`` (see the module docstring), or None without a person."""
    from scipy.io import loadmat

    try:
        anno = loadmat(path, squeeze_me=True, struct_as_record=False)["anno"]
        objects = _structs(anno.objects, path, "anno.objects")
        persons = [(o, _structs(o.parts, path, "anno.objects.parts")) for o in objects
                   if int(o.class_ind) == PERSON_CLASS]
    except (OSError, ValueError, NotImplementedError, KeyError, AttributeError, TypeError) as err:
        if isinstance(err, readers.DataCheckError):
            raise
        raise readers.DataCheckError(path, f"PASCAL-Part .mat with anno.objects(.class_ind, .parts(.part_name, .mask)) "
                                          f"expected ({type(err).__name__}: {err})") from None
    target = None
    for _, parts in persons:
        for part in parts:
            name = str(part.part_name)
            if name not in PART_GROUPS:
                raise readers.DataCheckError(path, f"person part names {sorted(PART_GROUPS)} expected, found {name!r}")
            mask = np.asarray(part.mask).astype(bool)
            target = np.zeros(mask.shape, np.uint8) if target is None else target
            if mask.shape != target.shape:
                raise readers.DataCheckError(path, f"part masks of one size expected, found {mask.shape} and {target.shape}")
            target[mask] = PART_GROUPS[name]
    return target


def read_sample(files: Dict[str, str], kinds: Sequence[str], p: PascalContextParams) -> Dict[str, object]:
    """Decode the ``kinds`` of one sample with format and range checks (errors name the file).

    Values: image uint8 HxWx3; semseg uint8; human_parts uint8 or None; saliency / edge
    float32 {0, 1}; normals float32 HxWx3 - every map at its image's size.
    """
    image = readers.read_image(files["image"], "RGB")
    h, w = image.shape[:2]
    out: Dict[str, object] = {"image": image}
    labelmap = None
    if "edge" in kinds or ("normals" in kinds and p.normals_valid_labels is not None):
        labelmap = np.asarray(readers.read_mat(files["labelmap"], "LabelMap"))
        if labelmap.ndim != 2 or not np.issubdtype(labelmap.dtype, np.integer) and not np.issubdtype(labelmap.dtype, np.floating):
            raise readers.DataCheckError(files["labelmap"], f"2-D numeric LabelMap expected, found {labelmap.dtype} {labelmap.shape}")
        _same_size(files["labelmap"], labelmap, h, w)
    for kind in kinds:
        path = files["labelmap" if kind == "edge" else kind]
        if kind == "semseg":
            a = readers.read_image(path, "raw")
            if a.ndim != 2 or a.dtype != np.uint8:
                raise readers.DataCheckError(path, f"single-channel uint8 label png expected, found {a.dtype} {a.shape}")
            readers.check_range(path, a, f"class ids 0..{N_CLASSES - 1} or 255", (a < N_CLASSES) | (a == 255))
        elif kind == "human_parts":
            a = read_human_parts(path)
        elif kind == "saliency":
            a = (readers.read_image(path, "L").astype(np.float32) / 255.0 > 0.5).astype(np.float32)
        elif kind == "normals":
            a = 2.0 * readers.read_image(path, "RGB").astype(np.float32) / 255.0 - 1.0
            if p.normals_valid_labels is not None:
                a[~np.isin(labelmap, p.normals_valid_labels)] = 0.0
        else:  # edge
            a = label_edges(labelmap, p.edge_thin)
        if a is not None:
            _same_size(path, a, h, w)
        out[kind] = a
    return out


def _same_size(path: str, a: np.ndarray, h: int, w: int) -> None:
    if a.shape[:2] != (h, w):
        raise readers.DataCheckError(path, f"{h}x{w} like its image expected, found {a.shape[0]}x{a.shape[1]}")


def verify(root: str, p: PascalContextParams, decode: Optional[int]) -> Dict[str, int]:
    """Folders, id lists, every file's existence, and decoding of ``decode`` samples per list."""
    for folder in FOLDERS:
        readers.require_dir(os.path.join(root, folder), f"PASCAL_MT {folder}")
    seg_dirs = SEMSEG_DIRS.values() if p.semseg_source == "auto" else [SEMSEG_DIRS[p.semseg_source]]
    if not any(os.path.isdir(os.path.join(root, "semseg", d)) for d in seg_dirs):
        readers.require_dir(os.path.join(root, "semseg", next(iter(seg_dirs))), "PASCAL_MT semseg labels")
    n_files = n_decoded = 0
    for list_name in ("train", "val"):
        ids = official_ids(root, list_name)
        for sample_id in ids:
            for kind, path in paths(root, sample_id, p.semseg_source).items():
                readers.require_file(path, f"{kind} of id {sample_id!r} in ImageSets/Context/{list_name}.txt")
                n_files += 1
        for i in readers.decode_sample(len(ids), decode):
            read_sample(paths(root, ids[i], p.semseg_source), TASK_NAMES, p)
            n_decoded += 1
    return {"files": n_files, "decoded": n_decoded}


# ----------------------------------------------------------------------------- geometry
def _grid(h: int, w: int, size: Tuple[int, int], angle: float, scale: float) -> torch.Tensor:
    """grid_sample grid of the output pixel centres: resize h x w -> size after rotating by
    ``angle`` degrees (counter-clockwise on screen, as OpenCV's getRotationMatrix2D) and
    scaling by ``scale`` about the image centre. p_out = s R (p_in - c) + c is inverted."""
    ys = (torch.arange(size[0], dtype=torch.float64) + 0.5) * h / size[0] - 0.5
    xs = (torch.arange(size[1], dtype=torch.float64) + 0.5) * w / size[1] - 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    cx, cy, a = (w - 1) / 2, (h - 1) / 2, math.radians(angle)
    dx, dy = xx - cx, yy - cy
    x_in = (math.cos(a) * dx - math.sin(a) * dy) / scale + cx
    y_in = (math.sin(a) * dx + math.cos(a) * dy) / scale + cy
    return torch.stack([(2 * x_in + 1) / w - 1, (2 * y_in + 1) / h - 1], dim=-1)[None].float()


def _sample(x: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    return F.grid_sample(x[None], grid, mode=mode, padding_mode="zeros", align_corners=False)[0]


def geometry(image: torch.Tensor, targets: Mapping[str, torch.Tensor], tasks: Mapping[str, Task],
             size: Tuple[int, int], angle: float = 0.0, scale: float = 1.0, flip: bool = False):
    """Rotate / scale / resize / flip ``image`` [3, H, W] and the dense ``targets`` together.

    Each target's task resamples it (``Task.resample``: labels nearest, normals bilinear and
    renormalised; the task's ignore value where the output pixel comes from outside the image),
    rotates its values with the image (``Task.rotate``) and mirrors it (``Task.hflip``).
    """
    h, w = image.shape[-2:]
    grid = _grid(h, w, size, angle, scale)
    inside = _sample(torch.ones(1, h, w), grid, "nearest")[0] > 0.5
    warp = lambda x, mode: _sample(x, grid, mode)  # noqa: E731
    image = _sample(image, grid, "bilinear")
    out = {k: tasks[k].rotate(tasks[k].resample(t, warp, inside), angle) for k, t in targets.items()}
    return hflip(image, out, tasks) if flip else (image, out)


# ------------------------------------------------------------------------------ dataset
@register_dataset("pascal_context")
class PascalContext(DiskDataset):
    """PASCAL-Context (survey PASCAL_MT layout): semseg, human parts, saliency, normals, edge.

    Args:
        root: the PASCAL_MT folder.
        split: "train" / "val" (seeded hold-out of the official train list) or "test" (the
            official val list).
        tasks: a subset of TASK_NAMES.
        augment: random rotation, scaling and flips (see the module docstring).
        **params: PascalContextParams fields.
    """

    NAME, TASK_NAMES, Params, ROOT = "pascal_context", TASK_NAMES, PascalContextParams, "the PASCAL_MT folder"
    ROOT_HINTS = dict.fromkeys(("prepare", "check", "init"), "(--data-root / dataset.root)")
    SMOKE_PARAMS = {"max_samples": 8, "image_size": (128, 128)}
    SURVEY_LOSS_WEIGHTS = SURVEY_LOSS_WEIGHTS  # for presets: the "fixed" balancer's weights
    verify = staticmethod(verify)  # the module's verify(root, p, decode)
    ids = property(lambda self: self.items, doc="the official id of each item")

    @classmethod
    def describe(cls, **params) -> DatasetInfo:
        p = cls.params_of(params)
        return DatasetInfo(
            name="pascal_context",
            tasks={"semseg": Plugin("semseg", {"num_classes": N_CLASSES}),
                   "human_parts": Plugin("human_parts", {"num_classes": N_PARTS}),
                   # the survey's tables print saliency as mIoU ("Sal (mIoU)", Tables 8-9)
                   "saliency": Plugin("saliency", {"primary": "miou"}),
                   "normals": Plugin("normals"),
                   "edge": Plugin("edge", {"pos_weight": 0.95})},
            input_size=p.image_size,
            # Not in the survey's text; its code's PASCAL configs use 6 (ResNet-18) and 8 (HRNet-18).
            default_batch_sizes=(4, 6, 8),
            notes=f"PASCAL-Context (PASCAL_MT layout): official val served as test; 21 classes, 6 parts + "
                  f"background; survey code's fixed loss weights {SURVEY_LOSS_WEIGHTS}",
        )

    def official_items(self, name: str) -> List[str]:
        return official_ids(self.root, name)

    def __getitem__(self, i: int) -> Dict[str, object]:
        p = self.params
        a = read_sample(paths(self.root, self.items[i], p.semseg_source), self.tasks, p)
        h, w = a["image"].shape[:2]
        image = torch.from_numpy(a["image"]).permute(2, 0, 1).float() / 255.0
        mask = {t: torch.tensor(a[t] is not None) for t in self.tasks}
        # human_parts of an image without a labelled person: all ignored, mask False
        targets = {t: torch.full((h, w), 255, dtype=torch.long) if a[t] is None else _as_target(a[t])
                   for t in self.tasks}
        if self.augment:  # angle, scale, flip (torch's generator: DataLoader workers seed it)
            (lo, hi), u = p.scale_range, torch.rand(3)
            draw = float((2 * u[0] - 1) * p.rotation), float(lo + (hi - lo) * u[1]), p.flip and bool(u[2] < 0.5)
        else:
            draw = 0.0, 1.0, False
        image, targets = geometry(image, targets, self.task_objects, p.image_size, *draw)
        return self.make_item(standardize(image, IMAGENET_MEAN, IMAGENET_STD), targets, mask)


def _as_target(a: np.ndarray) -> torch.Tensor:
    """A decoded array in its task's format: uint8 labels -> LongTensor [H, W], a float map
    [H, W] -> [1, H, W], H x W x 3 normals -> [3, H, W]."""
    t = torch.from_numpy(a)
    if a.dtype == np.uint8:
        return t.long()
    return t[None] if a.ndim == 2 else t.permute(2, 0, 1)

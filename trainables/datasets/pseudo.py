"""Pseudo-tasks: extra tasks whose labels are low-quality copies of a real task's, or precomputed.

IAL (Li et al., "Unprejudiced Training Auxiliary Tasks Makes Primary Better", Sec. IV-D, Tables IV-VI) adds "pseudo tasks" as auxiliary tasks: labels
predicted by large pre-trained models (80-class COCO segmentation with pixels under a score of
0.5 ignored, 1000-class ImageNet classification), noisy but informative, to test how a weighting
method copes with interfering auxiliary tasks. Such labels can be brought as files (``folder``);
without them the pseudo-labels are made from the dataset itself - the same role (low-quality
labels next to the real ones) with a controlled noise level:

    corrupt   class labels: each labelled element replaced, with probability ``strength``, by a
              uniformly random class; regression targets: + N(0, (strength * s)^2), s the
              standard deviation of the image's valid target values
    blur      the target average-pooled by ``factor`` and upsampled back (class labels: nearest),
              like a coarse model's prediction
    noise     Auto-Lambda's "noise" task (Liu et al., TMLR 2022, Sec. 5.2): a fixed random map per
              image of the source task's shape (N(0, 1) values; random classes for class labels),
              unrelated to the image - an auxiliary task that can only interfere
    folder    precomputed class labels, one .npy per sample (below), e.g. a COCO or ImageNet
              model's predictions

Each made pseudo-label depends only on (``seed``, split, item index, task name), so it is the
same in every epoch, on every worker and in every trial; elements the source task marks as
ignored stay ignored, and a pseudo-task is labelled exactly where its source is.

Folder layout (``{kind: folder, path: <dir>, type: <task type>, params: {...}}``): the file of
item i is ``<dir>/<split folder>/<sample id>.npy``, keyed by the wrapped dataset's own sample
ids, so a seeded hold-out split reads the files of the samples it holds:

    loaders read from disk    split folder = the official list the split comes from ("train"
                              for train and val, "val" / "test" for test, e.g. ``train`` and
                              ``val`` for MTAN's sets, ``train`` / ``test`` for CIFAR-100);
                              sample id = the loader's own id: MTAN's sample number ``17``,
                              PASCAL's image id ``2008_000002``, CIFAR-100's row; two-level ids
                              are sub-folders (Cityscapes ``aachen/aachen_000000_000019``)
    synthetic                 split folder = the split, sample id = the item index

The task ``type`` must take class labels (a type with ``num_classes``), ``params`` are its
parameters: a dense type (``semseg``) reads an integer H x W map of the served image's size with
values in 0..C-1 or the task's ignore value (``ignore_index``, default 255 - IAL's pixels under
the score threshold); an image-level type (``scene``) a 0-d integer array in 0..C-1 (hard labels:
IAL's soft ImageNet distributions and token labels have no task type here). ``prepare`` checks
every file of every split before training - the folders, each file, its shape and dtype (the
served size from each split's first item; every loader here serves one size), the values of
each split's first and last - and each read checks them again; every error is one line naming
the file and the fix. A dense folder pseudo-label is not augmented, so the wrapped dataset is
then built without augmentation (IAL trains its pseudo-task studies without it, Sec. IV-D).

The ``pseudo`` dataset wraps any dataset: ``{name: pseudo, params: {base: {name: synthetic,
params: {...}}, pseudo: {semseg_noisy: {source: semseg, kind: corrupt, strength: 0.3}, noise:
{source: depth, kind: noise}}}}``; the pseudo-tasks then exist like any task of the study -
typically as ``auxiliary_tasks`` (trained, not scored). A made one takes its source's task type
and parameters (loss, metric, class count); a folder one its own ``type`` and ``params``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.datasets import readers
from trainables.datasets.base import SPLITS, DatasetInfo, make_tasks
from trainables.plugins import Configurable, Plugin
from trainables.registry import DATASETS, TASKS, register_dataset
from trainables.tasks.base import Task

KINDS = ("corrupt", "blur", "noise", "folder")
MADE_KEYS = ("source", "kind", "strength", "factor")
FOLDER_KEYS = ("kind", "path", "type", "params")


def is_folder(spec: Mapping[str, Any]) -> bool:
    return spec.get("kind", "corrupt") == "folder"


def folder_task(name: str, spec: Mapping[str, Any]) -> Task:
    """The task object of folder pseudo-task ``name``."""
    return TASKS.get(spec["type"])(name, params=dict(spec.get("params") or {}))


@dataclass(frozen=True)
class PseudoParams:
    """Hyper-parameters of the ``pseudo`` dataset (see the module docstring).

    Attributes:
        base: the wrapped dataset, ``{name, params}``.
        pseudo: pseudo-task name -> {source: a task of the base dataset, kind: corrupt | blur |
            noise, strength: corruption probability / noise scale in [0, 1] (corrupt; default
            0.3), factor: pooling factor >= 2 (blur; default 4)}, or {kind: folder, path: the
            folder of the .npy files, type: a class-label task type, params: its parameters}.
        seed: the pseudo-labels' seed.
    """

    base: Plugin = Plugin("synthetic")
    pseudo: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", Plugin.of(self.base, "pseudo.base"))
        if self.base.name == "pseudo":
            raise ValueError("pseudo: base must be a real dataset, not another pseudo dataset")
        for name, spec in self.pseudo.items():
            where = f"pseudo: pseudo.{name}"
            if spec.get("kind", "corrupt") not in KINDS:
                raise ValueError(f"{where}.kind: {spec.get('kind')!r} is not one of {', '.join(KINDS)}")
            if is_folder(spec):
                _check_folder_spec(where, name, spec)
                continue
            unknown = sorted(set(spec) - set(MADE_KEYS))
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {unknown}; accepted: {', '.join(MADE_KEYS)} "
                                 f"(kind folder: {', '.join(FOLDER_KEYS)})")
            if "source" not in spec:
                raise ValueError(f"{where}: give the source task, e.g. source: semseg")
            strength = spec.get("strength", 0.3)
            if not (isinstance(strength, (int, float)) and 0 <= strength <= 1):
                raise ValueError(f"{where}.strength: {strength!r} must be in [0, 1]")
            factor = spec.get("factor", 4)
            if not (isinstance(factor, int) and not isinstance(factor, bool) and factor >= 2):
                raise ValueError(f"{where}.factor: {factor!r} must be an integer >= 2")


def _check_folder_spec(where: str, name: str, spec: Mapping[str, Any]) -> None:
    unknown = sorted(set(spec) - set(FOLDER_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; accepted with kind folder: {', '.join(FOLDER_KEYS)}")
    path = spec.get("path")
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}.path: give the folder holding <split folder>/<sample id>.npy, got {path!r}")
    if spec.get("type") not in TASKS:
        raise ValueError(f"{where}.type: {spec.get('type')!r} is not a task type; valid: {', '.join(TASKS.names())}")
    if not isinstance(spec.get("params") or {}, Mapping):
        raise ValueError(f"{where}.params: the task type's parameters as a mapping, got {spec.get('params')!r}")
    try:
        task = folder_task(name, spec)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}.params: {err}") from None
    if not hasattr(task, "num_classes"):
        raise ValueError(f"{where}.type: {spec['type']!r} does not take class labels; folder pseudo-labels are "
                         "class labels: use a type with num_classes (semseg for maps, scene for image labels)")


@register_dataset("pseudo")
class PseudoTasks(torch.utils.data.Dataset, Configurable):
    """A dataset plus pseudo-tasks: noisy copies of its own labels or precomputed class labels (IAL's pseudo tasks)."""

    Params = PseudoParams

    @classmethod
    def _base_info(cls, p: PseudoParams) -> DatasetInfo:
        return DATASETS.get(p.base.name).describe(**p.base.params)

    @classmethod
    def describe(cls, **params) -> DatasetInfo:
        p = cls.params_of(params)
        info = cls._base_info(p)
        for name, spec in p.pseudo.items():
            if name in info.tasks:
                raise ValueError(f"pseudo: pseudo.{name}: the base dataset {p.base.name!r} already has a task {name!r}")
            if not is_folder(spec) and spec["source"] not in info.tasks:
                raise ValueError(f"pseudo: pseudo.{name}.source: {spec['source']!r} is not a task of {p.base.name!r}; "
                                 f"it offers {sorted(info.tasks)}")
        tasks = {**info.tasks, **{name: Plugin(spec["type"], dict(spec.get("params") or {})) if is_folder(spec)
                                  else info.tasks[spec["source"]] for name, spec in p.pseudo.items()}}
        return DatasetInfo(name=f"pseudo({info.name})", tasks=tasks, input_size=info.input_size,
                           default_batch_sizes=info.default_batch_sizes,
                           notes=f"{info.notes}; pseudo-tasks: " + ", ".join(
                               f"{n} (folder {s['path']})" if is_folder(s) else f"{n} ({s.get('kind', 'corrupt')} of "
                               f"{s['source']})" for n, s in p.pseudo.items()))

    @classmethod
    def smoke_params(cls, params: Mapping[str, Any]) -> Dict[str, Any]:
        """``--smoke``: the wrapped dataset's own smoke parameters."""
        p = cls.params_of(params)
        base_cls = DATASETS.get(p.base.name)
        base = {**dict(p.base.params), **getattr(base_cls, "SMOKE_PARAMS", {})}
        return {**dict(params), "base": {"name": p.base.name, "params": base}}

    @classmethod
    def prepare(cls, root: Optional[str] = None, **params):
        """The wrapped dataset's ``prepare``, then every folder pseudo-label file (module docstring)."""
        p = cls.params_of(params)
        prepared = DATASETS.get(p.base.name).prepare(root, **p.base.params)
        folders = {name: spec for name, spec in p.pseudo.items() if is_folder(spec)}
        for split in SPLITS if folders else ():
            base = DATASETS.get(p.base.name)(root=root, split=split, tasks=[], **p.base.params)
            size = tuple(base[0]["image"].shape[-2:]) if len(base) else None
            for name, spec in folders.items():
                task = folder_task(name, spec)
                files = [sample_file(base, i, spec["path"]) for i in range(len(base))]
                for path in dict.fromkeys(os.path.dirname(f) for f in files):
                    readers.require_dir(path, f"pseudo-labels of pseudo-task {name!r} for the {split} split, one "
                                              f"<sample id>.npy per sample; write them there or fix pseudo.{name}.path")
                for path in files:
                    check_header(path, name, task, size)
                for i in readers.decode_sample(len(files), 2):
                    read_label(files[i], name, task, size)
        return prepared

    def __init__(self, root: Optional[str], split: str, tasks: Sequence[str], augment: bool = False, **params):
        self.params = p = self.params_of(params)
        info = self.describe(**params)
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        unknown = [t for t in tasks if t not in info.tasks]
        if unknown:
            raise ValueError(f"pseudo: unknown task(s) {unknown}; valid tasks: {sorted(info.tasks)}")
        self.tasks = tasks
        self.task_objects = make_tasks(info, tasks)
        self.pseudo = {t: dict(p.pseudo[t]) for t in tasks if t in p.pseudo}
        made = [s["source"] for s in self.pseudo.values() if not is_folder(s)]
        needed = list(dict.fromkeys([t for t in tasks if t not in p.pseudo] + made))
        # a dense folder label cannot follow the base's random crops and flips: no augmentation then
        fixed = any(is_folder(s) and self.task_objects[t].kind == "dense" for t, s in self.pseudo.items())
        self.base = DATASETS.get(p.base.name)(root=root, split=split, tasks=needed, augment=augment and not fixed,
                                              **p.base.params)
        self.split = split

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str):  # source_indices etc. of the wrapped dataset
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        item = self.base[i]
        targets, mask = dict(item["targets"]), dict(item["mask"])
        for name, spec in self.pseudo.items():
            if is_folder(spec):
                path = sample_file(self.base, i, spec["path"])
                targets[name] = read_label(path, name, self.task_objects[name], tuple(item["image"].shape[-2:]))
                mask[name] = torch.tensor(True)
                continue
            source = spec["source"]
            g = torch.Generator().manual_seed(_seed(self.params.seed, self.split, i, name))
            targets[name] = pseudo_label(targets[source], self.task_objects[name], spec, g)
            mask[name] = mask[source]
        return {**item, "targets": {t: targets[t] for t in self.tasks}, "mask": {t: mask[t] for t in self.tasks}}


def sample_file(base, i: int, folder: str) -> str:
    """``<folder>/<split folder>/<sample id>.npy`` of item ``i`` of dataset ``base`` (module docstring)."""
    if not hasattr(base, "official_split"):  # synthetic: its items are the split's indices
        return os.path.join(folder, base.split, f"{i}.npy")
    item = base.items[i]
    sample = os.path.join(*map(str, item)) if isinstance(item, tuple) else str(item)
    return os.path.join(folder, base.official_split, f"{sample}.npy")


def check_header(path: str, name: str, task: Task, size: Optional[Tuple[int, int]]) -> None:
    """The file exists and holds integer labels of the shape ``task`` needs (the data is not read)."""
    readers.require_file(path, f"pseudo-label of pseudo-task {name!r}; write it there or fix pseudo.{name}.path")
    try:
        header = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise readers.DataCheckError(path, f"not a readable .npy array ({err}); save it with numpy.save") from None
    _check_format(path, name, task, header.shape, header.dtype, size)


def _check_format(path: str, name: str, task: Task, shape: tuple, dtype: np.dtype,
                  size: Optional[Tuple[int, int]]) -> None:
    if not np.issubdtype(dtype, np.integer):
        raise readers.DataCheckError(path, f"integer class labels expected for pseudo-task {name!r}, found {dtype}; "
                                          "save them with an integer dtype, e.g. numpy.int64")
    want, what = ((tuple(size) if size else shape), "a map the size of its served image") \
        if task.kind == "dense" else ((), "one class index per image, a 0-d array")
    if shape != want or (task.kind == "dense" and len(shape) != 2):
        raise readers.DataCheckError(path, f"shape {want} ({what}) expected for pseudo-task {name!r}, "
                                          f"found {shape}; save the labels in that shape")


def read_label(path: str, name: str, task: Task, size: Optional[Tuple[int, int]]) -> Tensor:
    """A folder pseudo-label as a LongTensor, with the checks of ``check_header`` and of its values."""
    readers.require_file(path, f"pseudo-label of pseudo-task {name!r}; write it there or fix pseudo.{name}.path")
    a = readers.read_npy(path)
    _check_format(path, name, task, a.shape, a.dtype, size)
    t = torch.from_numpy(a.astype(np.int64))
    c = task.num_classes
    ok = ((t >= 0) & (t < c)) | task.ignored(t)
    readers.check_range(path, a, f"classes 0..{c - 1}" + (f" or {task.ignore_value:g} (ignored)" if task.kind == "dense"
                                                           else ""), ok.numpy())
    return t


def pseudo_label(target: Tensor, task, spec: Mapping[str, Any], g: torch.Generator) -> Tensor:
    """The pseudo-label of one sample's ``target`` (see the module docstring)."""
    kind, classes = spec.get("kind", "corrupt"), not target.is_floating_point()
    ignored = task.ignored(target) if target.dim() > 0 else torch.zeros((), dtype=torch.bool)
    if kind == "noise":
        out = (torch.randint(0, task.out_channels, target.shape, generator=g) if classes
               else torch.randn(target.shape, generator=g))
    elif kind == "corrupt":
        strength = float(spec.get("strength", 0.3))
        if classes:
            flip = torch.rand(target.shape, generator=g) < strength
            out = torch.where(flip, torch.randint(0, task.out_channels, target.shape, generator=g), target)
        else:
            valid = target[~ignored] if ignored.any() else target.flatten()
            scale = float(valid.std()) if valid.numel() > 1 else 0.0
            out = target + strength * scale * torch.randn(target.shape, generator=g)
    else:  # blur
        factor = int(spec.get("factor", 4))
        if target.dim() < 2:
            return target.clone()
        x = target[None].float() if target.dim() == 3 else target[None, None].float()
        size = x.shape[-2:]
        small = F.avg_pool2d(x, factor, ceil_mode=True) if not classes else x[..., ::factor, ::factor]
        up = F.interpolate(small, size=size, mode="nearest" if classes else "bilinear",
                           **({} if classes else {"align_corners": False}))
        out = up[0] if target.dim() == 3 else up[0, 0]
        out = out.to(target.dtype)
    out = out.to(target.dtype)
    return torch.where(ignored, target, out) if ignored.any() else out


def _seed(seed: int, split: str, index: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}/{split}/{index}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


__all__: List[str] = ["PseudoTasks", "pseudo_label", "read_label", "sample_file"]

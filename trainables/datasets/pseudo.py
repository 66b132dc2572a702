"""Noisy pseudo-tasks: extra tasks whose labels are low-quality copies of a real task's.

IAL (seeds/002_..., Sec. IV-D, Tables IV-VI) adds "pseudo tasks" as auxiliary tasks: labels
predicted by large pre-trained models (COCO segmentation, ImageNet classification), noisy but
informative, to test how a weighting method copes with interfering auxiliary tasks. No
pre-trained model can be downloaded here, so the pseudo-labels are made from the dataset
itself - the same role (low-quality labels next to the real ones) with a controlled noise level:

    corrupt   class labels: each labelled element replaced, with probability ``strength``, by a
              uniformly random class; regression targets: + N(0, (strength * s)^2), s the
              standard deviation of the image's valid target values
    blur      the target average-pooled by ``factor`` and upsampled back (class labels: nearest),
              like a coarse model's prediction
    noise     Auto-Lambda's "noise" task (Liu et al., TMLR 2022, Sec. 5.2): a fixed random map per
              image of the source task's shape (N(0, 1) values; random classes for class labels),
              unrelated to the image - an auxiliary task that can only interfere

Each pseudo-label depends only on (``seed``, split, item index, task name), so it is the same
in every epoch, on every worker and in every trial; elements the source task marks as ignored
stay ignored, and a pseudo-task is labelled exactly where its source is.

The ``pseudo`` dataset wraps any dataset: ``{name: pseudo, params: {base: {name: synthetic,
params: {...}}, pseudo: {semseg_noisy: {source: semseg, kind: corrupt, strength: 0.3}, noise:
{source: depth, kind: noise}}}}``; the pseudo-tasks then exist like any task of the study -
typically as ``auxiliary_tasks`` (trained, not scored). Each takes its source's task type and
parameters (loss, metric, class count).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.datasets.base import DatasetInfo, make_tasks
from trainables.plugins import Configurable, Plugin
from trainables.registry import DATASETS, register_dataset

KINDS = ("corrupt", "blur", "noise")


@dataclass(frozen=True)
class PseudoParams:
    """Hyper-parameters of the ``pseudo`` dataset (see the module docstring).

    Attributes:
        base: the wrapped dataset, ``{name, params}``.
        pseudo: pseudo-task name -> {source: a task of the base dataset, kind: corrupt | blur |
            noise, strength: corruption probability / noise scale in [0, 1] (corrupt; default
            0.3), factor: pooling factor >= 2 (blur; default 4)}.
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
            unknown = sorted(set(spec) - {"source", "kind", "strength", "factor"})
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {unknown}; accepted: source, kind, strength, factor")
            if "source" not in spec:
                raise ValueError(f"{where}: give the source task, e.g. source: semseg")
            if spec.get("kind", "corrupt") not in KINDS:
                raise ValueError(f"{where}.kind: {spec.get('kind')!r} is not one of {', '.join(KINDS)}")
            strength = spec.get("strength", 0.3)
            if not (isinstance(strength, (int, float)) and 0 <= strength <= 1):
                raise ValueError(f"{where}.strength: {strength!r} must be in [0, 1]")
            factor = spec.get("factor", 4)
            if not (isinstance(factor, int) and not isinstance(factor, bool) and factor >= 2):
                raise ValueError(f"{where}.factor: {factor!r} must be an integer >= 2")


@register_dataset("pseudo")
class PseudoTasks(torch.utils.data.Dataset, Configurable):
    """A dataset plus noisy pseudo-tasks made from its own labels (IAL's pseudo tasks, Auto-Lambda's noise task)."""

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
            if spec["source"] not in info.tasks:
                raise ValueError(f"pseudo: pseudo.{name}.source: {spec['source']!r} is not a task of {p.base.name!r}; "
                                 f"it offers {sorted(info.tasks)}")
        tasks = {**info.tasks, **{name: info.tasks[spec["source"]] for name, spec in p.pseudo.items()}}
        return DatasetInfo(name=f"pseudo({info.name})", tasks=tasks, input_size=info.input_size,
                           default_batch_sizes=info.default_batch_sizes,
                           notes=f"{info.notes}; pseudo-tasks: " + ", ".join(
                               f"{n} ({s.get('kind', 'corrupt')} of {s['source']})" for n, s in p.pseudo.items()))

    @classmethod
    def smoke_params(cls, params: Mapping[str, Any]) -> Dict[str, Any]:
        """``--smoke``: the wrapped dataset's own smoke parameters."""
        p = cls.params_of(params)
        base_cls = DATASETS.get(p.base.name)
        base = {**dict(p.base.params), **getattr(base_cls, "SMOKE_PARAMS", {})}
        return {**dict(params), "base": {"name": p.base.name, "params": base}}

    @classmethod
    def prepare(cls, root: Optional[str] = None, **params):
        p = cls.params_of(params)
        return DATASETS.get(p.base.name).prepare(root, **p.base.params)

    def __init__(self, root: Optional[str], split: str, tasks: Sequence[str], augment: bool = False, **params):
        self.params = p = self.params_of(params)
        info = self.describe(**params)
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        unknown = [t for t in tasks if t not in info.tasks]
        if unknown:
            raise ValueError(f"pseudo: unknown task(s) {unknown}; valid tasks: {sorted(info.tasks)}")
        self.tasks = tasks
        self.pseudo = {t: dict(p.pseudo[t]) for t in tasks if t in p.pseudo}
        needed = list(dict.fromkeys([t for t in tasks if t not in p.pseudo] + [s["source"] for s in self.pseudo.values()]))
        self.base = DATASETS.get(p.base.name)(root=root, split=split, tasks=needed, augment=augment, **p.base.params)
        self.split = split
        self.task_objects = make_tasks(info, tasks)

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
            source = spec["source"]
            g = torch.Generator().manual_seed(_seed(self.params.seed, self.split, i, name))
            targets[name] = pseudo_label(targets[source], self.task_objects[name], spec, g)
            mask[name] = mask[source]
        return {**item, "targets": {t: targets[t] for t in self.tasks}, "mask": {t: mask[t] for t in self.tasks}}


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


__all__: List[str] = ["PseudoTasks", "pseudo_label"]

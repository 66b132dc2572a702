"""The JSON summary of ``mtl data check``: what a dataset serves, split by split.

Per split the number of samples; per task (and for the image) the shape, dtype and value range
of the served tensors and the fraction of their elements that carry no label, as the task
itself defines it (``Task.ignored``: semseg's ignore index, depth <= min_depth, all-zero
normals, NaN offsets, ...). Only labelled samples (mask True) are counted.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Mapping

import torch

from trainables.tasks.base import Task


def summarize(make: Callable[[str], torch.utils.data.Dataset], splits: Iterable[str], tasks: Mapping[str, Task],
              max_samples: int = 8) -> Dict:
    """The summary over the first ``max_samples`` items of each split.

    Args:
        make: builds the dataset of a split (no augmentation).
        splits: the splits to summarise.
        tasks: the task of every target name the items carry (see ``base.make_tasks``).
    """
    summary: Dict = {"splits": {}, "tasks": {}}
    for split in splits:
        ds = make(split)
        summary["splits"][split] = len(ds)
        for i in range(min(max_samples, len(ds))):
            item = ds[i]
            image = item["image"]
            entry = summary["tasks"].setdefault("image", _stats_entry(image))
            _update_stats(entry, image, torch.zeros_like(image, dtype=torch.bool))
            for name, target in item["targets"].items():
                if not bool(item["mask"][name]):
                    continue
                entry = summary["tasks"].setdefault(name, _stats_entry(target))
                _update_stats(entry, target, tasks[name].ignored(target))
    for entry in summary["tasks"].values():
        entry["ignored_fraction"] = entry.pop("_ignored") / max(1, entry.pop("_count"))
    return summary


def _stats_entry(t: torch.Tensor) -> Dict:
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "min": None, "max": None,
            "_ignored": 0, "_count": 0}


def _update_stats(entry: Dict, t: torch.Tensor, ignored: torch.Tensor) -> None:
    valid = t[~ignored]
    if valid.numel():
        lo, hi = float(valid.min()), float(valid.max())
        entry["min"] = lo if entry["min"] is None else min(entry["min"], lo)
        entry["max"] = hi if entry["max"] is None else max(entry["max"], hi)
    entry["_ignored"] += int(ignored.sum())
    entry["_count"] += int(ignored.numel())

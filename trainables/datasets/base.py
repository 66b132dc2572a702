"""The dataset contract.

A dataset plug-in is a ``torch.utils.data.Dataset`` class registered by name. It is built as
``cls(root=..., split=..., tasks=[...], augment=bool, **params)`` (``augment`` is
True only for the training split) and every item is a dict:

    {"image": FloatTensor[3, H, W] (normalised),
     "targets": {task: tensor},          # see trainables/tasks for each task's target format
     "mask": {task: BoolTensor[]}}       # True where the sample carries that task's label

A sample that lacks a label still carries a dummy target of the right shape and dtype (so the
default collate works) with ``mask`` False.

Class methods every dataset plug-in provides:
    describe(**params) -> DatasetInfo   # cheap, no I/O: tasks offered (each a task type with its
                                         # parameters), input size, batch sizes
    prepare(root, **params) -> str|None  # driver-side, before any Ray work: generate / check;
                                         # the constructor takes the same ``root``
Class attribute ``Params``: the frozen dataclass of its keyword arguments (built with
``plugins.make_params``, labelled "dataset '<name>'"). Optional class attribute
``SMOKE_PARAMS``: parameters ``--smoke`` overrides to shrink the data. The real-data loaders
implement ``prepare`` / ``check`` and the split selection once, in
``trainables.datasets.disk.DiskDataset``.

A loader never branches on a task's name to augment or check a target: it builds its task
objects with ``make_tasks`` and asks them (``Task.hflip``, ``zoom``, ``ignored``, ...).

Splits: "train", "val" and "test". Model selection uses "val" and the reported numbers use
"test"; a dataset that ships only train/val carves "val" out of "train" (seeded) and serves
its official val as "test".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, Tuple

from trainables.plugins import Plugin
from trainables.registry import TASKS
from trainables.tasks.base import Task  # importing trainables.tasks registers every task type

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset offers.

    Attributes:
        tasks: task name -> Plugin(task type, its parameters), e.g. "semseg" ->
            Plugin("semseg", {"num_classes": 40}); for most datasets name == type.
        input_size: (H, W) of the images the models see; #params/FLOPs are counted at it.
        default_batch_sizes: the survey grid's three batch sizes for this dataset.
    """

    name: str
    tasks: Dict[str, Plugin]
    input_size: Tuple[int, int]
    default_batch_sizes: Tuple[int, int, int] = (4, 6, 8)
    notes: str = field(default="")


def make_tasks(info: DatasetInfo, names: Iterable[str]) -> Dict[str, Task]:
    """The task objects of ``names`` as ``info`` describes them:
    ``TASKS.get(type)(name, params=...)``. The trainer builds its tasks with this, and the
    loaders theirs (for the geometry of augmentation and the data check's ignored fraction)."""
    return {n: TASKS.get(info.tasks[n].name)(n, params=info.tasks[n].params) for n in names}

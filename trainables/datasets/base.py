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
    describe(**params) -> DatasetInfo   # cheap, no I/O: tasks offered, input size, batch sizes
    prepare(root, **params) -> str|None  # driver-side, before any Ray work: generate / check;
                                         # the constructor takes the same ``root``
Optional class attribute ``SMOKE_PARAMS``: parameters ``--smoke`` overrides to shrink the data.
The real-data loaders implement ``prepare`` / ``check`` and the split selection once, in
``trainables.datasets.disk.DiskDataset``.


Splits: "train", "val" and "test". Model selection uses "val" and the reported numbers use
"test"; a dataset that ships only train/val carves "val" out of "train" (seeded) and serves
its official val as "test".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskSpec:
    """How to build one task of a dataset: ``TASKS.get(type)(name=name, **params)``."""

    type: str
    params: Dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset offers.

    Attributes:
        tasks: task name -> TaskSpec (registered task type + its keyword arguments, e.g. the
            number of classes of "semseg"). For most datasets name == type.
        input_size: (H, W) of the images the models see; #params/FLOPs are counted at it.
        default_batch_sizes: the survey grid's three batch sizes for this dataset.
    """

    name: str
    tasks: Dict[str, TaskSpec]
    input_size: Tuple[int, int]
    default_batch_sizes: Tuple[int, int, int] = (4, 6, 8)
    notes: str = field(default="")

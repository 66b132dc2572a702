"""``DiskDataset``: what every real-dataset loader shares, around the parts that read its format.

A loader subclasses it, sets the class attributes and supplies three hooks:

    NAME         registry name; the prefix of every error message ("nyud: unknown split ...").
    TASK_NAMES   the tasks it serves (``valid_tasks`` may narrow them by parameter).
    Params       its frozen parameters dataclass (a ``params.SampleParams`` subclass, built by
                 ``plugins.make_params``; ``HoldoutParams`` when HOLDOUT is set).
    ROOT         what ``root`` is, for the "<no root>" error ("the NYUD_MT folder"), followed
                 by ROOT_HINTS[entry point] ("prepare", "check" or "init").
    HOLDOUT      (official list carved into "train" / "val", official list served as "test"),
                 e.g. ("train", "val"); None when the dataset ships all three splits.
    describe(**params) -> DatasetInfo
                 the contract's description; its ``tasks`` also build the loader's task objects.
    verify(root, p, decode) -> dict
                 the file checks, decoding ``decode`` samples per list (None: all); its result
                 is reported under CHECK_KEY by ``check``.
    official_items(name) -> sequence
                 the items of official list ``name`` (ids, file names, sample numbers), in
                 the order the partial-label files index.

It then owns the rest of the dataset contract (trainables/datasets/base.py): ``prepare``
(``verify`` decoding PREPARE_DECODE samples per list), ``check`` (``verify`` decoding
CHECK_DECODE, then ``summary.summarize`` over every split) and the start of ``__init__``:
split and task validation, the parameters, the root, the task objects, and the selection of
the split's items - the seeded ``holdout_split`` of the official train list (``val_fraction``,
``seed``) for "train" / "val" when HOLDOUT is set, then the first ``max_samples``. It sets
``params``, ``root``, ``split``, ``tasks`` (names), ``task_objects`` (name -> Task, from
``describe``: they augment and check the targets), ``augment``, ``official_split`` (the
official list the items come from), ``source_indices`` (each item's row in that list:
partial-label files index it) and ``items``.
"""
from __future__ import annotations

from typing import ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from trainables.datasets.base import SPLITS, DatasetInfo, make_tasks
from trainables.datasets.readers import DataCheckError
from trainables.datasets.summary import summarize
from trainables.plugins import Configurable


def holdout_split(ids: Sequence, split: str, fraction: float = 0.1, seed: int = 0) -> list:
    """Carve a validation set out of a training list (seeded; disjoint, stable order).

    ``split`` "train" returns the remaining ids, "val" the held-out ones. Datasets that ship
    only train/val use this for model selection and serve their official val as "test".
    """
    if split not in ("train", "val"):
        raise ValueError(f"holdout_split: split must be 'train' or 'val', got {split!r}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = max(1, int(round(fraction * len(ids)))) if len(ids) > 1 else 0
    chosen = sorted(order[:n_val]) if split == "val" else sorted(order[n_val:])
    return [ids[i] for i in chosen]


class DiskDataset(torch.utils.data.Dataset, Configurable):
    """Base class of the loaders that read a dataset from disk (see the module docstring)."""

    NAME: ClassVar[str] = ""
    TASK_NAMES: ClassVar[Tuple[str, ...]] = ()
    ROOT: ClassVar[str] = ""
    ROOT_HINTS: ClassVar[Mapping[str, str]] = {
        "prepare": "(--data-root / dataset.root)", "check": "(--root)", "init": "(dataset.root)"}
    HOLDOUT: ClassVar[Optional[Tuple[str, str]]] = ("train", "val")
    PREPARE_DECODE: ClassVar[Optional[int]] = 2
    CHECK_DECODE: ClassVar[Optional[int]] = 200  # every sample of a list up to this length, else this many
    CHECK_KEY: ClassVar[str] = "checked"

    # ------------------------------------------------------------------------------ hooks
    @classmethod
    def describe(cls, **params) -> DatasetInfo:
        raise NotImplementedError

    @classmethod
    def verify(cls, root: str, p, decode: Optional[int]) -> Dict:
        raise NotImplementedError

    def official_items(self, name: str) -> Sequence:
        raise NotImplementedError

    @classmethod
    def valid_tasks(cls, p) -> Tuple[str, ...]:
        """The tasks a dataset built with parameters ``p`` serves."""
        return cls.TASK_NAMES

    # ---------------------------------------------------------------------------- helpers
    @classmethod
    def require_root(cls, root: Optional[str], entry: str) -> str:
        if root is None:
            raise DataCheckError("<no root>", f"{cls.ROOT} {cls.ROOT_HINTS[entry]}")
        return root

    # -------------------------------------------------------------------------- contract
    @classmethod
    def prepare(cls, root: Optional[str], **params) -> Optional[str]:
        """Cheap checks before a study: ``verify`` decoding the first and last of each list."""
        p = cls.params_of(params)
        cls.verify(cls.require_root(root, "prepare"), p, cls.PREPARE_DECODE)
        return None

    @classmethod
    def check(cls, root: Optional[str], **params) -> Dict:
        """``mtl data check``: verify the files (see the loader's docstring), then summarise."""
        p = cls.params_of(params)
        checked = cls.verify(cls.require_root(root, "check"), p, cls.CHECK_DECODE)
        names = list(cls.valid_tasks(p))
        summary = summarize(lambda split: cls(root, split, names, **params), SPLITS,
                            make_tasks(cls.describe(**params), names))
        return {**summary, cls.CHECK_KEY: checked}

    def __init__(self, root: Optional[str], split: str, tasks: Sequence[str], augment: bool = False, **params):
        if split not in SPLITS:
            raise ValueError(f"{self.NAME}: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        self.params = p = self.params_of(params)
        valid = self.valid_tasks(p)
        tasks = [tasks] if isinstance(tasks, str) else list(dict.fromkeys(tasks))
        bad = [t for t in tasks if t not in valid]
        if bad:
            raise ValueError(f"{self.NAME}: unknown task(s) {bad}; valid tasks: {', '.join(valid)}")
        self.root, self.split, self.tasks, self.augment = self.require_root(root, "init"), split, tasks, bool(augment)
        self.task_objects = make_tasks(self.describe(**params), tasks)
        self.official_split = split if self.HOLDOUT is None else self.HOLDOUT[split == "test"]
        items = self.official_items(self.official_split)
        positions = list(range(len(items)))
        if self.HOLDOUT is not None and split != "test":
            positions = holdout_split(positions, split, p.val_fraction, p.seed)
        self.source_indices = positions[: p.max_samples] if p.max_samples else positions
        self.items = [items[i] for i in self.source_indices]

    def __len__(self) -> int:
        return len(self.source_indices)

    def make_item(self, image: torch.Tensor, targets: Dict[str, torch.Tensor],
                  mask: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, object]:
        """The item dict of the contract, contiguous; ``mask`` None: every task labelled."""
        return {"image": image.contiguous(), "targets": {k: v.contiguous() for k, v in targets.items()},
                "mask": {t: torch.tensor(True) for t in self.tasks} if mask is None else mask}

"""Dataset plug-ins. Importing this package registers every built-in dataset."""
from trainables.datasets.base import SPLITS, DatasetInfo, make_tasks
from trainables.datasets import synthetic  # noqa: F401
from trainables.datasets import celeba, multi_cifar100, pascal_context, taskonomy  # noqa: F401
from trainables.datasets import cityscapes, mtan, nyud, pseudo  # noqa: F401
from trainables.datasets import mgm_folder  # noqa: F401

__all__ = ["SPLITS", "DatasetInfo", "make_tasks"]

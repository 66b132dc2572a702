"""Dataset plug-ins. Importing this package registers every built-in dataset."""
from trainables.datasets.base import SPLITS, DatasetInfo, TaskSpec
from trainables.datasets import synthetic  # noqa: F401

__all__ = ["SPLITS", "DatasetInfo", "TaskSpec"]

"""The Ray Train worker function: one data-parallel worker of one trial."""
from __future__ import annotations

from typing import Any, Dict

from trainables.config import TrialConfig
from trainables.session import RayTrainSession
from trainables.train_loop import fit


def train_worker(config: Dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the trial's ``TorchTrainer``."""
    import trainables  # noqa: F401  (registers plug-ins in the worker process)

    fit(TrialConfig.from_dict(config), RayTrainSession())

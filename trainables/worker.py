"""What a trial runs: one data-parallel worker of a Ray Train group, or the whole trial in Tune's process."""
from __future__ import annotations

from typing import Any, Dict

from trainables.config import TrialConfig
from trainables.session import RayTrainSession, TuneSession
from trainables.train_loop import fit


def quiet_report_lines() -> None:
    """Hide Ray Train's per-report INFO line ("Reporting training result N: TrainingReport(...)",
    up to thousands of characters each, 70% of a study's console). Ray names that logger after its
    source file's path, so ``LoggingConfig(log_level=...)`` and the ``ray.train`` logger miss it;
    warnings and errors of that logger still show."""
    import logging

    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_worker(config: Dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the trial's ``TorchTrainer``."""
    import trainables  # noqa: F401  (registers plug-ins in the worker process)

    quiet_report_lines()
    fit(TrialConfig.from_dict(config), RayTrainSession())


def train_in_trial(config: Dict[str, Any]) -> None:
    """A one-worker trial trained in Tune's own (reused) trial process."""
    import trainables  # noqa: F401  (registers plug-ins in the trial process)

    fit(TrialConfig.from_dict(config), TuneSession())

"""The console during a study: one line per event that matters, with totals and an ETA.

Tune's own status tables are off (``verbose`` 0); instead, per multi-task trial epoch,

    experiment 2/6 mtl_baseline: trial 1/4 epoch 3/20 val Δm -14.70% (7.3 s/epoch, ETA 4 min)

and, while no trial has reported yet (worker groups take tens of seconds to start on a small
machine), a heartbeat every ``HEARTBEAT_S`` seconds. The ETA is the experiment's: its remaining
trial-epochs at the mean wall time per trial-epoch so far (start-up included, so it starts high).
"""
from __future__ import annotations

import time
from typing import Dict, Optional

from ray.tune import Callback

from orchestrator.tuning import BATCH_KEY

HEARTBEAT_S = 20.0


def duration(seconds: float) -> str:
    """'45 s', '4 min', '1 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class EpochLines(Callback):
    """Prints the lines of the module docstring as Tune receives each report."""

    def __init__(self, experiment: str, index: int = 1, total: int = 1, trials: int = 1, epochs: int = 1,
                 batch_of: int = 1):
        # (the Tuner pickles its callbacks: plain data only). ``batch_of`` > 1: the run holds the
        # trials of experiments index .. index + batch_of - 1, and each line names the trial's own.
        self.experiment, self.index, self.total, self.batch_of = experiment, index, total, batch_of
        self.trials, self.epochs = max(1, trials), max(1, epochs)
        self.order: Dict[str, int] = {}
        self.reports = 0
        self.t0: Optional[float] = None
        self.last_line = 0.0

    def log(self, line: str) -> None:
        print(line, flush=True)

    @property
    def prefix(self) -> str:
        if self.batch_of > 1:
            return f"experiments {self.index}-{self.index + self.batch_of - 1}/{self.total}"
        return f"experiment {self.index}/{self.total} {self.experiment}"

    def trial_prefix(self, trial) -> str:
        """The prefix, naming the trial's own experiment when the run is a batch of several."""
        inner = (getattr(trial, "config", None) or {}).get(BATCH_KEY)
        return f"{self.prefix} {inner.get('experiment', '?')}" if isinstance(inner, dict) else self.prefix

    def _now(self) -> float:
        now = time.time()
        if self.t0 is None:
            self.t0 = self.last_line = now
        return now

    def on_step_begin(self, iteration, trials, **info):
        now = self._now()
        if self.reports == 0 and now - self.last_line >= HEARTBEAT_S:
            self.last_line = now
            running = sum(1 for t in trials if t.status == "RUNNING")
            self.log(f"{self.prefix}: starting workers for {self.trials} trial(s), {running} running "
                     f"({duration(now - self.t0)})")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = self._now()
        self.reports += 1
        self.last_line = now
        k = self.order.setdefault(trial.trial_id, len(self.order) + 1)
        dm = result.get("val_delta_m")
        score = f"val Δm {dm:+.2f}%" if dm is not None else f"val score {result.get('val_score', float('nan')):.4g}"
        if result.get("failed"):  # a diverged run's last report (trainables/train_loop.py)
            score = f"FAILED: {result['failed']}"
        left = max(0, self.trials * self.epochs - self.reports)
        eta = f", ETA {duration((now - self.t0) / self.reports * left)}" if left else ""
        self.log(f"{self.trial_prefix(trial)}: trial {k}/{self.trials} epoch {result.get('epoch', 0) + 1}/{self.epochs} "
                 f"{score} ({result.get('epoch_time_s', 0):.1f} s/epoch{eta})")

    def on_trial_error(self, iteration, trials, trial, **info):
        k = self.order.setdefault(trial.trial_id, len(self.order) + 1)
        self.log(f"{self.trial_prefix(trial)}: trial {k}/{self.trials} ERROR (see {trial.local_path})")

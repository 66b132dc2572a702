"""One line per trial epoch on the console, instead of Tune's wide status tables."""
from __future__ import annotations

from ray.tune import Callback


class EpochLines(Callback):
    """Logs "<experiment> <trial> epoch e: val Delta_m ..." as Tune receives each report."""

    def __init__(self, experiment: str):
        self.experiment = experiment  # (the Tuner pickles its callbacks: hold plain data only)

    def log(self, line: str) -> None:
        print(line, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        hp = (trial.config or {}).get("hp", {})
        setting = f"{hp.get('optimizer')}@{hp.get('lr', 0):g}/{hp.get('scheduler')}/bs{hp.get('batch_size')}"
        dm = result.get("val_delta_m")
        score = f"val Δm {dm:+.2f}%" if dm is not None else f"val score {result.get('val_score', float('nan')):.4g}"
        self.log(f"  {self.experiment} {trial.trial_id} {setting} seed={trial.config.get('seed')} "
                 f"epoch {result.get('epoch', 0) + 1}: {score} ({result.get('epoch_time_s', 0):.1f}s)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.log(f"  {self.experiment} {trial.trial_id}: ERROR (see {trial.local_path})")

"""TensorBoard events of one training run: where they go, what their tags are, how they are written.

Every run whose ``TrialConfig.events_dir`` is set writes, on rank 0 only, one event file per
process into ``<events_dir>/<run_name(cfg)>`` (``run_name``: the grid setting, the fixed weights
when the balancer has any, the seed; e.g. ``adam-lr0.0002-poly-bs16-seed0``). The study points
``events_dir`` at ``<study_dir>/tensorboard/<experiment>``; single-task baselines write into their
cache entry (they are shared by studies) and each study links them under its own
``tensorboard/single_task/<task>/``, so ``tensorboard --logdir <study_dir>/tensorboard`` shows
every run of the study.

Tags are grouped per task (TensorBoard puts every tag with the same part before the first "/"
in one section), from the train loop's per-epoch report:

    train/<task>/loss        -> <task>/train_loss
    val/<task>/<metric>      -> <task>/val_<metric>    (val/<task>/loss -> <task>/val_loss)
    test/<task>/<metric>     -> <task>/test_<metric>   (after the last epoch only)
    weight/<task>            -> <task>/weight          (the balancer's current weight)
    val_delta_m, test_delta_m -> delta_m/val, delta_m/test
    val_score                -> score/val              (the number Tune maximises)
    train/reg/<name>         -> reg/<name>             (the regularisers' own losses)
    lr, epoch_time_s         -> lr, epoch_time_s
    epoch, finished          -> not written (the step, a flag)

The step of every scalar is the number of epochs done (epoch + 1): Tune's ``training_iteration``,
which is also the MLflow logger's step and a metric of every W&B row, so epochs line up. The
resolved config is written once as the text summary ``config``. A run resumed from its
checkpoint opens its writer with ``purge_step`` at the first epoch it re-runs, so TensorBoard
hides what the crashed process wrote past its checkpoint. The file is flushed after every epoch
(a running study shows live curves). Without the ``tensorboard`` package (the ``tensorboard``
extra) training runs as usual and one warning per process says how to install it.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
from numbers import Real
from typing import Any, Mapping, Optional

from trainables.config import TrialConfig

TENSORBOARD = "tensorboard"  # the events' folder: in a study's folder, and in a baseline's cache entry
INSTALL_HINT = "pip install -c constraints.txt -e '.[tensorboard]'"
SKIPPED = ("epoch", "finished")
SPLIT_SCORE = re.compile(r"^(train|val|test)_(\w+)$")  # val_delta_m -> delta_m/val


def tag(key: str) -> Optional[str]:
    """The TensorBoard tag of a report key (table in the module docstring); None: not written."""
    if key in SKIPPED:
        return None
    parts = key.split("/")
    if parts[0] == "train" and len(parts) > 2 and parts[1] == "reg":
        return "reg/" + "/".join(parts[2:])
    if parts[0] in ("train", "val", "test") and len(parts) > 2:
        return f"{parts[1]}/{parts[0]}_{'/'.join(parts[2:])}"
    if parts[0] == "weight" and len(parts) == 2:
        return f"{parts[1]}/weight"
    split_score = SPLIT_SCORE.match(key)
    if split_score:
        return f"{split_score.group(2)}/{split_score.group(1)}"
    return key


def path_part(name: str) -> str:
    """``name`` as one folder name: characters outside [A-Za-z0-9_.,+=[]-] become "-"."""
    return re.sub(r"[^A-Za-z0-9_.,+=\[\]-]+", "-", name).strip("-") or "-"


def experiment_dir(root: str, experiment: str) -> str:
    """The events folder of an experiment under ``root``: "single_task/depth" -> root/single_task/depth."""
    parts = [path_part(p) for p in experiment.split("/") if p not in ("", ".", "..")]
    return os.path.join(root, *parts)


def run_name(cfg: TrialConfig) -> str:
    """The run's folder name: unique within an experiment's trials (grid setting x seed, and the
    weights of a loss-weight search, which draws them per trial)."""
    weights = cfg.balancer.params.get("weights")
    drawn = ""
    if isinstance(weights, Mapping) and weights:
        drawn = "-w" + "_".join(f"{float(w):.3g}" for w in weights.values())
    return path_part(f"{cfg.optimizer}-lr{cfg.lr:g}-{cfg.scheduler}-bs{cfg.batch_size}{drawn}-seed{cfg.seed}")


def run_dir(cfg: TrialConfig) -> str:
    """Where ``cfg``'s events go (``events_dir`` must be set)."""
    return os.path.join(cfg.events_dir, run_name(cfg))


class EventWriter:
    """Writes the train loop's per-epoch reports as TensorBoard scalars (tags: ``tag``)."""

    def __init__(self, log_dir: str, purge_step: Optional[int] = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self._writer = SummaryWriter(log_dir=log_dir, purge_step=purge_step)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """The resolved config as the text summary ``config`` (indented: markdown shows it as code)."""
        text = json.dumps(config, indent=1, sort_keys=True, default=str)
        self._writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)

    def write(self, report: Mapping[str, Any], step: int) -> None:
        """Every real-valued entry of ``report`` at ``step``, then flush."""
        for key, value in report.items():
            name = tag(key)
            if name is not None and isinstance(value, Real) and not isinstance(value, bool):
                self._writer.add_scalar(name, float(value), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


@functools.lru_cache(maxsize=None)  # once per process
def _warn_missing_tensorboard() -> None:
    logging.getLogger(__name__).warning(f"TensorBoard events are off: the tensorboard package is not installed "
                                        f"({INSTALL_HINT})")


def tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def open_events(cfg: TrialConfig, rank: int, first_epoch: int) -> Optional[EventWriter]:
    """The run's writer on rank 0 when ``cfg.events_dir`` is set and TensorBoard is installed,
    else None. ``first_epoch`` > 0 (a resumed run) purges the steps from ``first_epoch + 1`` on."""
    if cfg.events_dir is None or rank != 0:
        return None
    if not tensorboard_installed():
        _warn_missing_tensorboard()
        return None
    writer = EventWriter(run_dir(cfg), purge_step=first_epoch + 1 if first_epoch else None)
    if not first_epoch:
        writer.write_config(cfg.to_dict())
    return writer


def link_run(source: str, target: str) -> None:
    """Make the run folder ``source`` appear at ``target`` (TensorBoard follows links): a relative
    symlink, so a moved storage root keeps it, or a copy where the file system refuses links."""
    if os.path.islink(target):
        if os.path.realpath(target) == os.path.realpath(source):
            return
        os.remove(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.symlink(os.path.relpath(source, os.path.dirname(target)), target, target_is_directory=True)
    except OSError:  # no symlinks here, or a copy made by an earlier run: refresh the copy
        shutil.copytree(source, target, dirs_exist_ok=True)

"""Where a training run lives: alone in a process, or as one worker of a Ray Train group.

The train loop and the step talk only to a ``Session``; the Ray touch points
(``prepare_model``, ``prepare_data_loader``, ``ray.train.report``, checkpoints) are all in
``RayTrainSession`` below, so the loop itself is plain PyTorch. Collectives (sum and average
over workers) go through the session too; with no process group they are no-ops, and under any
torch.distributed process group (Ray Train's, or one a test starts) they all-reduce.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from trainables.atomic import atomic_write

STATE_FILE = "state.pt"


def load_state_file(path: str, device: Any = "cpu") -> Dict[str, Any]:
    """A saved training state: tensors and plain data only (``weights_only=True``), so a planted
    file cannot run code; one that holds anything else is refused in one line naming it."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:  # torch's text is many lines and advises the unsafe way out
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (the global {found.group(1)})" if found else ""
        raise ValueError(f"{path}: refused to load: it holds objects other than tensors and plain data{what}; "
                         "only load checkpoints this tool wrote") from None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Session:
    """One process, no Ray: used by the single-task actors, tests and benchmarks."""

    def __init__(
        self,
        device: Optional[torch.device] = None,
        checkpoint_dir: Optional[str] = None,
        on_report: Optional[Callable[[Dict[str, Any]], None]] = None,
    ):
        self.device = device or default_device()
        self.checkpoint_dir = checkpoint_dir
        self.on_report = on_report
        self.reports: List[Dict[str, Any]] = []

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return loader

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over workers in place (a no-op in a single process)."""
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def average_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average ``tensor`` over workers in place."""
        if self.world_size > 1:
            self.all_reduce_(tensor).div_(self.world_size)
        return tensor

    def average_grads_(self, params: Iterable[nn.Parameter]) -> None:
        """Average ``.grad`` over workers (for steps that bypass DDP); a missing gradient counts
        as zero, since every worker must take part in each all-reduce."""
        if self.world_size == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            self.average_(p.grad)

    def restore(self) -> Optional[Dict[str, Any]]:
        path = self.checkpoint_dir and os.path.join(self.checkpoint_dir, STATE_FILE)
        if path and os.path.exists(path):
            return load_state_file(path, self.device)
        return None

    def after_epoch(self, epoch: int, model: nn.Module, tasks: Dict[str, Any]) -> None:
        """Called after every training epoch with the bare model (e.g. FAFS measures which
        examples each task finds difficult); nothing by default."""

    def report(self, metrics: Dict[str, Any], state: Optional[Dict[str, Any]] = None) -> None:
        self.reports.append(dict(metrics))
        if state is not None and self.checkpoint_dir:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            atomic_write(os.path.join(self.checkpoint_dir, STATE_FILE), lambda tmp: torch.save(state, tmp))
        if self.on_report:
            self.on_report(metrics)


class _RaySession(Session):
    """Reports and checkpoints through a Ray API module (``ray.train`` or ``ray.tune``: both have
    ``report(metrics, checkpoint=)``, ``get_checkpoint()`` and ``Checkpoint``); rank 0 saves."""

    _api: Any = None

    def restore(self) -> Optional[Dict[str, Any]]:
        checkpoint = self._api.get_checkpoint()  # Ray: the last checkpoint of a retried or resumed run
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_state_file(os.path.join(directory, STATE_FILE), self.device)

    def report(self, metrics: Dict[str, Any], state: Optional[Dict[str, Any]] = None) -> None:
        self.reports.append(dict(metrics))
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if state is not None and self.rank == 0:
                torch.save(state, os.path.join(directory, STATE_FILE))
                checkpoint = self._api.Checkpoint.from_directory(directory)
            self._api.report(metrics, checkpoint=checkpoint)


class RayTrainSession(_RaySession):
    """A worker of a Ray Train ``TorchTrainer`` (data parallel: gloo on CPU, NCCL on GPU); its
    reports reach Tune through the trainer's ``TuneReportCallback``."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        self._api = ray.train
        self._torch = ray.train.torch
        ctx = ray.train.get_context()  # Ray: this worker's place in the group
        self._world_size, self._rank = ctx.get_world_size(), ctx.get_world_rank()
        super().__init__(device=ray.train.torch.get_device())

    world_size = property(lambda self: self._world_size)
    rank = property(lambda self: self._rank)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        # Ray: moves to this worker's device and wraps in DDP when world_size > 1.
        return self._torch.prepare_model(model)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        # Ray: adds a DistributedSampler; the loop moves nested batches itself.
        return self._torch.prepare_data_loader(loader, move_to_device=False)


class TuneSession(_RaySession):
    """A one-worker trial that trains in Tune's own trial process (``resources.reuse_workers``).

    No Train worker group: the trial's process is the worker, and Tune keeps it for its next
    trial (``reuse_actors``), so a trial pays no process start, no ``import torch`` and no group
    set-up. Reports and checkpoints go straight to Tune (``ray.tune.report``), where ASHA acts on
    them; a retried or resumed trial restores from its last checkpoint (``ray.tune.get_checkpoint``).
    The device is the one Ray gave the trial (it sets ``CUDA_VISIBLE_DEVICES``), else the CPU.
    """

    def __init__(self):
        import ray.tune

        self._api = ray.tune
        super().__init__(device=default_device())

"""Where a training run lives: alone in a process, or as one worker of a Ray Train group.

The train loop talks only to a ``Session``; the Ray touch points (``prepare_model``,
``prepare_data_loader``, ``ray.train.report``, checkpoints) are all in ``RayTrainSession``
below, so the loop itself is plain PyTorch.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

STATE_FILE = "state.pt"


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

    world_size = 1
    rank = 0

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return loader

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over workers in place (no-op here)."""
        return tensor

    def restore(self) -> Optional[Dict[str, Any]]:
        path = self.checkpoint_dir and os.path.join(self.checkpoint_dir, STATE_FILE)
        if path and os.path.exists(path):
            return torch.load(path, map_location=self.device, weights_only=False)
        return None

    def report(self, metrics: Dict[str, Any], state: Optional[Dict[str, Any]] = None) -> None:
        self.reports.append(dict(metrics))
        if state is not None and self.checkpoint_dir:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            _atomic_save(state, os.path.join(self.checkpoint_dir, STATE_FILE))
        if self.on_report:
            self.on_report(metrics)


class RayTrainSession(Session):
    """A worker of a Ray Train ``TorchTrainer`` (data parallel: gloo on CPU, NCCL on GPU)."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        self._train = ray.train
        self._torch = ray.train.torch
        ctx = ray.train.get_context()
        self.world_size = ctx.get_world_size()
        self.rank = ctx.get_world_rank()
        super().__init__(device=ray.train.torch.get_device())

    def prepare_model(self, model: nn.Module) -> nn.Module:
        # Ray: moves to this worker's device and wraps in DDP when world_size > 1.
        return self._torch.prepare_model(model)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        # Ray: adds a DistributedSampler; the loop moves nested batches itself.
        return self._torch.prepare_data_loader(loader, move_to_device=False)

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def restore(self) -> Optional[Dict[str, Any]]:
        checkpoint = self._train.get_checkpoint()  # Ray: last checkpoint of a retried run
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return torch.load(os.path.join(directory, STATE_FILE), map_location=self.device, weights_only=False)

    def report(self, metrics: Dict[str, Any], state: Optional[Dict[str, Any]] = None) -> None:
        self.reports.append(dict(metrics))
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if state is not None and self.rank == 0:
                torch.save(state, os.path.join(directory, STATE_FILE))
                checkpoint = self._train.Checkpoint.from_directory(directory)
            self._train.report(metrics, checkpoint=checkpoint)  # Ray: reaches Tune via the callback


def _atomic_save(obj: Any, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)

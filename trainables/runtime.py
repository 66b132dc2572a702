"""The device switches of a run (``TrialConfig.runtime``): mixed precision, channels-last,
cudnn.benchmark, DataLoader workers and page-locked memory, and the seeding they need.

``check_runtime`` refuses, before training, what the device or the balancer cannot serve, and
warns about a switch that does nothing on this device; ``loader_options`` gives the DataLoader
arguments; ``channels_last`` puts a batch's images in NHWC layout. Applied by ``train_loop.fit``.
"""
from __future__ import annotations

import functools
import random
import warnings
from typing import Any, Dict

import numpy as np
import torch

from trainables.build import balancer_info
from trainables.config import Runtime, TrialConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_runtime(cfg: TrialConfig, device: torch.device) -> None:
    """One line for a device switch that this device or balancer cannot serve, before training;
    a warning for one that does nothing here."""
    amp, where = cfg.runtime.amp, f"runtime.amp: {cfg.runtime.amp!r}"
    needs = balancer_info(cfg.balancer)
    if amp == "fp16" and (needs.needs_task_grads or needs.needs_meta_batch):
        raise ValueError(f"{where}: balancer {cfg.balancer.name!r} reads or writes gradients outside the loss-scaled "
                         "backward pass, which float16's GradScaler cannot unscale; use 'bf16' (no scaler)")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"{where} needs a CUDA device (autocast on {device.type} supports bfloat16); use 'bf16' or a GPU")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{where}: this GPU has no bfloat16; use 'fp16' or 'off'")
    ignored = [n for n in ("cudnn_benchmark", "pin_memory") if getattr(cfg.runtime, n) and device.type != "cuda"]
    if ignored:
        warnings.warn(f"runtime.{' and runtime.'.join(ignored)}: ignored on a {device.type} device (CUDA only)")


def loader_options(runtime: Runtime, device: torch.device, rank: int) -> Dict[str, Any]:
    """The DataLoader arguments of the device switches: worker processes seeded by ``seed_worker``,
    page-locked memory on CUDA.

    The training process draws the shuffled order from the loader's generator with or without
    workers, so a seed gives the same batches either way, except for random augmentations: a
    worker draws them from its own generator, seeded from the loader's generator (reseeded every
    epoch) and the rank, so they are reproducible for a seed and a number of workers, resumes
    included. Workers are not persistent: a persistent worker is not reseeded at the next epoch,
    and its loader draws one number less from the generator per epoch, which changes the order
    from epoch 1 on.
    """
    workers = {"worker_init_fn": functools.partial(seed_worker, rank)} if runtime.loader_workers else {}
    return {"num_workers": runtime.loader_workers, "pin_memory": runtime.pin_memory and device.type == "cuda", **workers}


def seed_worker(rank: int, worker_id: int) -> None:
    """A loader worker's seeds: torch's per-worker seed (the loader generator's draw + the worker's
    id) shifted by the rank, so workers of different ranks augment differently."""
    seed_everything(torch.initial_seed() + 1000 * rank)


def channels_last(batch: Dict[str, Any]) -> Dict[str, Any]:
    """The batch with its images in NHWC memory layout (``Runtime.channels_last``)."""
    image = batch["image"]
    return {**batch, "image": image.contiguous(memory_format=torch.channels_last)} if image.dim() == 4 else batch

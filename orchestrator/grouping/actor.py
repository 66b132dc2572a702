"""The actor that runs the heavy steps of a grouping search beside the data, on the study's pool.

``rdms``: the representation dissimilarity matrices of a cached single-task network at every
backbone stage (Branched Multi-Task Networks), computed once and cached in the network's own
cache folder, so that any later study over the same baselines reads them back. ``fafs_round``:
one FAFS widening round - train a tree (growing from the previous round's network) and measure,
after every epoch, which training examples each task finds difficult; the round's folder is keyed
by its config, so a rerun finds the round done.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional

import numpy as np

from trainables.atomic import atomic_write, write_json
from trainables.config import stable_hash
from trainables.session import Session

RDM_VERSION = 1  # bump when what an RDM file holds changes
ROUND_FILE = "fafs_round.json"


class SearchActor:
    """Actor body (``orchestrator.baselines.run_on_actors``): one job at a time, in this process."""

    def __init__(self, num_threads: int = 1):
        import torch

        import trainables  # noqa: F401

        torch.set_num_threads(max(1, num_threads))

    def rdms(self, checkpoint: str, num_images: int, seed: int, pool: Optional[int]) -> Dict[str, Any]:
        """{"path", "cached"}: the [D, K, K] RDMs of the single-task network in ``checkpoint``
        (a baseline's cache folder), stored there as ``rdm-<key>.npz``."""
        key = stable_hash({"num_images": num_images, "seed": seed, "pool": pool, "version": RDM_VERSION})
        path = os.path.join(checkpoint, f"rdm-{key}.npz")
        if os.path.isfile(path):
            return {"path": path, "cached": True}
        from orchestrator.grouping.affinity import rdm
        from trainables.build import build_dataset
        from trainables.representations import pick, stage_features

        cfg, model, device = _trained(checkpoint)
        dataset = build_dataset(cfg.dataset, cfg.data_root, "train", cfg.tasks)
        indices = pick(len(dataset), num_images, seed)
        features = stage_features(model.backbone, dataset, indices, device, pool)
        matrices = np.stack([rdm(f) for f in features]).astype(np.float32)
        atomic_write(path, lambda tmp: np.savez(tmp, rdms=matrices, indices=np.asarray(indices)))
        return {"path": path, "cached": False}

    def fafs_round(self, config: Dict[str, Any], out_dir: str, num_images: int, seed: int,
                   ema: float) -> Dict[str, Any]:
        """Train ``config`` (a branched tree) in ``out_dir`` and return the task affinity of
        difficult / easy examples at the end of the round, as an EMA over its epochs."""
        done = os.path.join(out_dir, ROUND_FILE)
        if os.path.isfile(done):
            with open(done) as fh:
                return {**json.load(fh), "cached": True}
        from orchestrator.grouping.affinity import AffinityEMA
        from trainables.build import build_dataset
        from trainables.config import TrialConfig
        from trainables.representations import pick
        from trainables.train_loop import fit

        cfg = TrialConfig.from_dict(config)
        dataset = build_dataset(cfg.dataset, cfg.data_root, "train", cfg.tasks)
        ema_state = AffinityEMA(len(cfg.tasks), ema, threshold="batch")  # measured once per epoch
        session = DifficultySession(dataset, pick(len(dataset), num_images, seed), ema_state, checkpoint_dir=out_dir)
        start = time.time()
        last = fit(cfg, session)
        result = {"affinity": session.ema.affinity.tolist(), "metrics": last, "wall_time_s": time.time() - start,
                  "checkpoint": out_dir}
        write_json(done, result)
        return {**result, "cached": False}


def _trained(checkpoint: str):
    """(config, model in eval mode, device) of the network saved in ``checkpoint``."""
    from trainables.build import build_model, build_tasks
    from trainables.config import TrialConfig
    from trainables.session import default_device
    from trainables.train_loop import load_state

    state = load_state(checkpoint)
    cfg = TrialConfig.from_dict(state["config"])
    device = default_device()
    model = build_model(build_tasks(cfg.dataset, cfg.tasks), cfg.model)
    model.load_state_dict(state["model"])
    return cfg, model.to(device).eval(), device


class DifficultySession(Session):
    """A local session that, after every epoch, scores the chosen training images per task and
    feeds which ones are difficult to FAFS's affinity EMA."""

    def __init__(self, dataset, indices, ema, **kwargs):
        super().__init__(**kwargs)
        self.dataset, self.indices, self.ema = dataset, indices, ema

    def after_epoch(self, epoch, model, tasks) -> None:
        from trainables.representations import sample_errors

        self.ema.update(sample_errors(model, tasks, self.dataset, self.indices, self.device))

"""The train loop: plain PyTorch, run by a Ray Train worker or by a single-task actor.

``fit(config, session)`` trains one model on one hyper-parameter setting: the survey's
optimisers (SGD with momentum 0.9, Adam) and schedulers (poly, step x0.1), validation every
epoch, the test split after the last epoch, and one report + checkpoint per epoch (Ray Train
V2 polls workers every ~2 s and a report blocks until picked up, so per-step reports would
stall training). Metrics are split-level: every worker accumulates sum-reducible statistics
on its shard of the split, and the session all-reduces them.

A diverged run ends at once, without an exception (a deterministic divergence must not be
retried): a non-finite training loss of any task or regulariser term at any step (every worker
stops at the same step), or a non-finite validation loss or primary metric of a scored task, or
a non-finite Delta_m / score, makes ``fit`` report ``{"epoch", "failed": reason, "val_score":
nan}`` (Tune needs its metric in every report) and return that report; the reason names the
epoch (and step) and the task or metric. A scored task with no labelled validation sample fails
the run too: its score would be undefined, so the run could never be selected.

Device switches (``TrialConfig.runtime``; ``check_runtime`` refuses what the device or balancer
cannot serve, in one line, before training): ``amp`` runs the forward passes of training and
evaluation under ``torch.autocast`` (losses and metrics in fp32, ``trainables/steps.py``). Its
"fp16" needs CUDA and a loss-level balancer without a meta step: the ``GradScaler`` unscales
only in ``scaler.step``, so a gradient-level balancer would combine scaled per-task gradients
and a meta step's unscaled ones would be divided by the scale. Regularisers' own updates and
meta steps run in fp32. ``channels_last`` makes the model and the image batches NHWC;
``cudnn_benchmark`` sets cuDNN's flag on CUDA (to this run's value: a process may train several
runs). ``loader_workers``: see ``loader_options``.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from trainables.build import (
    balancer_info,
    build_balancer,
    build_dataset,
    build_model,
    build_regularisers,
    build_tasks,
    primary_directions,
    regulariser_info,
)
from trainables.config import Runtime, TrialConfig
from trainables.delta import delta_m
from trainables.optim import make_optimizer, make_scheduler
from trainables.runtime import AMP_DTYPES, channels_last, check_runtime, loader_options, seed_everything
from trainables.session import STATE_FILE, Session, load_state_file
from trainables.steps import autocast, fp32, labelled, training_step
from trainables.tasks.base import Task
from trainables.tracking import open_events


def load_state(checkpoint: str) -> Dict[str, Any]:
    """A training state saved by ``Session.report``: from its folder or the state.pt itself."""
    path = os.path.join(checkpoint, STATE_FILE) if os.path.isdir(checkpoint) else checkpoint
    return load_state_file(path)


def load_teachers(cfg: TrialConfig, tasks: Mapping[str, Task]) -> Dict[str, nn.Module]:
    """The frozen single-task networks of ``cfg.teacher_checkpoints`` (MuST's teachers), in eval mode."""
    missing = [t for t in tasks if t not in cfg.teacher_checkpoints]
    if missing:
        raise ValueError(f"teacher_checkpoints: no single-task network for task(s) {missing}; the study passes "
                         "one per task with a baseline (auxiliary tasks have none)")
    teachers = {}
    for task, checkpoint in cfg.teacher_checkpoints.items():
        state = load_state(checkpoint)
        net = build_model({task: tasks[task]}, TrialConfig.from_dict(state["config"]).model)
        net.load_state_dict(state["model"])
        teachers[task] = net.eval().requires_grad_(False)
    return teachers


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


@torch.no_grad()
def evaluate(model: nn.Module, tasks: Mapping[str, Task], dataset, session: Session, batch_size: int,
             counts: Optional[Dict[str, float]] = None, runtime: Runtime = Runtime()) -> Dict[str, float]:
    """Split-level metrics ("task/metric" -> value) and mean losses ("task/loss"); ``counts``, when
    given, receives each task's number of labelled samples (0: its loss and metrics are NaN);
    ``runtime``: the run's device switches (autocast, layout, loader workers)."""
    shard = Subset(dataset, range(session.rank, len(dataset), session.world_size))  # no padding
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, **loader_options(runtime, session.device, session.rank))
    amp = AMP_DTYPES[runtime.amp]
    states = {n: t.metric_state(session.device) for n, t in tasks.items()}
    loss_sums = torch.zeros(len(tasks), 2, dtype=torch.float64, device=session.device)
    was_training = model.training
    model.eval()
    for batch in loader:
        batch = to_device(batch, session.device)
        if runtime.channels_last:
            batch = channels_last(batch)
        with autocast(session.device, amp):
            out = model(batch["image"])
        if amp is not None:
            out = fp32(out)
        pairs = labelled(out, tasks, batch)
        for i, (name, task) in enumerate(tasks.items()):
            if name in pairs:
                pred, target = pairs[name]
                task.update_metric(states[name], pred, target)
                loss_sums[i, 0] += float(task.loss(pred, target)) * len(pred)
                loss_sums[i, 1] += len(pred)
    model.train(was_training)
    metrics: Dict[str, float] = {}
    session.all_reduce_(loss_sums)
    for i, (name, task) in enumerate(tasks.items()):
        session.all_reduce_(states[name])
        for key, value in task.compute_metric(states[name]).items():
            metrics[f"{name}/{key}"] = float(value)
        count = float(loss_sums[i, 1])
        if counts is not None:
            counts[name] = count
        metrics[f"{name}/loss"] = float(loss_sums[i, 0]) / count if count else math.nan
    return metrics


def score(cfg: TrialConfig, metrics: Mapping[str, float], baseline: Mapping[str, float], directions: Mapping[str, bool]) -> Dict[str, float]:
    """Delta_m against the baselines (when given) and the single number Tune maximises."""
    if baseline:
        dm = delta_m(metrics, baseline, directions)
        return {"delta_m": dm, "score": dm}
    if len(directions) == 1:  # a single-task run: its primary metric, signed so higher is better
        (key, higher), = directions.items()
        return {"score": metrics[key] if higher else -metrics[key]}
    return {"score": -sum(metrics[f"{t}/loss"] for t in cfg.scored_tasks)}


def training_diverged(losses: Mapping[str, float], epoch: int, step: int, session: Session) -> Optional[str]:
    """Why this step ends the run (a non-finite task loss or ``reg/`` term), or None. Every worker
    takes part in one all-reduce of the verdict, so all stop at the same step."""
    bad = next((k for k, v in losses.items() if not math.isfinite(v)), None)
    reason = None
    if bad is not None:
        what = f"regulariser term {bad[4:]!r}" if bad.startswith("reg/") else f"loss of task {bad!r}"
        reason = f"epoch {epoch}, step {step}: training {what} is {losses[bad]}"
    if session.world_size > 1:
        flag = torch.tensor([0.0 if reason is None else 1.0], device=session.device)
        if session.all_reduce_(flag).item() > 0 and reason is None:
            reason = f"epoch {epoch}, step {step}: a training loss is non-finite on another worker"
    return reason


def validation_diverged(val: Mapping[str, float], counts: Mapping[str, float], scores: Mapping[str, float],
                        directions: Mapping[str, bool], epoch: int) -> Optional[str]:
    """Why this epoch's validation ends the run, or None: per scored task (``directions``' keys),
    no labelled sample, a non-finite loss or primary metric; then a non-finite Delta_m / score.
    Auxiliary tasks' metrics are logged only (their training losses are checked every step)."""
    for key in directions:
        task = key.split("/")[0]
        if not counts.get(task):
            return f"epoch {epoch}: the validation split has no labelled sample of task {task!r}, so {key} is undefined"
        for name in (f"{task}/loss", key):
            if not math.isfinite(val[name]):
                return f"epoch {epoch}: validation {name} is {val[name]}"
    for name, value in scores.items():
        if not math.isfinite(value):
            return f"epoch {epoch}: validation {'Delta_m' if name == 'delta_m' else name} is {value}"
    return None


def extra_labels(cfg: TrialConfig) -> List[str]:
    """Labels some regulariser reads besides the model's tasks' (MGM's scene label), in order."""
    wanted = (t for ref in cfg.regularisers for t in regulariser_info(ref).extra_labels)
    return [t for t in dict.fromkeys(wanted) if t not in cfg.tasks]


def fit(cfg: TrialConfig, session: Session) -> Dict[str, Any]:
    """Train ``cfg`` to the end (or from its last checkpoint); return the last report."""
    check_runtime(cfg, session.device)
    if session.device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.runtime.cudnn_benchmark
    seed_everything(cfg.seed + 1000 * session.rank)
    tasks = build_tasks(cfg.dataset, cfg.tasks, cfg.auxiliary_tasks)
    directions = primary_directions(tasks)  # auxiliary tasks are trained and logged, not scored
    reg_needs = [regulariser_info(ref) for ref in cfg.regularisers]
    extra = extra_labels(cfg)
    train_set = build_dataset(cfg.dataset, cfg.data_root, "train", list(cfg.tasks) + extra, augment=True)
    weak_set = None
    if cfg.label_file:  # partially labelled MTL: drop the labels the study's label file removes
        from trainables.datasets.partial import LabelMasked, load_label_mask, split_unlabelled

        train_set = LabelMasked.from_file(train_set, cfg.label_file, cfg.tasks)
        drop = load_label_mask(cfg.label_file)[2].get("unlabelled", "keep") == "drop"
        if drop or any(n.weak_stream for n in reg_needs):
            # images with no label of the model's tasks: out of the main loader ("drop", MGM's
            # ST/MT train on the labelled share only), and the weak stream of a regulariser
            labelled_set, weak_set = split_unlabelled(train_set, cfg.tasks)
            if drop:
                train_set = labelled_set
    if any(n.weak_stream for n in reg_needs) and not (weak_set is not None and len(weak_set)):
        raise ValueError("a regulariser reads the images without dense labels (weak_stream), but this training "
                         "split has none: give the study labels with unlabelled_fraction > 0")
    meta_set = None
    balancer_needs = balancer_info(cfg.balancer)
    if balancer_needs.needs_meta_batch:  # bilevel balancers: a meta split carved out of TRAIN, never val
        from trainables.meta import split_meta

        train_set, meta_set = split_meta(train_set, balancer_needs.meta_fraction, cfg.seed)
    regularisers = build_regularisers(cfg.regularisers, tasks, cfg.context)
    views = max((r.info.views for r in regularisers), default=1)
    if views > 1:  # photometric re-augmentations of every training image, sharing its labels
        from trainables.datasets.views import Views

        train_set = Views(train_set, views)
    if any(r.info.needs_teachers for r in regularisers):
        teachers = {t: m.to(session.device) for t, m in load_teachers(cfg, tasks).items()}
        for reg in regularisers:
            if reg.info.needs_teachers:
                reg.set_teachers(teachers)
    val_set = build_dataset(cfg.dataset, cfg.data_root, "val", cfg.tasks)

    model = build_model(tasks, cfg.model)
    for task, checkpoint in cfg.init_checkpoints.items():  # cross-stitch, NDDR: start from single-task nets
        model.load_single_task(task, load_state(checkpoint)["model"])
    if cfg.init_from:  # grow from a related model (a FAFS round from the previous round)
        parent = load_state(cfg.init_from)
        model.load_parent(parent["model"], TrialConfig.from_dict(parent["config"]).model)
    model = model.to(session.device)
    if cfg.runtime.channels_last:  # before the optimiser is built (the parameters stay the same objects)
        model = model.to(memory_format=torch.channels_last)
    balancer = build_balancer(cfg.balancer, cfg.tasks, cfg.context).to(session.device)
    regularisers = regularisers.to(session.device)
    image_hw = tuple(train_set[0]["image"].shape[-2:]) if len(regularisers) else None
    label_tasks = build_tasks(cfg.dataset, extra)
    for reg in regularisers:
        reg.attach(model, session, image_hw, label_tasks)
    # the components table: what trains besides the model (optimiser groups with their rate
    # multipliers, checkpoint keys; the step averages their gradients over workers), then the
    # regularisers' own optimisers (MGM's generator and discriminator), checkpointed alike
    components = {"balancer": balancer, "regularisers": regularisers}
    own_optimizers = {f"{i}/{name}": opt for i, reg in enumerate(regularisers) for name, opt in reg.optimizers().items()}
    per_worker_batch = max(1, cfg.batch_size // session.world_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_set, batch_size=per_worker_batch, shuffle=True, drop_last=True, generator=generator,
                        **loader_options(cfg.runtime, session.device, session.rank))
    loader = session.prepare_loader(loader)
    meta_batches = None
    if meta_set is not None:
        from trainables.meta import cycle

        meta_loader = DataLoader(meta_set, batch_size=per_worker_batch, shuffle=True, drop_last=False,
                                 generator=torch.Generator().manual_seed(cfg.seed + 1 + session.rank))
        meta_batches = cycle(meta_loader)
    weak_batches = None
    if any(n.weak_stream for n in reg_needs):
        from trainables.meta import cycle

        weak_loader = DataLoader(weak_set, batch_size=per_worker_batch, shuffle=True, drop_last=False,
                                 generator=torch.Generator().manual_seed(cfg.seed + 2 + session.rank))
        weak_batches = cycle(weak_loader)
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    if steps == 0:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {len(train_set)} training samples")
    # the architecture's groups (e.g. cross-stitch units at 100x the base rate), then the balancer's;
    # LambdaLR scales every group's own initial rate, so the ratios hold for the whole run
    groups = [{"params": g["params"], "lr": cfg.lr * g["lr_mult"]} for g in model.param_groups()]
    groups += [{"params": g["params"], "lr": cfg.lr * g["lr_mult"], "weight_decay": g.get("weight_decay", cfg.weight_decay)}
               for g in balancer.param_groups()]
    groups += [{"params": g["params"], "lr": cfg.lr * g["lr_mult"]} for r in regularisers for g in r.param_groups()]
    optimizer = make_optimizer(cfg, [g for g in groups if g["params"]])
    scheduler = make_scheduler(cfg, optimizer, steps)
    amp = AMP_DTYPES[cfg.runtime.amp]
    scaler = torch.amp.GradScaler(session.device.type) if cfg.runtime.amp == "fp16" else None

    start_epoch, last = 0, {}
    state = session.restore()
    if state is not None:  # a retried trial resumes from its own last checkpoint
        model.load_state_dict(state["model"])
        for key, component in components.items():
            component.load_state_dict(state[key])
        optimizer.load_state_dict(state["optimizer"])
        for key, own in own_optimizers.items():
            own.load_state_dict(state["own_optimizers"][key])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start_epoch, last = state["epoch"] + 1, state.get("metrics", {})
    model = session.prepare_model(model)
    events = open_events(cfg, session.rank, start_epoch)  # TensorBoard, rank 0 (None: off)

    failed: Optional[Tuple[int, str]] = None  # (epoch, reason) of a diverged run
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        # Every epoch's randomness (shuffle, augmentation, random balancers) is a function of
        # (seed, rank, epoch) alone, so a trial resumed from a checkpoint continues exactly.
        generator.manual_seed(cfg.seed + 7919 * epoch)
        seed_everything(cfg.seed + 1000 * session.rank + 7919 * epoch)
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        model.train()
        # per task: the sum of its batch losses and the number of batches that labelled it, so
        # the epoch mean (DWA's L(t), the train/<task>/loss report) skips unlabelled batches
        sums = torch.zeros(2, len(cfg.tasks), dtype=torch.float64, device=session.device)
        reg_sums: Dict[str, float] = {}
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            batch = to_device(batch, session.device)
            if cfg.runtime.channels_last:
                batch = channels_last(batch)
            meta = to_device(next(meta_batches), session.device) if meta_batches is not None else None
            weak = to_device(next(weak_batches), session.device) if weak_batches is not None else None
            own_logs: Dict[str, float] = {}
            for reg in regularisers:  # the components' own updates, then the samples they add
                own_logs.update(reg.update(batch, weak, epoch))
                batch = reg.extend_batch(batch, weak, epoch)
            losses = training_step(model, balancer, tasks, batch, optimizer, session, regularisers, meta, amp, scaler)
            losses.update({f"reg/{k}": v for k, v in own_logs.items()})
            reason = training_diverged(losses, epoch, step, session)
            if reason is not None:
                failed = (epoch, reason)
                break
            scheduler.step()
            for i, name in enumerate(cfg.tasks):
                if name in losses:
                    sums[0, i] += losses[name]
                    sums[1, i] += 1
            for key, value in losses.items():
                if key.startswith("reg/"):
                    reg_sums[key] = reg_sums.get(key, 0.0) + value
        if failed is not None:
            break
        session.all_reduce_(sums)
        train_losses = {name: float(sums[0, i] / sums[1, i]) for i, name in enumerate(cfg.tasks) if sums[1, i] > 0}
        if balancer.info.needs_epoch_losses:
            balancer.on_epoch_end(epoch, train_losses)

        session.after_epoch(epoch, model.module if hasattr(model, "module") else model, tasks)
        val_counts: Dict[str, float] = {}
        val = evaluate(model, tasks, val_set, session, cfg.eval_batch_size, counts=val_counts, runtime=cfg.runtime)
        scores = score(cfg, val, cfg.baseline_val, directions)
        reason = validation_diverged(val, val_counts, scores, directions, epoch)
        if reason is not None:
            failed = (epoch, reason)
            break
        report: Dict[str, Any] = {"epoch": epoch, "lr": scheduler.get_last_lr()[0],
                                  "epoch_time_s": time.perf_counter() - t0}
        report.update({f"train/{n}/loss": v for n, v in train_losses.items()})
        report.update({f"train/{k}": v / steps for k, v in reg_sums.items()})  # this worker's epoch mean
        report.update({f"weight/{n}": w for n, w in balancer.current_weights().items()})
        report.update({f"val/{k}": v for k, v in val.items()})
        report.update({f"val_{k}": v for k, v in scores.items()})
        if epoch == cfg.epochs - 1:  # reported, never used for selection
            test_set = build_dataset(cfg.dataset, cfg.data_root, "test", cfg.tasks)
            test = evaluate(model, tasks, test_set, session, cfg.eval_batch_size, runtime=cfg.runtime)
            report.update({f"test/{k}": v for k, v in test.items()})
            if cfg.baseline_test:
                report["test_delta_m"] = delta_m(test, cfg.baseline_test, directions)
        report["finished"] = epoch == cfg.epochs - 1
        bare = model.module if hasattr(model, "module") else model
        state = {"model": bare.state_dict(), **{k: c.state_dict() for k, c in components.items()},
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "own_optimizers": {k: o.state_dict() for k, o in own_optimizers.items()},
                 "epoch": epoch, "metrics": report, "config": cfg.to_dict()}
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        if events is not None:
            events.write(report, step=epoch + 1)
        session.report(report, state=state)
        last = report
    if events is not None:
        events.close()
    if failed is not None:  # no checkpoint: a retry would only diverge again
        last = {"epoch": failed[0], "failed": failed[1], "finished": False, "val_score": math.nan}
        session.report(last)
    return last


def regulariser_artifacts(checkpoint: str, folder: str, stem: str, num_images: int = 64) -> List[str]:
    """The files the regularisers of a trained state write for the user (``Regulariser.artifacts``,
    e.g. MGM's grid of generated images), from ``num_images`` validation samples, on the CPU."""
    from torch.utils.data import default_collate

    state = load_state(checkpoint)
    cfg = TrialConfig.from_dict(state["config"])
    if not cfg.regularisers:
        return []
    tasks = build_tasks(cfg.dataset, cfg.tasks, cfg.auxiliary_tasks)
    extra = extra_labels(cfg)
    val_set = build_dataset(cfg.dataset, cfg.data_root, "val", list(cfg.tasks) + extra)
    batch = default_collate([val_set[i] for i in range(min(num_images, len(val_set)))])
    model = build_model(tasks, cfg.model)
    model.load_state_dict(state["model"])
    regularisers = build_regularisers(cfg.regularisers, tasks, cfg.context)
    label_tasks, session = build_tasks(cfg.dataset, extra), Session(device=torch.device("cpu"))
    for reg in regularisers:
        reg.attach(model, session, tuple(batch["image"].shape[-2:]), label_tasks)
    regularisers.load_state_dict(state["regularisers"])
    return [path for reg in regularisers for path in reg.artifacts(batch["image"], batch["targets"], folder, stem)]

"""Single-task baselines: a content-addressed cache and an actor pool that fills it.

Delta_m (survey Eq. 10) compares against single-task networks that went through the same
hyper-parameter search as the model, so every task is trained on every grid setting and seed
of the study. Each (resolved config) result is cached under ``<cache>/<hash>/result.json``,
keyed by everything that determines it (the whole TrialConfig except its experiment name, plus
``CACHE_VERSION``): a second study that needs the same baselines trains none. The missing ones
are trained in parallel by a pool of Ray actors, one run per actor at a time. A baseline's
TensorBoard events live in its cache entry too (``<hash>/tensorboard/<run>``); ``link_events``
shows them in a study's own TensorBoard folder.

Concurrent studies on one storage: an entry is trained under an exclusive ``fcntl.flock`` on
``<cache>/<hash>.lock`` (``train_once``), and the lock holder looks in the cache again first, so
a second study that needs the same baseline waits for the first one's run and then reads its
result - each baseline is trained once. The result JSON is written to a temporary file, fsynced
and renamed. flock is per host on local disks; on NFS, Linux maps it to NFS byte-range locks.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from collections import Counter, defaultdict
from statistics import mean
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from orchestrator.results import best_setting
from orchestrator.runs import write_json_durable
from trainables.config import TrialConfig, stable_hash
from trainables.tracking import TENSORBOARD, experiment_dir, link_run, run_dir

CACHE_VERSION = 2  # 2: configs name plug-ins as {name, params} and the model as one reference
RESULT_FILE = "result.json"


def cache_key(cfg: TrialConfig) -> str:
    return stable_hash({"config": cfg.config_hash(exclude=("experiment",)), "version": CACHE_VERSION})


def load_cached(cache_dir: str, cfg: TrialConfig) -> Optional[dict]:
    path = os.path.join(cache_dir, cache_key(cfg), RESULT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def train_once(out_dir: str, train: Callable[[], dict]) -> dict:
    """The cache entry ``out_dir``'s result: read if there, else ``train()`` (its result is cached
    when completed), under an exclusive lock on ``<out_dir>.lock`` so that concurrent callers on
    one storage train it once; a result read from the cache says ``cached: True``."""
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    with open(out_dir + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        path = os.path.join(out_dir, RESULT_FILE)
        if os.path.exists(path):  # another study trained it while this one waited
            with open(path) as fh:
                return {**json.load(fh), "cached": True}
        result = train()
        if result["status"] == "completed":
            write_json_durable(path, result)
        return {**result, "cached": False}


class BaselineTrainer:
    """Actor body: trains one single-task config per call, in this process."""

    def __init__(self, num_threads: int = 1):
        import torch

        import trainables  # noqa: F401

        torch.set_num_threads(max(1, num_threads))

    def train(self, config: dict, out_dir: str, mirror: Optional[Tuple[str, str]] = None) -> dict:
        """Train (or read) the cache entry ``out_dir``; with ``mirror`` = (object-store URI, staging
        folder), the entry is pushed to the store too, whichever node this actor runs on."""
        # a result another study cached carries that study's experiment name: this config replaces it
        result = {**train_once(out_dir, lambda: self._fit(TrialConfig.from_dict(config), out_dir)), "config": config}
        if mirror is not None and result["status"] == "completed":
            from orchestrator.storage import Mirror

            store = Mirror(*mirror)
            store.push(os.path.relpath(out_dir, store.staging))
        return result

    def _fit(self, cfg: TrialConfig, out_dir: str) -> dict:
        from trainables.session import Session
        from trainables.train_loop import fit

        start = time.time()
        # The checkpoint lives in the cache entry: an actor restarted after a crash resumes.
        try:
            last = fit(dataclasses.replace(cfg, events_dir=os.path.join(out_dir, TENSORBOARD)),
                       Session(checkpoint_dir=out_dir))
            status, error = ("failed", last["failed"]) if last.get("failed") else ("completed", "")
        except Exception as err:  # reported as an error row; never cached (nor is a failed one)
            last, status, error = {}, "error", f"{type(err).__name__}: {err}"
        return {"config": cfg.to_dict(), "metrics": last, "wall_time_s": time.time() - start,
                "status": status, "error": error, "checkpoint_path": out_dir}


def ensure_baselines(
    configs: Sequence[TrialConfig],
    cache_dir: str,
    num_actors: int,
    actor_options: dict,
    log: Callable[[str], None] = print,
    mirror: Optional[Tuple[str, str]] = None,
) -> List[dict]:
    """Results of every config: from the cache, or trained now by an actor pool. ``mirror``:
    (object-store URI, staging folder) when ``cache_dir`` is the staging copy of a store's cache:
    each actor pushes the entry it trained."""
    results, todo = [], []
    for cfg in configs:
        cached = load_cached(cache_dir, cfg)
        if cached is not None:
            results.append({**cached, "cached": True, "config": cfg.to_dict()})
        else:
            todo.append(cfg)
    log(f"single-task baselines: {len(results)} cached, {len(todo)} to train")
    if not todo:
        return results
    jobs = [(cfg.to_dict(), os.path.join(cache_dir, cache_key(cfg)), mirror) for cfg in todo]
    for i, result in enumerate(run_on_actors(BaselineTrainer, "train", jobs, num_actors, actor_options), 1):
        cfg = result["config"]
        log(f"  [{i}/{len(jobs)}] {cfg['experiment']} {_setting(cfg)} seed={cfg['seed']}: "
            + (f"{result['status']} val_score={result['metrics'].get('val_score', float('nan')):.4g} "
               if result["status"] == "completed" else f"{result['status'].upper()} ({result['error']}) ")
            + f"({result['wall_time_s']:.0f}s)" + (" [trained by a concurrent study]" if result["cached"] else ""))
        results.append(result)
    return results


def link_events(results: Sequence[dict], cache_dir: str, tensorboard_dir: str) -> int:
    """Show each baseline's events (in its cache entry) under ``tensorboard_dir``, at
    ``<experiment>/<run>`` like a study's other runs; returns how many runs were linked.
    Baselines cached before they wrote events have none and are skipped."""
    linked = 0
    for r in results:
        cfg = TrialConfig.from_dict(r["config"])
        source = run_dir(dataclasses.replace(cfg, events_dir=os.path.join(cache_dir, cache_key(cfg), TENSORBOARD)))
        if os.path.isdir(source):
            shown = dataclasses.replace(cfg, events_dir=experiment_dir(tensorboard_dir, cfg.experiment))
            link_run(source, run_dir(shown))
            linked += 1
    return linked


def run_on_actors(actor_class: type, method: str, jobs: Sequence[tuple], num_actors: int,
                  actor_options: dict, ordered: bool = False) -> Iterator[Any]:
    """``actor.<method>(*job)`` for every job on a pool of ``actor_class`` actors, in parallel;
    yields the results as they finish, or in the order of the jobs with ``ordered``. Each actor
    asks for ``actor_options`` (one worker's CPUs / GPUs) and restarts after a crash; the pool is
    torn down when the jobs are done."""
    import ray
    from ray.util import ActorPool

    remote = ray.remote(actor_class)
    threads = int(actor_options.get("num_cpus", 1) or 1)
    actors = [remote.options(max_restarts=2, max_task_retries=2, **actor_options).remote(threads)
              for _ in range(max(1, min(num_actors, len(jobs))))]
    try:
        pool = ActorPool(actors)
        run = pool.map if ordered else pool.map_unordered
        yield from run(lambda actor, job: getattr(actor, method).remote(*job), jobs)
    finally:
        # dropping the handles ends the actors gracefully once idle (ray.kill's SIGTERM printed a
        # traceback from every actor process into the study's console)
        actors.clear()


def best_baselines(results: Sequence[dict], directions: Dict[str, bool]) -> Dict[str, dict]:
    """Per task: the setting with the best mean validation score over seeds (never test).

    Returns task -> {"setting_hash", "val": {key: mean}, "test": {key: mean}, "checkpoint"}
    where keys are the task's "task/metric" entries and "checkpoint" is the trained network of
    that setting's lowest seed (what cross-stitch / NDDR start from).
    """
    by_task: Dict[str, List[tuple]] = defaultdict(list)  # task -> [(setting hash, result)]
    every: Dict[str, List[dict]] = defaultdict(list)  # task -> its results, whatever their status
    for r in results:
        cfg = TrialConfig.from_dict(r["config"])
        every[cfg.tasks[0]].append(r)
        if r["status"] in ("completed", "failed"):  # a failed seed rules its setting out
            by_task[cfg.tasks[0]].append((cfg.config_hash(exclude=("seed",)), r))
    best: Dict[str, dict] = {}
    for task, runs in by_task.items():
        setting = best_setting(runs, setting=lambda run: run[0], score=lambda run: run[1]["metrics"].get("val_score"),
                               failed=lambda run: run[1]["status"] == "failed")
        if setting is None:
            continue
        chosen = sorted((r for h, r in runs if h == setting), key=lambda r: r["config"]["seed"])
        best[task] = {"setting_hash": setting, "val": _mean_metrics(chosen, "val/", task),
                      "test": _mean_metrics(chosen, "test/", task), "checkpoint": chosen[0].get("checkpoint_path", "")}
    missing = sorted({k.split("/")[0] for k in directions} - set(best))
    if missing:
        raise BaselineFailed(f"no single-task baseline finished for tasks {missing}: " + "; ".join(
            f"{', '.join(sorted({r['config']['experiment'] for r in every[t]})) or t} {failure_summary(every[t])}"
            for t in missing) + BaselineFailed.CONSEQUENCE)
    return best


class BaselineFailed(RuntimeError):
    """No grid setting of a Delta_m reference (a single-task baseline, the supervised MTL
    baseline) finished on every seed: the study stops before its multi-task trials."""

    CONSEQUENCE = ("; Delta_m is measured against it, so the study stops before any multi-task trial "
                   "(fix the cause, or change the grid, then run the study again)")


def failure_summary(runs: Sequence[dict]) -> str:
    """'has no grid setting that finished on every seed (3 run(s): 2 failed, 1 error; first: <its error>)'."""
    if not runs:
        return "has no run"
    counts = Counter(r["status"] for r in runs)
    first = next((r["error"] for r in runs if r.get("error")), "")
    return (f"has no grid setting that finished on every seed ({len(runs)} run(s): "
            + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            + (f"; first: {first}" if first else "") + ")")


def _mean_metrics(runs: Sequence[dict], prefix: str, task: str) -> Dict[str, float]:
    keys = [k for k in runs[0]["metrics"] if k.startswith(f"{prefix}{task}/")]
    return {k[len(prefix):]: mean(r["metrics"][k] for r in runs) for k in keys}


def _setting(cfg: dict) -> str:
    return f"{cfg['optimizer']}@{cfg['lr']:g}/{cfg['scheduler']}/bs{cfg['batch_size']}"

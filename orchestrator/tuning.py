"""Multi-task trials through Ray Tune: one Tune run per experiment, or one for a batch of them.

Ray 2.60 runs Train V2, which refuses ``Tuner(TorchTrainer(...))``. Each trial is a Tune
*function trainable*, in one of two shapes (``trainable_for``):

- one worker (the default, ``resources.reuse_workers``): the train loop runs in Tune's own trial
  process (``trainables.session.TuneSession``), which asks for the worker's CPUs / GPUs and which
  Tune keeps for the next trial (``reuse_actors``): no Train worker group, no process start and no
  ``import torch`` per trial. Reports and checkpoints go straight to Tune.
- several workers (data parallel), or ``reuse_workers: false``: the trainable builds and fits a
  ``TorchTrainer``; ``TuneReportCallback`` forwards rank 0's per-epoch reports to Tune. The inner
  run is named after the Tune trial and shares the Tuner's storage, so a retried trial resumes
  from its own last checkpoint. Tune only accounts for the trial's process, not the worker group
  it starts: that process asks for no CPU and concurrency is capped by what the workers need
  (otherwise two trials on two CPUs deadlock, each holding a CPU its workers wait for).

Either way ASHA acts on the per-epoch reports. Experiments that are a plain grid without ASHA
(``batchable``) share one Tune run over (experiment x setting x seed), longest first, so the
number of trials in flight is set by the cluster, not by experiment boundaries; an experiment
with ASHA (which compares the trials of one run) or with its own Optuna searcher has a run of its own.

Trackers: the spec's ``loggers`` become Ray Tune's own logger callbacks (MLflow, W&B), one
MLflow experiment / W&B group ``<study>/<Tune run>`` per Tune run and one run per trial; a
loss-weight search is recorded in the study's Optuna database (``orchestrator/weight_search.py``).
Tune's own TensorBoard files stay in ``tune/``; the study's TensorBoard folder is the train loop's
(``trainables/tracking.py``).

Ctrl-C: Tune catches the first SIGINT inside ``Tuner.fit``, saves the run's state and returns
the trials as they are (the trials cut short look ended in the ``ResultGrid``).
``run_experiments`` sees that Tune caught it (``_SigintWatch``) and raises ``ExperimentInterrupted``
with the outcomes of the trials that completed, failed or raised, so the study starts no further
experiment. The SIGINT handler in place before ``fit`` is put back after it (Tune leaves its own
installed, and a later Ctrl-C would then stop nothing). ``resume=True`` continues the run with
``Tuner.restore(path, trainable, resume_unfinished=True)``: ended trials are kept as they are
(errored ones too: they already had their retry), unfinished ones run again from their last
checkpoint (Tune's own, or the inner Train run's: same run name and storage).
"""
from __future__ import annotations

import math
import os
import re
import signal
import threading
from typing import Any, Callable, Dict, List, Sequence, Tuple

from orchestrator.plan import Experiment
from orchestrator.spec import ResourcesSpec, SearchSpec, SpecError
from orchestrator.ray_env import joins_cluster
from orchestrator.storage import join
from orchestrator.weight_search import make_searcher, storage_url, strip_raw
from trainables.plugins import Plugin
from trainables.tracking import INSTALL_HINT, TENSORBOARD, tensorboard_installed

METRIC, MODE = "val_score", "max"
URI_SCHEMES = {"gcs": "gs"}  # pyarrow filesystem type_name -> URI scheme, where they differ
BATCH_KEY = "trial"  # a batched run's trial config: {BATCH_KEY: the whole TrialConfig dict}
DRIVER_MEMORY_BYTES = 2**20
MLFLOW_DB = "mlflow.db"


class ExperimentInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``Tuner.fit``: ``outcomes`` are the trials that ended before it."""

    def __init__(self, outcomes: List[Dict[str, Any]]):
        super().__init__(f"{len(outcomes)} trial(s) ended before the interrupt")
        self.outcomes = outcomes


def trial_name(experiment: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", experiment).strip("-")


def slots(cpus: float, gpus: float, cluster: Dict[str, float]) -> int:
    """How many units asking for ``cpus`` CPUs and ``gpus`` GPUs fit in the cluster (at least one)."""
    fits = [cluster.get("CPU", 1) / cpus] if cpus else []
    if gpus:
        fits.append(cluster.get("GPU", 0) / gpus)
    return max(1, int(math.floor(min(fits)))) if fits else 1


def max_concurrent(resources: ResourcesSpec, cluster: Dict[str, float]) -> int:
    """Trials whose worker groups fit in the cluster at once (at least one)."""
    r = resources
    if r.max_concurrent_trials:
        return r.max_concurrent_trials
    return slots(r.workers_per_trial * r.cpus_per_worker, r.workers_per_trial * r.gpus_per_worker, cluster)


def check_fits(resources: ResourcesSpec, cluster: Dict[str, float]) -> None:
    """Raise if one trial's worker group can never be placed on this (fixed-size) cluster.

    Ray Train would otherwise wait for the resources, time out and retry without end.
    """
    r = resources
    needs = {"CPU": r.workers_per_trial * r.cpus_per_worker, "GPU": r.workers_per_trial * r.gpus_per_worker}
    for kind, need in needs.items():
        if need > cluster.get(kind, 0.0) + 1e-9:
            raise SpecError(
                f"resources: one trial's worker group needs {need:g} {kind} ({r.workers_per_trial} worker(s) x "
                f"{r.cpus_per_worker if kind == 'CPU' else r.gpus_per_worker:g}) but the Ray cluster has "
                f"{cluster.get(kind, 0.0):g}; lower resources.workers_per_trial (--workers-per-trial) or "
                f"cpus_per_worker / gpus_per_worker (--gpus-per-worker)")


def mlflow_uri(params: Dict[str, Any], study_dir: str) -> str:
    """The logger's ``tracking_uri``, or a SQLite store in the study's folder (MLflow 3 refuses a
    plain-folder store unless told otherwise)."""
    return params.get("tracking_uri") or "sqlite:///" + os.path.join(os.path.abspath(study_dir), MLFLOW_DB)


def tracker_callbacks(loggers: Sequence[Plugin], study_dir: str, experiment: str) -> List[Any]:
    """Ray Tune's logger callbacks for the spec's ``loggers`` (checked by ``StudySpec``); the study's
    name is its folder's."""
    study = os.path.basename(study_dir)
    name = f"{study}/{experiment}"
    callbacks = []
    for logger in loggers:
        params = dict(logger.params)
        if logger.name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow_uri(params, study_dir), experiment_name=name,
                                                  tags={"study": study, "experiment": experiment}))
        else:  # wandb: entity and mode go to wandb.init
            from ray.air.integrations.wandb import WandbLoggerCallback

            callbacks.append(WandbLoggerCallback(project=params.pop("project", study), group=name, **params))
    return callbacks


def dashboards(study_dir: str, loggers: Sequence[Plugin], weight_search: bool) -> List[str]:
    """The lines a study ends with: where each tracker keeps its records and what shows them."""
    study = os.path.basename(study_dir)
    if tensorboard_installed():
        lines = [f"TensorBoard: tensorboard --logdir {os.path.join(study_dir, TENSORBOARD)}"]
    else:
        lines = [f"TensorBoard: no events written, the tensorboard package is not installed ({INSTALL_HINT})"]
    for logger in loggers:
        if logger.name == "mlflow":
            lines.append(f"MLflow: experiments {study}/<experiment> at {mlflow_uri(logger.params, study_dir)}")
        else:
            lines.append(f"W&B: project {logger.params.get('project', study)}, groups {study}/<experiment>")
    if weight_search:
        lines.append(f"Optuna: optuna-dashboard {storage_url(study_dir)}")
    return lines


def _trial_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """A trial's TrialConfig dict: a batched run's trials carry theirs under ``BATCH_KEY``."""
    return strip_raw(config.get(BATCH_KEY, config))


def _run_trial(config: Dict[str, Any], scaling: Dict[str, Any], storage_path: str, loopback: bool = False) -> None:
    """Tune function trainable of a multi-worker trial (or ``reuse_workers: false``): fit one
    TorchTrainer for this trial's config. ``loopback``: a local Ray instance, whose workers' process
    group binds 127.0.0.1 only (``orchestrator/loopback_ddp.py``)."""
    from ray import tune
    from ray.train import CheckpointConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainables.worker import train_worker

    # Not validated again here: every part of it was checked before Ray started (the base
    # TrialConfig, the grid settings, the weight search's space), and the worker checks it anyway.
    extra = {}
    if loopback and scaling["num_workers"] > 1:
        from orchestrator.loopback_ddp import torch_config

        extra["torch_config"] = torch_config()
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=_trial_config(config),
        **extra,
        scaling_config=ScalingConfig(**scaling),
        run_config=RunConfig(
            name=f"train-{tune.get_context().get_trial_id()}",
            storage_path=storage_path,
            callbacks=[TuneReportCallback()],
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            logging_config=LoggingConfig(log_level="WARNING"),  # per-report INFO lines drown the progress
        ),
    )
    trainer.fit()


def _train_here(config: Dict[str, Any]) -> None:
    """Tune function trainable of a one-worker trial: the train loop runs in this (reused) process."""
    from trainables.worker import train_in_trial

    train_in_trial(_trial_config(config))


def trainable_for(resources: ResourcesSpec, storage_path: str) -> Tuple[Any, bool]:
    """(Tune trainable, whether Tune may reuse its processes) for trials of ``resources``.

    One worker with ``reuse_workers``: the trial trains in its own Tune process, which asks for the
    worker's CPUs and GPUs, and Tune reuses it for the next trial. Otherwise each trial's Tune
    process only waits on the Train worker group it starts: it asks for no CPU (a token 1 MB of
    memory, since an all-zero request is refused), so a worker group may use every CPU of a node.
    """
    from ray import tune

    r = resources
    if r.workers_per_trial == 1 and r.reuse_workers:
        return tune.with_resources(_train_here, {"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker}), True
    scaling = dict(num_workers=r.workers_per_trial, use_gpu=r.gpus_per_worker > 0,
                   resources_per_worker={"CPU": r.cpus_per_worker,
                                         **({"GPU": r.gpus_per_worker} if r.gpus_per_worker else {})})
    loopback = not joins_cluster()  # a local instance (start_ray): one node, loopback only
    return tune.with_resources(tune.with_parameters(_run_trial, scaling=scaling, storage_path=storage_path,
                                                    loopback=loopback),
                               {"cpu": 0, "memory": DRIVER_MEMORY_BYTES}), False


def batchable(exp: Experiment, search: SearchSpec) -> bool:
    """Whether ``exp``'s trials may share one Tune run with other experiments' trials: a plain
    grid (no Optuna searcher of its own) and no ASHA (which compares the trials of one run)."""
    return exp.weight_search is None and not search.asha


def run_name(exps: Sequence[Experiment]) -> str:
    """The Tune run's name (its folder under the study's ``tune/``): the experiment's, or for a
    batch the first one's and how many more (the same for the same batch, so a resume finds it)."""
    first = trial_name(exps[0].name)
    return first if len(exps) == 1 else f"batch_{first}_and_{len(exps) - 1}_more"


def run_experiments(exps: Sequence[Experiment], search: SearchSpec, resources: ResourcesSpec, storage_path: str,
                    cluster: Dict[str, float], verbose: int = 0, position: Tuple[int, int] = (1, 1),
                    *, study_dir: str, loggers: Sequence[Plugin] = (), resume: bool = False,
                    log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Run every grid setting x seed of ``exps`` as the trials of one Tune run; one outcome dict
    per trial (its ``config["experiment"]`` says whose).

    One experiment: its grid (or its Optuna weight search) and ASHA when the spec asks.
    Several (``batchable`` ones): one grid over (experiment x setting x seed), so Tune keeps every
    slot busy across experiment boundaries and reuses trial processes between them.
    ``study_dir`` (the study's folder, named after the study) holds the Optuna database of a
    loss-weight search and the default MLflow store; ``loggers``: ``StudySpec.loggers``.
    ``resume``: continue the Tune run saved under ``storage_path`` (from scratch when Tune saved
    none). Raises ``ExperimentInterrupted`` after a Ctrl-C.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from orchestrator.progress import EpochLines

    exps = list(exps)
    exp = exps[0]
    if len(exps) > 1 and not all(batchable(e, search) for e in exps):
        raise ValueError("run_experiments: only batchable experiments share a Tune run")
    trainable, reuse = trainable_for(resources, storage_path)
    search_alg, num_samples = None, 1
    epochs = max(e.base.epochs for e in exps)
    trials = sum(e.num_trials for e in exps)
    if exp.weight_search:  # Optuna TPE over the weights (and the grid setting), first seed
        param_space = {**exp.base.to_dict(), "seed": exp.seeds[0]}  # the Tune boundary: typed config -> dict
        search_alg = make_searcher(exp.base.tasks, exp.settings, exp.weight_search, exp.base.balancer, METRIC, MODE,
                                   url=storage_url(study_dir), name=f"{os.path.basename(study_dir)}/{exp.name}")
        num_samples = exp.weight_search.num_samples
    elif len(exps) == 1:  # the survey grid x seeds, as Tune's own grid
        param_space = {**exp.base.to_dict(), "hp": tune.grid_search(list(exp.settings)),
                       "seed": tune.grid_search(list(exp.seeds))}
    else:  # every experiment's grid x seeds as one list of whole trial configs
        configs = [{**e.base.to_dict(), "hp": s, "seed": k} for e in exps for s in e.settings for k in e.seeds]
        param_space = {BATCH_KEY: tune.grid_search(configs)}
    scheduler = None
    if search.asha:
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=exp.base.epochs,
                                  grace_period=search.grace_period, reduction_factor=search.reduction_factor)
    # With CheckpointConfig(num_to_keep=1) every trial checkpoint forces a snapshot of the run's state
    # (by design: the snapshot must name a checkpoint that still exists), and Tune warns at each one
    # that comes within 5 s of the last - i.e. every epoch of a short trial. The snapshot is a small
    # JSON file; the warning goes (threshold 0), unless the user set one.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not verbose:  # Tune's new console prints a box, a results path and a TensorBoard path per
        # experiment even at verbose 0 (the path is an ephemeral session folder); the legacy output is silent
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    else:
        os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
    name = run_name(exps)
    label = exp.name if len(exps) == 1 else f"{len(exps)} experiments"
    path = join(storage_path, name)
    if resume and tune.Tuner.can_restore(path):
        log(f"  {label}: resuming Tune's saved run {path}: ended trials kept, unfinished ones continue "
            "from their last checkpoint")
        return _fit(tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False))
    if resume:
        log(f"  {label}: Tune saved no state under {path}; its trials run from scratch")
    return _fit(tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, scheduler=scheduler, search_alg=search_alg,
                                    num_samples=num_samples, max_concurrent_trials=max_concurrent(resources, cluster),
                                    reuse_actors=reuse),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=verbose,
                                  callbacks=[EpochLines(label, position[0], position[1], trials, epochs, batch_of=len(exps)),
                                             *tracker_callbacks(loggers, study_dir, exp.name if len(exps) == 1 else name)],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=1)),
    ))


class _SigintWatch:
    """The SIGINT handler in place around ``Tuner.fit``. Tune (main thread, unless
    TUNE_DISABLE_SIGINT_HANDLER is set) installs its own over it and puts it back only when a
    SIGINT arrives: finding this handler again after ``fit`` means Tune caught a Ctrl-C. A SIGINT
    that reaches it directly (Tune's handler off, or a second Ctrl-C) raises KeyboardInterrupt."""

    def __call__(self, signum: int, frame: Any) -> None:
        raise KeyboardInterrupt


def _fit(tuner: Any) -> List[Dict[str, Any]]:
    """``tuner.fit()``'s outcomes; raises ``ExperimentInterrupted`` when Tune caught a Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        return [trial_outcome(result) for result in tuner.fit()]
    watch = _SigintWatch()
    before = signal.signal(signal.SIGINT, watch)
    try:
        grid = tuner.fit()
        caught = signal.getsignal(signal.SIGINT) is watch and not int(os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0"))
    finally:
        signal.signal(signal.SIGINT, before)
    outcomes = [trial_outcome(result) for result in grid]
    if caught:  # a trial cut short has no "finished" report; ASHA's stopped trials come back on resume
        raise ExperimentInterrupted([o for o in outcomes if o["status"] in ("completed", "failed", "error")])
    return outcomes


def trial_outcome(result: Any) -> Dict[str, Any]:
    """One Tune ``Result`` as the outcome dict a results row is made from. Status: "error" (an
    exception), "failed" (fit ended a diverged run and reported why: it returns, never raises, so
    Tune does not retry it), "completed", or "stopped" (by ASHA)."""
    metrics = dict(result.metrics or {})
    status = ("error" if result.error else "failed" if metrics.get("failed")
              else "completed" if metrics.get("finished") else "stopped")
    checkpoint = str(metrics.get("checkpoint_path", "") or "")  # a Train run's, forwarded by its callback
    if not checkpoint and getattr(result, "checkpoint", None) is not None:  # a trial trained in Tune's process
        checkpoint = result.checkpoint.path
        kind = getattr(getattr(result.checkpoint, "filesystem", None), "type_name", "local")
        if kind not in ("local", "mock"):  # in an object store: say which (e.g. s3://bucket/...)
            checkpoint = f"{URI_SCHEMES.get(kind, kind)}://{checkpoint}"
    return {"config": _trial_config(result.config or {}), "metrics": metrics, "status": status,
            "error": (f"{type(result.error).__name__}: {result.error}" if result.error
                      else str(metrics.get("failed") or "")),
            "wall_time_s": float(metrics.get("time_total_s", math.nan)),
            "trial_id": str(metrics.get("trial_id", "")),
            "checkpoint_path": checkpoint}

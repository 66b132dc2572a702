"""Study specs: YAML -> frozen dataclasses, validated before Ray starts.

A bad field raises ``SpecError`` whose message starts with the field's path (e.g.
``experiments[1].balancer.name``) and says what is allowed. The structure is checked here (by
``trainables/schema.py``, the converter every typed structure of the product shares); plug-in
names, their parameters and the capabilities of each balancer/architecture pair are checked
against the registries by ``orchestrator/plan.py``'s ``validate``, still without touching data.
Plug-ins are ``Plugin`` references (``trainables/plugins.py``), the type the whole product uses.

Numbers: spec files are read with YAML 1.2's float syntax (``load_yaml``), so ``lrs: [2e-4]``
is a number (YAML 1.1, PyYAML's default, reads ``2e-4`` without a dot as a string); a numeric
string where a number is expected is accepted too, any other string is an error naming it.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import yaml

from trainables.config import Runtime
from trainables.optim import OPTIMIZERS, SCHEDULERS
from trainables.plugins import ModelRef, Plugin
from trainables.schema import ConfigError, from_plain, to_plain

__all__ = ["DatasetSpec", "ExperimentSpec", "LossWeightSearch", "Plugin", "ResourcesSpec", "SearchSpec", "SpecError",
           "StudySpec", "TrainSpec", "load_spec"]


class SpecError(ConfigError):
    """A study spec is invalid; the message names the field and the fix."""


class _Yaml12Floats(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2's floats: exponents without a dot ("2e-4", "1E3")."""


_Yaml12Floats.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(stream: Any) -> Any:
    """YAML text (or an open file) as plain data, safely, with YAML 1.2's floats."""
    return yaml.load(stream, Loader=_Yaml12Floats)


@dataclass(frozen=True)
class DatasetSpec:
    """The study's dataset: a plug-in with its parameters, its folder, and optional partial labels.

    Attributes:
        name: a registered dataset (``mtl list dataset``).
        root: the dataset's folder on disk (real datasets; ``mtl data check`` checks it). null:
            the embedded synthetic data, rendered once into ``$MTL_CACHE_DIR`` (default
            ``~/.cache/mtl``).
        params: the dataset's parameters (``mtl list dataset`` lists them), e.g.
            ``{image_size: 64, num_train: 2000}`` for the synthetic scenes.
        labels: partial labels for the training split, one mask shared by every model of the
            study (JTR / MTPSL settings): ``{setting: full | onelabel | randomlabels |
            halflabels, seed: 0, unlabelled_fraction: 0.0, unlabelled: keep | drop}`` or
            ``{weights_file: path/to/onelabel.pth, tasks: [...]}`` (MTPSL's mask files).
            null: every image keeps every label.
    """

    name: str = "synthetic"
    root: Optional[str] = None
    params: Mapping[str, Any] = field(default_factory=dict)
    labels: Optional[Mapping[str, Any]] = None

    @property
    def plugin(self) -> Plugin:
        return Plugin(self.name, self.params)


@dataclass(frozen=True)
class LossWeightSearch:
    """Optuna (TPE) search over the ``fixed`` balancer's per-task weights.

    Each trial also draws one of the study's selected grid settings, so the weights and the
    optimiser are searched jointly; the objective is the validation Delta_m against the
    cached single-task baselines.

    Attributes:
        num_samples: trials to run (on the study's first seed).
        space: "log_uniform" (each w_t in [low, high], log scale) or "simplex" (weights
            that sum to T, drawn as normalised -log U(0, 1), i.e. a flat Dirichlet).
        low: the smallest weight of the "log_uniform" space.
        high: the largest weight of the "log_uniform" space.
        seed: the TPE sampler's seed (the search is reproducible given it).
    """

    num_samples: int = 16
    space: str = "log_uniform"
    low: float = 0.1
    high: float = 10.0
    seed: int = 0

    def __post_init__(self):
        if self.space not in ("log_uniform", "simplex"):
            raise SpecError(f"space: {self.space!r} is not one of ('log_uniform', 'simplex')")
        if self.num_samples < 1:
            raise SpecError(f"num_samples: {self.num_samples} must be >= 1")
        if not (0 < self.low < self.high and math.isfinite(self.high)):
            raise SpecError(f"low/high: need 0 < low < high (finite), got {self.low}, {self.high}")
        if self.seed < 0:
            raise SpecError(f"seed: {self.seed} must be an integer >= 0")


@dataclass(frozen=True)
class ExperimentSpec:
    """One model of the study: an architecture + balancer (backbone/head default to the study's).

    Attributes:
        name: the experiment's name: its row in the table, its folder and its Tune run.
        architecture: the multi-task architecture (``mtl list architecture``).
        balancer: the task-balancing method (``mtl list balancer``).
        backbone: the encoder (``mtl list backbone``); null: the study's ``backbone``.
        head: the per-task decoder of dense tasks (``mtl list head``); null: the study's ``head``.
        weight_search: an Optuna search over the ``fixed`` balancer's task weights instead of
            the grid; null: the grid.
        primary_task: overrides the study's (e.g. an IAL study with each task as the primary one).
        grouping: a task-grouping search (``mtl list grouping``) that the study runs on the cached
            single-task networks to derive the architecture's tree before the experiment trains.
        auxiliary_tasks: overrides the study's (e.g. PAD-Net with normals and edges, the MTL
            baseline without); null: the study's.
        regularisers: cross-task losses added outside the balancer (``mtl list regulariser``:
            consistency, JTR, ...), e.g. ``[{name: consistency, params: {weight: 1.0}}]``.
    """

    name: str
    architecture: Plugin = Plugin("mtl_baseline")
    balancer: Plugin = Plugin("fixed")
    backbone: Optional[Plugin] = None
    head: Optional[Plugin] = None
    weight_search: Optional[LossWeightSearch] = None
    primary_task: Optional[str] = None
    grouping: Optional[Plugin] = None
    auxiliary_tasks: Optional[Tuple[str, ...]] = None
    regularisers: Tuple[Plugin, ...] = ()

    def auxiliary(self, study: "StudySpec") -> Tuple[str, ...]:
        """The auxiliary tasks this experiment trains: its own, or else the study's."""
        return tuple(study.auxiliary_tasks if self.auxiliary_tasks is None else self.auxiliary_tasks)

    def model(self, study: "StudySpec") -> ModelRef:
        """This experiment's model: its architecture on its (or else the study's) backbone and head."""
        return ModelRef(self.architecture, self.backbone or study.backbone, self.head or study.head)


@dataclass(frozen=True)
class SearchSpec:
    """Which settings of the survey's 48-setting grid to run (3 batch sizes x poly / step decay x
    Adam at 2e-4, 1e-4, 5e-5, 1e-5 or SGD with momentum 0.9 at 5e-2, 1e-2, 5e-3, 1e-3), and ASHA.
    Every model and every single-task baseline is trained on each selected setting and seed.

    Attributes:
        batch_sizes: keep these batch sizes; null: the dataset's three survey batch sizes. Sizes
            outside them give the same grid over the sizes given.
        schedulers: keep these learning-rate schedules ("poly", "step"); null: both.
        optimizers: keep these optimisers ("adam", "sgd"); null: both.
        lrs: keep these initial learning rates; null: every rate of the kept optimisers. Rates
            outside the grid (another paper's protocol) need ``optimizers``.
        max_settings: keep only the first N selected settings (smoke runs); null: all.
        asha: stop poor trials early with ASHA on the per-epoch validation Delta_m.
        grace_period: epochs a trial runs before ASHA may stop it.
        reduction_factor: ASHA's reduction factor: about 1 in this many trials goes on at each rung.
    """

    batch_sizes: Optional[Tuple[int, ...]] = None
    schedulers: Optional[Tuple[str, ...]] = None
    optimizers: Optional[Tuple[str, ...]] = None
    lrs: Optional[Tuple[float, ...]] = None
    max_settings: Optional[int] = None
    asha: bool = False
    grace_period: int = 1
    reduction_factor: int = 3

    def __post_init__(self):
        for name, vocabulary in (("schedulers", SCHEDULERS), ("optimizers", OPTIMIZERS)):
            for i, value in enumerate(getattr(self, name) or ()):
                if value not in vocabulary:
                    raise SpecError(f"{name}[{i}]: {value!r} is not one of {', '.join(vocabulary)}")
        for i, b in enumerate(self.batch_sizes or ()):
            if b < 1:
                raise SpecError(f"batch_sizes[{i}]: {b} must be >= 1")
        for i, lr in enumerate(self.lrs or ()):
            if not (math.isfinite(lr) and lr > 0):
                raise SpecError(f"lrs[{i}]: {lr} must be a positive number")
        if self.max_settings is not None and self.max_settings < 1:
            raise SpecError(f"max_settings: {self.max_settings} must be >= 1 or null")
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise SpecError(f"grace_period / reduction_factor: need grace_period >= 1 and reduction_factor >= 2, "
                            f"got {self.grace_period} and {self.reduction_factor}")


@dataclass(frozen=True)
class TrainSpec:
    """How every trial trains (the grid setting gives its optimiser, lr, schedule and batch size).

    Attributes:
        epochs: training epochs of every trial (models and single-task baselines alike).
        seeds: every setting is trained once per seed; the table reports mean +- std over them.
        weight_decay: the optimiser's weight decay.
        max_steps_per_epoch: cap on training steps per epoch (smoke runs); null: the whole split.
        eval_batch_size: batch size of the validation and test evaluation.
        amp: mixed precision of the forward passes: off (fp32), bf16 (CPUs, and GPUs from
            Ampere on) or fp16 (GPUs only, with loss scaling; not with gradient-level or bilevel
            balancers). Losses and metrics stay fp32; a value other than off keys new baselines.
        channels_last: the model and the image batches in NHWC memory layout (faster
            convolutions on GPU tensor cores); keys new baselines.
        cudnn_benchmark: cuDNN picks the fastest convolution algorithm per input shape (GPUs
            only; ignored on CPUs); keys new baselines.
        loader_workers: DataLoader worker processes per trial worker for training and
            evaluation (0: load in the training process); speed only, the cache keys ignore it.
        pin_memory: page-locked batches for faster copies to the GPU (ignored on CPUs); speed
            only, the cache keys ignore it.
    """

    epochs: int = 10
    seeds: Tuple[int, ...] = (0,)
    weight_decay: float = 1e-4
    max_steps_per_epoch: Optional[int] = None
    eval_batch_size: int = 64
    amp: str = "off"
    channels_last: bool = False
    cudnn_benchmark: bool = False
    loader_workers: int = 0
    pin_memory: bool = False

    @property
    def runtime(self) -> Runtime:
        """The device switches as every trial's ``TrialConfig.runtime``."""
        return Runtime(amp=self.amp, channels_last=self.channels_last, cudnn_benchmark=self.cudnn_benchmark,
                       loader_workers=self.loader_workers, pin_memory=self.pin_memory)

    def __post_init__(self):
        try:  # Runtime's own checks: amp's vocabulary, true/false, loader_workers >= 0
            self.runtime
        except ConfigError as err:
            raise SpecError(str(err)) from None
        if self.epochs < 1:
            raise SpecError(f"epochs: {self.epochs} must be >= 1")
        if not self.seeds:
            raise SpecError("seeds: give at least one seed")
        bad = [s for s in self.seeds if s < 0]
        if bad or len(set(self.seeds)) != len(self.seeds):
            raise SpecError(f"seeds: {list(self.seeds)} must be distinct integers >= 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise SpecError(f"weight_decay: {self.weight_decay} must be a number >= 0")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise SpecError(f"max_steps_per_epoch: {self.max_steps_per_epoch} must be >= 1 or null")
        if self.eval_batch_size < 1:
            raise SpecError(f"eval_batch_size: {self.eval_batch_size} must be >= 1")


@dataclass(frozen=True)
class ResourcesSpec:
    """Resources of one trial. Ray objects are built from these in orchestrator/ only.

    Attributes:
        workers_per_trial: Ray Train data-parallel workers (DDP processes) of one trial.
        cpus_per_worker: CPUs each worker (and each baseline actor) asks for.
        gpus_per_worker: GPUs each worker (and each baseline actor) asks for; fractions share a GPU.
        max_concurrent_trials: trials that run at once; null: as many as the cluster's CPUs /
            GPUs allow.
        baseline_actors: actors that train the single-task baselines in parallel; null: as many
            as fit.
        reuse_workers: a one-worker trial trains in Tune's own trial process, which Tune keeps
            for the next trial (no Ray Train worker group, no process start per trial); false:
            every trial starts a Train worker group as a multi-worker trial does.
    """

    workers_per_trial: int = 1
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    max_concurrent_trials: Optional[int] = None
    baseline_actors: Optional[int] = None
    reuse_workers: bool = True

    def __post_init__(self):
        if self.workers_per_trial < 1:
            raise SpecError(f"workers_per_trial: {self.workers_per_trial} must be >= 1")
        for name in ("cpus_per_worker", "gpus_per_worker"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SpecError(f"{name}: {value} must be a number >= 0")
        if self.cpus_per_worker == 0 and self.gpus_per_worker == 0:
            raise SpecError("cpus_per_worker / gpus_per_worker: a worker needs a CPU or a GPU; set one > 0")
        for name in ("max_concurrent_trials", "baseline_actors"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SpecError(f"{name}: {value} must be >= 1 or null")


@dataclass(frozen=True)
class ReferenceRow:
    """A paper's numbers for one model.

    Attributes:
        params_m: #P in millions of parameters; null: not given by the paper.
        flops_g: FLOPS in G multiply-accumulates; null: not given by the paper.
    """

    params_m: Optional[float] = None
    flops_g: Optional[float] = None

    def __post_init__(self):
        for name in ("params_m", "flops_g"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise SpecError(f"{name}: {value} must be a number >= 0, or null when the paper gives none")


@dataclass(frozen=True)
class ReferenceTable:
    """The paper table a preset reproduces; ``mtl models`` prints it beside the measured sizes.

    Attributes:
        source: the paper and table, as printed above the comparison.
        rows: the paper's numbers keyed by experiment name, "single_task" for the single-task
            networks together.
    """

    source: str
    rows: Mapping[str, ReferenceRow] = field(default_factory=dict)


DELTA_BASELINES = ("single_task", "supervised_mtl")
SUPERVISED_MTL = "supervised_mtl"  # the experiment name (and role) of that baseline


@dataclass(frozen=True)
class StudySpec:
    """A study: the tasks, the experiments (one model each), the dataset, the default backbone
    and head, the grid, training and resources. The top level of a spec file.

    Attributes:
        name: the study's name and its folder under the storage root: a plain folder name of
            letters, digits, '-', '_' and '.' that does not start with '.'.
        tasks: the tasks scored in Delta_m, each with its single-task baselines (``mtl list task``
            for the kinds; the dataset names the tasks it offers).
        experiments: the models to compare, one per experiment.
        dataset: the dataset, its folder and partial labels.
        backbone: the default encoder of every experiment (``mtl list backbone``).
        head: the default decoder of every dense task (``mtl list head``).
        search: the grid settings to run, and ASHA.
        train: epochs, seeds and evaluation.
        resources: workers, CPUs and GPUs of one trial.
        primary_task: the task that auxiliary-learning balancers serve (IAL); it is the table's
            first column. null: every task counts alike.
        auxiliary_tasks: tasks trained and supervised alongside by every multi-task experiment
            unless it overrides them, logged, but not scored in Delta_m and given no baseline
            (PAD-Net's normals and edges on NYUD-v2).
        delta_baseline: what Delta_m is measured against: the single-task networks
            ("single_task", the survey's and, trained on the study's labels, MTPSL's) or the MTL
            baseline with fixed weights trained on the same (partial) labels ("supervised_mtl",
            JTR's), trained and cached once per label setting like the single-task networks.
        description: one line shown by ``mtl list preset``.
        reference: the paper table a preset reproduces; null: none.
        loggers: experiment trackers that get every Tune trial's per-epoch metrics and config, one
            run per trial, besides the TensorBoard events every run writes: ``mlflow`` (params:
            ``tracking_uri``; default ``sqlite:///<study folder>/mlflow.db``; one MLflow experiment
            ``<study>/<experiment>``; extra ``mlflow``) and ``wandb`` (params: ``project``,
            default the study's name, ``entity``, ``mode``: online, offline or disabled; one W&B
            group ``<study>/<experiment>``; extra ``wandb``), e.g. ``[mlflow]`` or ``[{name: mlflow,
            params: {tracking_uri: "http://host:5000"}}]``. Single-task baselines are not logged.
    """

    name: str
    tasks: Tuple[str, ...]
    experiments: Tuple[ExperimentSpec, ...]
    dataset: DatasetSpec = DatasetSpec()
    backbone: Plugin = Plugin("tiny_cnn")
    head: Plugin = Plugin("conv")
    search: SearchSpec = SearchSpec()
    train: TrainSpec = TrainSpec()
    resources: ResourcesSpec = ResourcesSpec()
    primary_task: Optional[str] = None
    auxiliary_tasks: Tuple[str, ...] = ()
    delta_baseline: str = "single_task"
    description: str = ""
    reference: Optional[ReferenceTable] = None
    loggers: Tuple[Plugin, ...] = ()

    def __post_init__(self):
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name) or self.name.startswith("."):
            raise SpecError(f"name: {self.name!r} must be a plain folder name (the study's folder under --storage): "
                            "letters, digits, '-', '_' and '.', not starting with '.' (e.g. my_study)")
        if not self.tasks:
            raise SpecError("tasks: list at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise SpecError(f"tasks: duplicates in {list(self.tasks)}")
        if not self.experiments:
            raise SpecError("experiments: list at least one experiment, e.g. "
                            "[{name: mtl_baseline, architecture: mtl_baseline, balancer: fixed}]")
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise SpecError(f"experiments: duplicate experiment names in {names}")
        if self.primary_task is not None and self.primary_task not in self.tasks:
            raise SpecError(f"primary_task: {self.primary_task!r} is not one of tasks {list(self.tasks)}")
        _check_auxiliary("auxiliary_tasks", self.auxiliary_tasks, self.tasks)
        if self.delta_baseline not in DELTA_BASELINES:
            raise SpecError(f"delta_baseline: {self.delta_baseline!r} is not one of {', '.join(DELTA_BASELINES)}")
        for i, exp in enumerate(self.experiments):
            if exp.auxiliary_tasks is not None:
                _check_auxiliary(f"experiments[{i}].auxiliary_tasks", exp.auxiliary_tasks, self.tasks)
            if exp.primary_task is not None and exp.primary_task not in self.tasks:
                raise SpecError(f"experiments[{i}].primary_task: {exp.primary_task!r} is not one of tasks {list(self.tasks)}")
            if exp.weight_search is not None and exp.balancer.name != "fixed":
                raise SpecError(f"experiments[{i}].weight_search: searches the 'fixed' balancer's weights; "
                                f"this experiment uses balancer {exp.balancer.name!r}")
        if self.reference is not None:
            known = {"single_task"} | set(names)
            unknown = sorted(set(self.reference.rows) - known)
            if unknown:
                raise SpecError(f"reference.rows: {unknown} are neither 'single_task' nor experiments {names}")
        if self.search.asha and self.search.grace_period > self.train.epochs:
            raise SpecError(f"search.grace_period: {self.search.grace_period} exceeds train.epochs {self.train.epochs}")
        if self.train.amp == "fp16" and self.resources.gpus_per_worker == 0:
            raise SpecError("train.amp: 'fp16' needs a GPU, and resources.gpus_per_worker is 0; use amp: bf16 "
                            "(CPU autocast) or give each worker a GPU")
        _check_loggers(self.loggers)

    def to_dict(self) -> Dict[str, Any]:
        return to_plain(self)

    def replace(self, **changes) -> "StudySpec":
        return dataclasses.replace(self, **changes)


def _check_auxiliary(where: str, auxiliary: Sequence[str], tasks: Sequence[str]) -> None:
    if len(set(auxiliary)) != len(auxiliary):
        raise SpecError(f"{where}: duplicates in {list(auxiliary)}")
    both = [t for t in auxiliary if t in tasks]
    if both:
        raise SpecError(f"{where}: {both} are also in tasks {list(tasks)}; a task is either scored (tasks) or "
                        "auxiliary (trained, not scored in Delta_m, no single-task baseline)")


# logger name -> (the module it needs, the pip extra that installs it, its parameters)
LOGGERS: Dict[str, Tuple[str, str, Tuple[str, ...]]] = {
    "mlflow": ("mlflow", "mlflow", ("tracking_uri",)),
    "wandb": ("wandb", "wandb", ("project", "entity", "mode")),
}


def _check_loggers(loggers: Sequence[Plugin]) -> None:
    """Known names, once each, string parameters they accept, and their package installed."""
    import importlib.util

    names = [lg.name for lg in loggers]
    for i, logger in enumerate(loggers):
        where = f"loggers[{i}]"
        if logger.name not in LOGGERS:
            raise SpecError(f"{where}.name: unknown logger {logger.name!r}; valid: {', '.join(LOGGERS)}")
        if names.index(logger.name) != i:
            raise SpecError(f"{where}: logger {logger.name!r} is listed twice; list each logger once")
        module, extra, accepted = LOGGERS[logger.name]
        for key, value in logger.params.items():
            if key not in accepted:
                raise SpecError(f"{where}.params: unknown parameter {key!r} of logger {logger.name!r}; "
                                f"accepted: {', '.join(accepted)}")
            if not isinstance(value, str):
                raise SpecError(f"{where}.params.{key}: {value!r} must be a string")
        if importlib.util.find_spec(module) is None:
            raise SpecError(f"{where}: logger {logger.name!r} needs the {module} package, which is not installed; "
                            f"pip install -c constraints.txt -e '.[{extra}]'")


def load_spec(source: Any) -> StudySpec:
    """A StudySpec from a YAML path, a YAML string's parsed dict, or a dict."""
    if isinstance(source, StudySpec):
        return source
    if isinstance(source, str):
        try:
            with open(source) as fh:
                data = load_yaml(fh)
        except OSError as err:
            raise SpecError(f"cannot read study spec {source!r}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise SpecError(f"{source}: not valid YAML: {err}") from None
        source = data or {}
    try:
        return from_plain(StudySpec, source, "")
    except SpecError:
        raise
    except ConfigError as err:
        raise SpecError(str(err)) from None

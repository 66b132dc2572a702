"""Study specs: YAML -> frozen dataclasses, validated before Ray starts.

A bad field raises ``SpecError`` whose message starts with the field's path (e.g.
``experiments[1].balancer.name``) and says what is allowed. The structure is checked here (by
``trainables/schema.py``, the converter every typed structure of the product shares); plug-in
names, their parameters and the capabilities of each balancer/architecture pair are checked
against the registries by ``orchestrator/plan.py``'s ``validate``, still without touching data.
Plug-ins are ``Plugin`` references (``trainables/plugins.py``), the type the whole product uses.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import yaml

from trainables.optim import OPTIMIZERS, SCHEDULERS
from trainables.plugins import ModelRef, Plugin
from trainables.schema import ConfigError, from_plain, to_plain

__all__ = ["DatasetSpec", "ExperimentSpec", "LossWeightSearch", "Plugin", "ResourcesSpec", "SearchSpec", "SpecError",
           "StudySpec", "TrainSpec", "load_spec"]


class SpecError(ConfigError):
    """A study spec is invalid; the message names the field and the fix."""


@dataclass(frozen=True)
class DatasetSpec:
    """The study's dataset: a plug-in with its parameters, its folder, and optional partial labels.

    ``labels`` (JTR / MTPSL settings), e.g. {"setting": "onelabel", "seed": 0} or
    {"weights_file": "path/to/onelabel.pth"}; see trainables/datasets/partial.py.
    """

    name: str = "synthetic"
    root: Optional[str] = None  # None: the embedded synthetic data's cache; else a data root
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
        num_samples: trials to run.
        space: "log_uniform" (each w_t in [low, high], log scale) or "simplex" (weights
            that sum to T, drawn as normalised -log U(0, 1), i.e. a flat Dirichlet).
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
        if not 0 < self.low < self.high:
            raise SpecError(f"low/high: need 0 < low < high, got {self.low}, {self.high}")


@dataclass(frozen=True)
class ExperimentSpec:
    """One model of the study: an architecture + balancer (backbone/head default to the study's).

    ``primary_task`` overrides the study's (e.g. an IAL study with each task as the primary one);
    ``auxiliary_tasks`` the study's (e.g. PAD-Net with normals and edges, the MTL baseline without).
    ``regularisers`` (``mtl list regulariser``) add cross-task losses outside the balancer
    (consistency, JTR, ...), e.g. ``[{name: consistency, params: {weight: 1.0}}]``.
    ``grouping`` names a task-grouping search (``mtl list grouping``) that the study runs on the
    cached single-task networks to derive the architecture's tree before the experiment trains.
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
    """Which settings of the survey grid to run (None keeps the whole axis), and ASHA.

    batch_sizes None means the dataset's three survey batch sizes.
    """

    batch_sizes: Optional[Tuple[int, ...]] = None
    schedulers: Optional[Tuple[str, ...]] = None
    optimizers: Optional[Tuple[str, ...]] = None
    lrs: Optional[Tuple[float, ...]] = None
    max_settings: Optional[int] = None  # keep only the first N selected settings (smoke runs)
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
    epochs: int = 10
    seeds: Tuple[int, ...] = (0,)
    weight_decay: float = 1e-4
    max_steps_per_epoch: Optional[int] = None
    eval_batch_size: int = 64

    def __post_init__(self):
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
    """Resources of one trial. Ray objects are built from these in orchestrator/ only."""

    workers_per_trial: int = 1
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    max_concurrent_trials: Optional[int] = None  # None: as many as the cluster's CPUs/GPUs allow
    baseline_actors: Optional[int] = None  # None: as many as fit

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
    """A paper's numbers for one model: #P (M) and FLOPS (G multiply-accumulates)."""

    params_m: Optional[float] = None
    flops_g: Optional[float] = None


@dataclass(frozen=True)
class ReferenceTable:
    """The paper table a preset reproduces; ``rows`` keyed by experiment name, "single_task"
    for the single-task networks together. ``mtl models`` prints it beside the measured sizes."""

    source: str
    rows: Mapping[str, ReferenceRow] = field(default_factory=dict)


DELTA_BASELINES = ("single_task", "supervised_mtl")
SUPERVISED_MTL = "supervised_mtl"  # the experiment name (and role) of that baseline


@dataclass(frozen=True)
class StudySpec:
    """A study: tasks (scored in Delta_m, each with single-task baselines), optional
    ``auxiliary_tasks`` (trained and supervised alongside by every multi-task experiment unless
    it overrides them, logged, but not scored and given no baseline: PAD-Net's normals and edges
    on NYUD-v2), the experiments, the dataset, the default backbone and head, the grid, training
    and resources. ``delta_baseline`` says what Delta_m is measured against: the single-task
    networks ("single_task", the survey's and, trained on the study's labels, MTPSL's) or the
    MTL baseline with fixed weights trained on the same (partial) labels ("supervised_mtl",
    JTR's), trained and cached once per label setting like the single-task networks."""

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

    def __post_init__(self):
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise SpecError(f"name: {self.name!r} must be non-empty and use only letters, digits, '-', '_', '.'")
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


def load_spec(source: Any) -> StudySpec:
    """A StudySpec from a YAML path, a YAML string's parsed dict, or a dict."""
    if isinstance(source, StudySpec):
        return source
    if isinstance(source, str):
        try:
            with open(source) as fh:
                data = yaml.safe_load(fh)
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

"""Study specs: YAML -> frozen dataclasses, validated before Ray starts.

A bad field raises ``SpecError`` whose message starts with the field's path (e.g.
``experiments[1].balancer.name``) and says what is allowed. ``validate`` also checks every
plug-in name against its registry and every task against the dataset, without touching data.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import yaml


class SpecError(ValueError):
    """A study spec is invalid; the message names the field and the fix."""


@dataclass(frozen=True)
class Plugin:
    """A plug-in by registry name with its keyword arguments."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    name: str = "synthetic"
    root: Optional[str] = None  # None: the embedded synthetic data's cache; else a data root
    params: Mapping[str, Any] = field(default_factory=dict)
    # Partial labels (JTR / MTPSL settings), e.g. {"setting": "onelabel", "seed": 0} or
    # {"weights_file": "path/to/onelabel.pth"}; see trainables/datasets/partial.py.
    labels: Optional[Mapping[str, Any]] = None


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

    ``primary_task`` overrides the study's (e.g. an IAL study with each task as the primary one).
    """

    name: str
    architecture: Plugin = Plugin("mtl_baseline")
    balancer: Plugin = Plugin("fixed")
    backbone: Optional[Plugin] = None
    head: Optional[Plugin] = None
    weight_search: Optional[LossWeightSearch] = None
    primary_task: Optional[str] = None


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


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 10
    seeds: Tuple[int, ...] = (0,)
    weight_decay: float = 1e-4
    max_steps_per_epoch: Optional[int] = None
    eval_batch_size: int = 64


@dataclass(frozen=True)
class ResourcesSpec:
    """Resources of one trial. Ray objects are built from these in orchestrator/ only."""

    workers_per_trial: int = 1
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    max_concurrent_trials: Optional[int] = None  # None: as many as the cluster's CPUs/GPUs allow
    baseline_actors: Optional[int] = None  # None: as many as fit


@dataclass(frozen=True)
class StudySpec:
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
    description: str = ""

    def __post_init__(self):
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise SpecError(f"name: {self.name!r} must be non-empty and use only letters, digits, '-', '_', '.'")
        if not self.tasks:
            raise SpecError("tasks: list at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise SpecError(f"tasks: duplicates in {list(self.tasks)}")
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise SpecError(f"experiments: duplicate experiment names in {names}")
        if self.primary_task is not None and self.primary_task not in self.tasks:
            raise SpecError(f"primary_task: {self.primary_task!r} is not one of tasks {list(self.tasks)}")
        for i, exp in enumerate(self.experiments):
            if exp.primary_task is not None and exp.primary_task not in self.tasks:
                raise SpecError(f"experiments[{i}].primary_task: {exp.primary_task!r} is not one of tasks {list(self.tasks)}")
            if exp.weight_search is not None and exp.balancer.name != "fixed":
                raise SpecError(f"experiments[{i}].weight_search: searches the 'fixed' balancer's weights; "
                                f"this experiment uses balancer {exp.balancer.name!r}")
        if self.train.epochs < 1:
            raise SpecError(f"train.epochs: {self.train.epochs} must be >= 1")
        if not self.train.seeds:
            raise SpecError("train.seeds: give at least one seed")
        if self.resources.cpus_per_worker <= 0 and self.resources.gpus_per_worker <= 0:
            raise SpecError("resources: a worker needs cpus_per_worker > 0 or gpus_per_worker > 0")
        if self.resources.workers_per_trial < 1:
            raise SpecError(f"resources.workers_per_trial: {self.resources.workers_per_trial} must be >= 1")
        if self.search.asha and self.search.grace_period > self.train.epochs:
            raise SpecError(f"search.grace_period: {self.search.grace_period} exceeds train.epochs {self.train.epochs}")

    def to_dict(self) -> Dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def replace(self, **changes) -> "StudySpec":
        return dataclasses.replace(self, **changes)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def from_dict(cls, data: Any, path: str = ""):
    """Build dataclass ``cls`` from plain data, naming the field path of any error."""
    where = path or cls.__name__
    if isinstance(data, str) and cls is Plugin:  # shorthand: "fixed" == {name: fixed}
        data = {"name": data}
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"{_join(path, unknown[0])}: unknown field; valid fields here: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, _join(path, name))
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SpecError(f"{_join(path, missing[0])}: required field is missing")
    try:
        return cls(**kwargs)
    except SpecError as err:
        raise SpecError(f"{path + '.' if path else ''}{err}") from None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _convert(hint, value, path):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{path}: expected a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict, typing.Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise SpecError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise SpecError(f"{path}: expected {hint.__name__}, got {value!r}")
    return value


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
        return from_dict(StudySpec, data or {})
    return from_dict(StudySpec, source)

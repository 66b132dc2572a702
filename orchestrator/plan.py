"""From a study spec to experiments: validation against the registries, smoke shrinking,
and the expansion into single-task baselines + multi-task experiments over the grid.

``validate`` is the plan-time gate: every plug-in name and parameter, the capabilities of each
balancer / architecture pair (``BalancerInfo`` / ``ArchitectureInfo``, read from class + params),
the partial-label setting and the grid filters are checked before any data is read or Ray starts;
each error is one ``SpecError`` line that names the field (and both plug-ins of a bad pair).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

import torch

from orchestrator.spec import SUPERVISED_MTL, ExperimentSpec, LossWeightSearch, SpecError, StudySpec
from search_spaces.survey_grid import LEARNING_RATES, select, survey_grid
from trainables.build import (
    architecture_info,
    balancer_info,
    build_balancer,
    build_model,
    build_tasks,
    describe_dataset,
    regulariser_info,
)
from trainables.complexity import count_flops, count_parameters
from trainables.config import TrialConfig
from trainables.optim import SCHEDULERS
from trainables.datasets.base import DatasetInfo
from trainables.datasets.partial import check_labels
from trainables.plugins import ModelRef, Plugin, RunContext
from trainables.registry import ARCHITECTURES, BACKBONES, BALANCERS, DATASETS, HEADS, REGULARISERS, Registry

SINGLE_TASK = "single_task"
T = TypeVar("T")


@dataclass(frozen=True)
class Experiment:
    """One model of the study, to be trained on every grid setting x seed.

    ``base`` holds everything its trials share; ``trial_configs`` sets each grid setting and
    seed on it. It becomes a plain dict only at the Tune boundary (``orchestrator/tuning.py``).
    ``baselines`` names the single-task experiments (same backbone and head) that a multi-task
    experiment is measured against and, for cross-stitch / NDDR, starts from.
    """

    name: str
    role: str                       # "single_task" | "supervised_mtl" | "multi_task"
    base: TrialConfig
    settings: Tuple[dict, ...]      # grid settings ({"batch_size", "scheduler", "optimizer", "lr"})
    seeds: Tuple[int, ...]
    weight_search: Optional[LossWeightSearch] = None  # Optuna over fixed weights instead of the grid
    baselines: Tuple[str, ...] = ()
    grouping: Optional[Plugin] = None  # a search that derives the architecture's tree first

    def trial_configs(self) -> List[TrialConfig]:
        return [dataclasses.replace(self.base, **s, seed=seed) for s in self.settings for seed in self.seeds]

    @property
    def num_trials(self) -> int:
        """Its Tune trials: the weight search's samples, or every grid setting x seed."""
        return self.weight_search.num_samples if self.weight_search else len(self.settings) * len(self.seeds)


def validate(spec: StudySpec) -> DatasetInfo:
    """Check every name, parameter and plug-in pair of ``spec`` against the registries; no data is read."""
    _known(DATASETS, spec.dataset.name, "dataset.name")
    info = _checked(lambda: describe_dataset(spec.dataset.plugin), "dataset.params")
    missing = [t for t in spec.tasks if t not in info.tasks]
    if missing:
        raise SpecError(f"tasks: {missing} not offered by dataset {spec.dataset.name!r}; it offers {sorted(info.tasks)}")
    for where, aux in [("auxiliary_tasks", spec.auxiliary_tasks)] + [
            (f"experiments[{i}].auxiliary_tasks", e.auxiliary_tasks or ()) for i, e in enumerate(spec.experiments)]:
        missing = [t for t in aux if t not in info.tasks]
        if missing:
            raise SpecError(f"{where}: {missing} not offered by dataset {spec.dataset.name!r}; "
                            f"it offers {sorted(info.tasks)}")
    if spec.dataset.labels is not None:
        try:
            check_labels(spec.dataset.labels, list(spec.tasks))
        except ValueError as err:  # its messages start with "labels.<key>:"
            raise SpecError(f"dataset.{err}") from None
    for i, exp in enumerate(spec.experiments):
        where = f"experiments[{i}]"
        model = exp.model(spec)
        trained = spec.tasks + exp.auxiliary(spec)
        tasks = build_tasks(spec.dataset.plugin, trained, exp.auxiliary(spec))
        _known(ARCHITECTURES, model.architecture.name, f"{where}.architecture.name")
        _known(BALANCERS, exp.balancer.name, f"{where}.balancer.name")
        _known(BACKBONES, model.backbone.name, f"{where}.backbone.name" if exp.backbone else "backbone.name")
        _known(HEADS, model.head.name, f"{where}.head.name" if exp.head else "head.name")
        arch = _checked(lambda: architecture_info(model.architecture), f"{where}.architecture.params")
        needs = _checked(lambda: balancer_info(exp.balancer), f"{where}.balancer.params")
        _check_pair(where, exp, arch, needs, len(trained))
        if exp.grouping is not None:
            _check_grouping(where, exp, arch, needs)
            if exp.auxiliary(spec):
                raise SpecError(f"{where}.auxiliary_tasks: a grouping search derives the tree from every task's "
                                f"single-task network, and auxiliary tasks {list(exp.auxiliary(spec))} have none; "
                                "set auxiliary_tasks: [] for this experiment")
        for k, reg in enumerate(exp.regularisers):
            _check_regulariser(f"{where}.regularisers[{k}]", reg, arch, exp, spec, info)
        context = RunContext(primary_task=exp.primary_task or spec.primary_task)
        _checked(lambda: build_balancer(exp.balancer, trained, context), f"{where}.balancer.params")
        with torch.device("meta"):  # builds the model without allocating it
            _checked(lambda: build_model(tasks, model), f"{where}: cannot build the model")
    if not settings_of(spec, info):
        raise SpecError("search: the filters select none of the survey grid's 48 settings")
    return info


def _check_pair(where: str, exp: ExperimentSpec, arch, needs, n_tasks: int) -> None:
    """Refuse a balancer / architecture pair (or task count) that could only fail inside a worker."""
    a, b = exp.architecture.name, exp.balancer.name
    if needs.grad_target == "representation" and not arch.has_shared_representation:
        raise SpecError(f"{where}: balancer {b!r} balances gradients w.r.t. the shared representation, but "
                        f"architecture {a!r} has no single shared representation; use an architecture that has "
                        f"one (mtl list architecture) or a parameter-level balancer setting (mtl list balancer)")
    if arch.task_count is not None and n_tasks != arch.task_count:
        raise SpecError(f"{where}.architecture: {a!r} takes exactly {arch.task_count} tasks, this experiment trains "
                        f"{n_tasks} (auxiliary tasks included); choose {arch.task_count} tasks or another architecture")
    if n_tasks > 1 and not arch.supports_multiple_tasks:
        raise SpecError(f"{where}.architecture: {a!r} takes exactly one task, the study has {n_tasks}; "
                        "single-task networks are trained as the study's baselines")


def _check_regulariser(where: str, reg, arch, exp: ExperimentSpec, spec: StudySpec, info: DatasetInfo) -> None:
    """A regulariser's name and params, and what it needs from the architecture and the data."""
    _known(REGULARISERS, reg.name, f"{where}.name")
    needs = _checked(lambda: regulariser_info(reg), f"{where}.params")
    if (needs.needs_features or needs.needs_model) and not arch.has_shared_representation:
        raise SpecError(f"{where}: regulariser {reg.name!r} reads the shared features, but architecture "
                        f"{exp.architecture.name!r} has no single shared representation; use one that has "
                        "(mtl list architecture)")
    missing = [t for t in needs.extra_labels if t not in info.tasks]
    if missing:
        raise SpecError(f"{where}: regulariser {reg.name!r} reads label(s) {missing}, which dataset "
                        f"{spec.dataset.name!r} does not offer (it offers {sorted(info.tasks)}); choose a dataset "
                        "with them or set the regulariser's label parameter")
    labels = dict(spec.dataset.labels or {})
    if needs.weak_stream and not labels.get("unlabelled_fraction"):
        raise SpecError(f"{where}: regulariser {reg.name!r} trains on the images without dense labels, and the "
                        "study has none; set dataset.labels.unlabelled_fraction > 0 (e.g. {setting: full, "
                        "unlabelled_fraction: 0.5})")


def _check_grouping(where: str, exp: ExperimentSpec, arch, needs) -> None:
    from orchestrator.grouping import GROUPINGS

    _known(GROUPINGS, exp.grouping.name, f"{where}.grouping.name")
    _checked(lambda: GROUPINGS.get(exp.grouping.name).params_of(exp.grouping.params), f"{where}.grouping.params")
    if not arch.accepts_grouping:
        raise SpecError(f"{where}.grouping: search {exp.grouping.name!r} derives a tree, but architecture "
                        f"{exp.architecture.name!r} takes none; use architecture: branched")
    if needs.grad_target == "representation":  # the tree, unknown until the search has run, may have none
        raise SpecError(f"{where}: balancer {exp.balancer.name!r} needs a shared representation, which a tree "
                        f"derived by {exp.grouping.name!r} may not have; use a loss- or parameter-level balancer")


def _checked(make: Callable[[], T], where: str) -> T:
    """``make()``, with a ValueError / TypeError turned into a SpecError prefixed by ``where``."""
    try:
        return make()
    except (TypeError, ValueError) as err:
        raise SpecError(f"{where}: {err}") from None


def _known(registry: Registry, name: str, where: str) -> None:
    if name not in registry:
        raise SpecError(f"{where}: unknown {registry.kind} {name!r}; valid: {', '.join(registry.names())}")


def settings_of(spec: StudySpec, info: DatasetInfo) -> List[dict]:
    """The study's settings: the survey grid filtered by ``search``. Batch sizes or learning rates
    outside the grid (other papers' protocols, e.g. MGM's Adam at 1e-3) give the same product
    over the values given."""
    s = spec.search
    grid_lrs = {lr for opt, lrs in LEARNING_RATES.items() if not s.optimizers or opt in s.optimizers for lr in lrs}
    if s.lrs and any(all(abs(lr - g) > 1e-12 for g in grid_lrs) for lr in s.lrs):
        if not s.optimizers:
            raise SpecError(f"search.optimizers: learning rates {list(s.lrs)} are outside the survey grid; "
                            f"name the optimizer(s) they belong to (e.g. optimizers: [adam])")
        chosen = [{"batch_size": int(b), "scheduler": sched, "optimizer": opt, "lr": float(lr)}
                  for b in (s.batch_sizes or info.default_batch_sizes) for sched in (s.schedulers or SCHEDULERS)
                  for opt in s.optimizers for lr in s.lrs]
        return chosen[: s.max_settings] if s.max_settings else chosen
    grid = survey_grid(info.default_batch_sizes)
    chosen = select(grid, s.batch_sizes, s.schedulers, s.optimizers, s.lrs)
    if s.batch_sizes and not set(s.batch_sizes) <= set(info.default_batch_sizes):
        # batch sizes outside the dataset's survey trio: same grid over the given sizes
        chosen = [dict(c, batch_size=b) for b in s.batch_sizes
                  for c in select(grid, [info.default_batch_sizes[0]], s.schedulers, s.optimizers, s.lrs)]
    return chosen[: s.max_settings] if s.max_settings else chosen


def smoke(spec: StudySpec) -> StudySpec:
    """The same study shrunk to a couple of minutes: small data, 2 epochs, one grid setting."""
    dataset_cls = DATASETS.get(spec.dataset.name)
    if hasattr(dataset_cls, "smoke_params"):  # a wrapper shrinks the dataset it wraps
        params = dataset_cls.smoke_params(dict(spec.dataset.params))
    else:
        params = {**dict(spec.dataset.params), **getattr(dataset_cls, "SMOKE_PARAMS", {})}
    return dataclasses.replace(
        spec,
        dataset=dataclasses.replace(spec.dataset, params=params),
        train=dataclasses.replace(spec.train, epochs=min(spec.train.epochs, 2), seeds=spec.train.seeds[:1],
                                  max_steps_per_epoch=min(spec.train.max_steps_per_epoch or 8, 8)),
        search=dataclasses.replace(spec.search, max_settings=1, grace_period=1),
        experiments=tuple(
            dataclasses.replace(e, weight_search=dataclasses.replace(e.weight_search, num_samples=min(2, e.weight_search.num_samples)))
            if e.weight_search else e for e in spec.experiments),
    )


def expand(spec: StudySpec, info: DatasetInfo, data_root: Optional[str]) -> Tuple[List[Experiment], List[Experiment]]:
    """(single-task baselines, multi-task experiments) of the study."""
    settings, seeds = tuple(settings_of(spec, info)), tuple(spec.train.seeds)
    t = spec.train
    common = TrialConfig(experiment="", tasks=spec.tasks, dataset=spec.dataset.plugin, data_root=data_root,
                         epochs=t.epochs, weight_decay=t.weight_decay, max_steps_per_epoch=t.max_steps_per_epoch,
                         eval_batch_size=t.eval_batch_size, runtime=t.runtime)
    for i, exp in enumerate(spec.experiments if t.amp == "fp16" else ()):  # before Ray: fit refuses it too
        needs = balancer_info(exp.balancer)
        if needs.needs_task_grads or needs.needs_meta_batch:
            raise SpecError(f"train.amp: 'fp16' cannot serve experiments[{i}].balancer {exp.balancer.name!r}, which "
                            "reads or writes gradients outside the loss-scaled backward pass; use amp: bf16")
    models = [e.model(spec) for e in spec.experiments]
    encoders = {json.dumps([m.backbone.to_dict(), m.head.to_dict()], sort_keys=True) for m in models}
    baselines: Dict[str, Experiment] = {}
    if spec.delta_baseline == SUPERVISED_MTL:  # the study's pair is always needed (the supervised MTL baseline's)
        encoders.add(json.dumps([spec.backbone.to_dict(), spec.head.to_dict()], sort_keys=True))

    def singles(model: ModelRef) -> Tuple[str, ...]:
        """The single-task baselines of ``model``'s backbone and head (created on first use)."""
        names = []
        for task in spec.tasks:
            suffix = f"[{model.backbone.name}+{model.head.name}]" if len(encoders) > 1 else ""
            name = f"{SINGLE_TASK}{suffix}/{task}"
            single = ModelRef(Plugin(SINGLE_TASK), model.backbone, model.head)
            baselines.setdefault(name, Experiment(
                name, SINGLE_TASK, dataclasses.replace(common, experiment=name, tasks=(task,), model=single),
                settings, seeds))
            names.append(name)
        return tuple(names)

    experiments = []
    for exp, model in zip(spec.experiments, models):
        experiments.append(Experiment(
            exp.name, "multi_task",
            dataclasses.replace(common, experiment=exp.name, model=model, balancer=exp.balancer,
                                primary_task=exp.primary_task or spec.primary_task,
                                tasks=spec.tasks + exp.auxiliary(spec), auxiliary_tasks=exp.auxiliary(spec),
                                regularisers=exp.regularisers),
            settings, seeds, exp.weight_search, singles(model), exp.grouping))
    if spec.delta_baseline == SUPERVISED_MTL:  # JTR's Delta: the MTL baseline, fixed weights, same labels
        model = ModelRef(Plugin("mtl_baseline"), spec.backbone, spec.head)
        names = singles(model)
        baselines[SUPERVISED_MTL] = Experiment(
            SUPERVISED_MTL, SUPERVISED_MTL, dataclasses.replace(common, experiment=SUPERVISED_MTL, model=model),
            settings, seeds, baselines=names)
    return list(baselines.values()), experiments


def complexity(cfg: TrialConfig) -> Tuple[int, float]:
    """(#params, GMACs) of the model of ``cfg`` at its dataset's input size."""
    tasks = build_tasks(cfg.dataset, cfg.tasks, cfg.auxiliary_tasks)
    with torch.device("meta"):  # shapes only: counting a ResNet-50 at 480x640 is instant
        model = build_model(tasks, cfg.model)
    return count_parameters(model), count_flops(model, describe_dataset(cfg.dataset).input_size)["macs"] / 1e9

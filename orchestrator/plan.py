"""From a study spec to experiments: validation against the registries, smoke shrinking,
and the expansion into single-task baselines + multi-task experiments over the grid.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

import trainables  # noqa: F401  (registers the plug-ins)
from orchestrator.spec import ExperimentSpec, LossWeightSearch, SpecError, StudySpec
from search_spaces.survey_grid import select, survey_grid
from trainables.complexity import count_flops, count_parameters
from trainables.config import TrialConfig
from trainables.datasets.base import DatasetInfo
from trainables.models import build_model
from trainables.registry import ARCHITECTURES, BACKBONES, BALANCERS, DATASETS, HEADS
from trainables.train_loop import build_balancer, build_tasks

SINGLE_TASK = "single_task"


@dataclass(frozen=True)
class Experiment:
    """One model of the study, to be trained on every grid setting x seed."""

    name: str
    role: str                       # "single_task" | "multi_task"
    base: Dict[str, Any]            # TrialConfig fields shared by its trials
    settings: Tuple[dict, ...]      # grid settings ({"batch_size", "scheduler", "optimizer", "lr"})
    seeds: Tuple[int, ...]
    weight_search: Optional[LossWeightSearch] = None  # Optuna over fixed weights instead of the grid

    def trial_configs(self) -> List[TrialConfig]:
        return [TrialConfig.from_dict({**self.base, "hp": s, "seed": seed})
                for s in self.settings for seed in self.seeds]


def validate(spec: StudySpec) -> DatasetInfo:
    """Check every name and parameter of ``spec`` against the registries; no data is read."""
    _known(DATASETS, spec.dataset.name, "dataset.name")
    try:
        info = DATASETS.get(spec.dataset.name).describe(**dict(spec.dataset.params))
    except (TypeError, ValueError) as err:
        raise SpecError(f"dataset.params: {err}") from None
    missing = [t for t in spec.tasks if t not in info.tasks]
    if missing:
        raise SpecError(f"tasks: {missing} not offered by dataset {spec.dataset.name!r}; it offers {sorted(info.tasks)}")
    _known(BACKBONES, spec.backbone.name, "backbone.name")
    _known(HEADS, spec.head.name, "head.name")
    for i, exp in enumerate(spec.experiments):
        where = f"experiments[{i}]"
        _known(ARCHITECTURES, exp.architecture.name, f"{where}.architecture.name")
        _known(BALANCERS, exp.balancer.name, f"{where}.balancer.name")
        if exp.backbone:
            _known(BACKBONES, exp.backbone.name, f"{where}.backbone.name")
        if exp.head:
            _known(HEADS, exp.head.name, f"{where}.head.name")
        try:
            build_balancer(exp.balancer.name, spec.tasks, exp.balancer.params,
                           run_defaults={"primary_task": exp.primary_task or spec.primary_task})
        except (TypeError, ValueError) as err:
            raise SpecError(f"{where}.balancer.params: {err}") from None
        try:
            with torch.device("meta"):  # builds the model without allocating it
                build_model(build_tasks(spec.dataset.name, spec.dataset.params, spec.tasks), exp.architecture.name,
                            *_model_plugins(spec, exp), dict(exp.architecture.params))
        except (TypeError, ValueError) as err:
            raise SpecError(f"{where}: cannot build the model: {err}") from None
    if not settings_of(spec, info):
        raise SpecError("search: the filters select none of the survey grid's 48 settings")
    return info


def _known(registry, name: str, where: str) -> None:
    if name not in registry:
        raise SpecError(f"{where}: unknown {registry.kind} {name!r}; valid: {', '.join(registry.names())}")


def _model_plugins(spec: StudySpec, exp: ExperimentSpec) -> Tuple[str, dict, str, dict]:
    backbone, head = exp.backbone or spec.backbone, exp.head or spec.head
    return backbone.name, dict(backbone.params), head.name, dict(head.params)


def settings_of(spec: StudySpec, info: DatasetInfo) -> List[dict]:
    s = spec.search
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


def expand(spec: StudySpec, info: DatasetInfo, data_root: str | None) -> Tuple[List[Experiment], List[Experiment]]:
    """(single-task baselines, multi-task experiments) of the study."""
    settings = tuple(settings_of(spec, info))
    common = dict(dataset=spec.dataset.name, data_root=data_root, dataset_params=dict(spec.dataset.params),
                  epochs=spec.train.epochs, weight_decay=spec.train.weight_decay,
                  max_steps_per_epoch=spec.train.max_steps_per_epoch, eval_batch_size=spec.train.eval_batch_size)
    baselines: Dict[str, Experiment] = {}
    experiments = []
    pairs = {json.dumps(_model_plugins(spec, e), sort_keys=True) for e in spec.experiments}
    for exp in spec.experiments:
        backbone, backbone_params, head, head_params = _model_plugins(spec, exp)
        models = dict(backbone=backbone, backbone_params=backbone_params, head=head, head_params=head_params)
        for task in spec.tasks:
            suffix = f"[{backbone}+{head}]" if len(pairs) > 1 else ""
            name = f"{SINGLE_TASK}{suffix}/{task}"
            baselines.setdefault(name, Experiment(
                name, SINGLE_TASK, {**common, **models, "experiment": name, "tasks": (task,),
                                    "architecture": SINGLE_TASK, "balancer": "fixed"},
                settings, spec.train.seeds))
        experiments.append(Experiment(
            exp.name, "multi_task",
            {**common, **models, "experiment": exp.name, "tasks": tuple(spec.tasks),
             "architecture": exp.architecture.name, "architecture_params": dict(exp.architecture.params),
             "balancer": exp.balancer.name, "balancer_params": dict(exp.balancer.params),
             "primary_task": exp.primary_task or spec.primary_task},
            settings, spec.train.seeds, exp.weight_search))
    return list(baselines.values()), experiments


def complexity(cfg: TrialConfig, info: DatasetInfo) -> Tuple[int, float]:
    """(#params, GMACs) of the model of ``cfg`` at the dataset's input size."""
    tasks = build_tasks(cfg.dataset, cfg.dataset_params, cfg.tasks)
    with torch.device("meta"):  # shapes only: counting a ResNet-50 at 480x640 is instant
        model = build_model(tasks, cfg.architecture, cfg.backbone, dict(cfg.backbone_params), cfg.head,
                            dict(cfg.head_params), dict(cfg.architecture_params))
    return count_parameters(model), count_flops(model, info.input_size)["macs"] / 1e9

"""The task-grouping plug-in kind: a search that derives an experiment's tree before its Tune run.

An experiment may name a grouping search (``ExperimentSpec.grouping``) for an architecture that
takes one (``ArchitectureInfo.accepts_grouping``, e.g. ``branched``). After the study's
single-task baselines exist, the study builds a ``GroupingContext`` for that experiment and calls
``search``; the returned ``Derivation`` gives the architecture's parameters (the tree) and the
evidence (affinities per sharing location, costs, budgets), which the results keep beside every
row of the experiment. Searches register with ``@register_grouping`` and declare a frozen
``Params`` dataclass like every plug-in; ``mtl list grouping`` prints them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

from trainables.plugins import Configurable
from trainables.registry import Registry

GROUPINGS = Registry("grouping")
register_grouping = GROUPINGS.register

Tree = Tuple[Tuple[Tuple[str, ...], ...], ...]


@dataclass
class GroupingContext:
    """What a search gets from the study.

    Attributes:
        experiment: the experiment (``orchestrator.plan.Experiment``) whose tree is searched; its
            ``base`` is the model with the architecture's default shape.
        baselines: task -> the best cached single-task network of that task for this experiment's
            backbone and head ({"checkpoint", "setting_hash", "val", "test"}).
        run_jobs: ``run_jobs(method, jobs) -> results`` runs ``SearchActor.<method>(*job)`` for every
            job on the study's actor pool, in parallel (``orchestrator/grouping/actor.py``); the
            results come in the order of the jobs.
        work_dir: a folder for the search's own files (training rounds, pictures).
        log: the study's log.
    """

    experiment: Any
    baselines: Mapping[str, Mapping[str, Any]]
    run_jobs: Callable[[str, Sequence[tuple]], List[Any]]
    work_dir: str
    log: Callable[[str], None] = print


@dataclass(frozen=True)
class Derivation:
    """A search's outcome: the architecture parameters it chose and the evidence behind them.

    ``details`` is JSON-ready: "tree", "locations" (the sharing locations searched), "affinity"
    (location -> T x T task affinities), "task_order", costs and budgets as the search defines them.
    """

    architecture_params: Mapping[str, Any]
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tree(self) -> Optional[Tree]:
        return self.architecture_params.get("tree")


class GroupingSearch(Configurable):
    """Base class of the grouping searches: ``params`` are its ``Params``; ``search(ctx)`` runs it."""

    def __init__(self, params: Any = None, **kwargs: Any):
        self.params = self.resolve_params(params, kwargs)

    def search(self, ctx: GroupingContext) -> Derivation:
        raise NotImplementedError


def tree_summary(tree: Tree) -> str:
    """"stage 0: {a,b,c} | stage 1: {a,b} {c} | ..." - a tree on one line for logs and tables."""
    return " | ".join(f"{d}: " + " ".join("{" + ",".join(g) + "}" for g in groups) for d, groups in enumerate(tree))


def plain_tree(tree: Tree) -> List[List[List[str]]]:
    return [[list(group) for group in groups] for groups in tree]




def stage_sizes(cfg) -> Tuple[List[int], int, List[int]]:
    """(#params of each backbone stage, #params of all the heads, each stage's output stride) of
    ``cfg``'s backbone and heads (a TrialConfig): what one group at a sharing location costs, what
    every tree pays, and where the resolution drops (FAFS's pooling layers)."""
    import torch

    from trainables.build import build_model, build_tasks
    from trainables.complexity import count_parameters
    from trainables.plugins import ModelRef, Plugin

    tasks = build_tasks(cfg.dataset, cfg.tasks)
    with torch.device("meta"):  # sizes only
        model = build_model(tasks, ModelRef(Plugin("mtl_baseline"), cfg.model.backbone, cfg.model.head))
    stages = [count_parameters(stage) for stage in model.backbone.stages]
    return stages, count_parameters(model) - sum(stages), list(model.backbone.stage_strides)

"""Branched Multi-Task Networks: the tree whose shared layers join the tasks with the most alike representations.

Vandenhende, Georgoulis, De Brabandere & Van Gool, "Branched Multi-Task Networks: Deciding What
Layers To Share", BMVC 2020; the survey's Sec. 2.4 and its Tables 4-5 ("Branched-1/2/3").
On the study's cached single-task networks (the best of each task for the experiment's backbone
and head): at every candidate sharing location d (a backbone stage) the features of the same K
training images give each task a representation dissimilarity matrix (RDM: 1 - Pearson correlation
between images); the affinity of tasks i and j at d is the Spearman rank correlation of their RDMs
(``affinity.rsa_affinity``). The tree cost is the sum over locations of the mean over the groups of
the largest dissimilarity 1 - A inside a group; the search takes the cheapest nested tree whose
#P fits the budget (``trees.best_tree``: exhaustive up to ``exhaustive_max_tasks`` tasks, a beam
search beyond).

The RDMs are computed by the study's actor pool, one task per actor, and cached in each baseline's
own cache folder (``actor.SearchActor.rdms``): a second study over the same baselines computes none.

Hyper-parameters:
    budget (float in [0, 1], default 0.5): the #P budget as a fraction between the MTL baseline's
        (0: everything shared) and the single-task networks' (1: everything split).
    first_location (int >= 0, default 1): branching is allowed from this stage on; the stages
        before it stay shared (0 is the stem; the survey branches ResNet-50 in its last three
        blocks on Cityscapes: 2).
    num_images (int >= 2, default 500): K, the training images the RDMs are computed on.
    seed (int, default 0): which K images.
    pool (int or None, default 8): each stage's features are average-pooled to pool x pool before
        the correlations (memory: K x C x pool^2 per stage); None keeps full resolution. The paper
        does not say how it reduces features; pooling keeps K = 500 full-size images in memory.
    exhaustive_max_tasks (int, default 6) and beam_width (int, default 64): see ``trees.best_tree``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from orchestrator.grouping.affinity import rsa_affinity
from orchestrator.grouping.base import (
    Derivation,
    GroupingContext,
    GroupingSearch,
    plain_tree,
    register_grouping,
    stage_sizes,
)
from orchestrator.grouping.trees import best_tree, budget_between, tree_params


@dataclass(frozen=True)
class BranchedMTLParams:
    """Hyper-parameters of ``branched_mtl`` (see the module docstring)."""

    budget: float = 0.5
    first_location: int = 1
    num_images: int = 500
    seed: int = 0
    pool: Optional[int] = 8
    exhaustive_max_tasks: int = 6
    beam_width: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.budget <= 1.0:
            raise ValueError(f"branched_mtl: budget must be a fraction in [0, 1], got {self.budget!r}")
        if self.first_location < 0 or self.num_images < 2 or self.beam_width < 1:
            raise ValueError("branched_mtl: first_location >= 0, num_images >= 2 and beam_width >= 1 are needed, "
                             f"got {self.first_location}, {self.num_images}, {self.beam_width}")
        if self.pool is not None and self.pool < 1:
            raise ValueError(f"branched_mtl: pool must be >= 1 or null, got {self.pool!r}")


@register_grouping("branched_mtl")
class BranchedMTL(GroupingSearch):
    """Branched Multi-Task Networks (Vandenhende et al. BMVC 2020): RSA affinities, cheapest tree in a #P budget."""

    Params = BranchedMTLParams

    def search(self, ctx: GroupingContext) -> Derivation:
        p = self.params
        tasks: List[str] = list(ctx.experiment.base.tasks)
        jobs = [(ctx.baselines[t]["checkpoint"], p.num_images, p.seed, p.pool) for t in tasks]
        found = ctx.run_jobs("rdms", jobs)  # in the order of the jobs
        ctx.log(f"  RDMs of the single-task networks: {sum(f['cached'] for f in found)} cached, "
                f"{sum(not f['cached'] for f in found)} computed")
        rdms = [np.load(f["path"])["rdms"] for f in found]  # per task [D, K, K]
        locations = range(rdms[0].shape[0])
        affinity = np.stack([rsa_affinity(np.stack([r[d] for r in rdms])) for d in locations])
        stage_params, head_params, _ = stage_sizes(ctx.experiment.base)
        if p.first_location >= len(stage_params):
            raise ValueError(f"branched_mtl: first_location {p.first_location} is past the backbone's "
                             f"{len(stage_params)} stages")
        budget = budget_between(stage_params, len(tasks), p.budget, head_params)
        # the stages before first_location stay shared: search the rest with what they leave of the budget
        prefix = ((tuple(tasks),),) * p.first_location
        prefix_params = sum(stage_params[: p.first_location])
        rest, cost = best_tree(tasks, 1.0 - affinity[p.first_location:], stage_params[p.first_location:],
                               budget - prefix_params, head_params=head_params,
                               exhaustive_max_tasks=p.exhaustive_max_tasks, beam_width=p.beam_width)
        tree = prefix + tuple(rest)
        return Derivation({"tree": plain_tree(tree)}, {
            "search": "branched_mtl", "tree": plain_tree(tree), "task_order": tasks, "cost": cost,
            "affinity": {str(d): affinity[d].tolist() for d in locations},
            "budget_params": budget, "tree_params": tree_params(tree, stage_params, head_params),
            "stage_params": list(stage_params), "head_params": head_params,
            "num_images": p.num_images, "first_location": p.first_location})

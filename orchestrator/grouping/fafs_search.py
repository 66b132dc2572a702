"""FAFS: a tree grown top-down from the fully shared network, junction by junction.

Lu, Kumar, Zhai, Cheng, Javidi & Feris, "Fully-adaptive Feature Sharing in Multi-Task Networks with
Applications in Person Attribute Classification", CVPR 2017; the survey's Sec. 2.2.4 / 2.4 and its
Table 5 ("FAFS-1/2/3", three values of lambda). Each round trains the current tree - the first
round the fully shared network (the MTL baseline), every later one grown from the previous round's
weights (``TrialConfig.init_from`` -> ``branched.load_parent``: each new branch starts as a copy of
the branch it splits from) - and measures, after every epoch, which of K training examples each
task finds difficult (error above the task's running mean); the affinity of two tasks is how often
they agree (both difficult or both easy), as an exponential moving average (``affinity.AffinityEMA``).
At the active junction (the top layer first, then one stage lower per round) the branches' affinity
is clustered (spectral clustering) into the number of groups c that minimises
(c - 1) * L0 * 2^p + lambda * L_s (``fafs.split_junction``: p the pooling layers above, L_s the
separation cost); the layer is split into those groups (``fafs.widen``). The search stops when a
junction keeps one group or ``first_location`` is reached.

Rounds are run on the study's actor pool and kept in the baseline cache (``<cache>/grouping/fafs``)
under their config's hash, so a second study over the same data and model trains none again.

Deviations (documented choices): the thin network is the study's MTL baseline (random init or
the backbone's ``pretrained``), not the paper's SOMP-thinned VGG; "difficult" compares a task's
per-example loss (not an attribute-classification margin) with the task's mean loss on K fixed
training images, measured once per epoch rather than on every training batch (so against that
measurement's own mean: the running mean of earlier epochs' larger losses would mark every example
easy); one round's epochs are the study's (``round_epochs`` shortens them).

Hyper-parameters:
    lam (float >= 0, default 1.0): lambda, the weight of the separation cost (larger: more branches).
    unit_cost (float >= 0, default 1/64): L0, the cost of one extra branch at a layer without
        pooling above it (the release's per-column cost 2^p / 64).
    first_location (int >= 0, default 1): the lowest stage that may branch (0 is the stem).
    num_images (int >= 2, default 200): the K training examples scored after every epoch.
    seed (int, default 0): which K examples; also the spectral clustering's seed.
    decay (float in [0, 1), default 0.99): the EMA's decay per update (the release's default).
    round_epochs (int or None, default None): epochs of each round (None: the study's epochs).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from orchestrator.grouping.affinity import branch_affinity
from orchestrator.grouping.base import (
    Derivation,
    GroupingContext,
    GroupingSearch,
    plain_tree,
    register_grouping,
    stage_sizes,
    tree_summary,
)
from orchestrator.grouping.fafs import junction_branches, split_junction, widen
from trainables.plugins import Plugin


@dataclass(frozen=True)
class FAFSParams:
    """Hyper-parameters of ``fafs`` (see the module docstring)."""

    lam: float = 1.0
    unit_cost: float = 1.0 / 64
    first_location: int = 1
    num_images: int = 200
    seed: int = 0
    decay: float = 0.99
    round_epochs: Optional[int] = None

    def __post_init__(self) -> None:
        if self.lam < 0 or self.unit_cost < 0 or self.first_location < 0 or self.num_images < 2:
            raise ValueError("fafs: lam >= 0, unit_cost >= 0, first_location >= 0 and num_images >= 2 are needed, "
                             f"got {self.lam}, {self.unit_cost}, {self.first_location}, {self.num_images}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"fafs: decay must be in [0, 1), got {self.decay!r}")
        if self.round_epochs is not None and self.round_epochs < 1:
            raise ValueError(f"fafs: round_epochs must be >= 1 or null, got {self.round_epochs!r}")


@register_grouping("fafs")
class FAFS(GroupingSearch):
    """Fully-adaptive feature sharing (Lu et al. CVPR 2017): widen the shared network top-down, round by round."""

    Params = FAFSParams

    def search(self, ctx: GroupingContext) -> Derivation:
        p = self.params
        exp = ctx.experiment
        tasks: List[str] = list(exp.base.tasks)
        _, _, strides = stage_sizes(exp.base)
        depth = len(strides)
        if p.first_location >= depth:
            raise ValueError(f"fafs: first_location {p.first_location} is past the backbone's {depth} stages")
        tree = tuple((tuple(tasks),) for _ in range(depth))
        base = dataclasses.replace(exp.base, **exp.settings[0], seed=exp.seeds[0], baseline_val={}, baseline_test={},
                                   epochs=p.round_epochs or exp.base.epochs)
        parent, rounds, affinity = None, [], {}
        for location in range(depth - 1, p.first_location - 1, -1):
            arch = Plugin(exp.base.model.architecture.name, {**exp.base.model.architecture.params, "tree": plain_tree(tree)})
            cfg = dataclasses.replace(base, experiment=f"{exp.name}/fafs-round", init_from=parent,
                                      model=dataclasses.replace(base.model, architecture=arch))
            out_dir = os.path.join(ctx.work_dir, "fafs", cfg.config_hash(exclude=("experiment",)))
            (done,) = ctx.run_jobs("fafs_round", [(cfg.to_dict(), out_dir, p.num_images, p.seed, p.decay)])
            task_affinity = np.nan_to_num(np.asarray(done["affinity"], dtype=float), nan=0.0)
            branches = junction_branches(tree, location)
            index = {t: i for i, t in enumerate(tasks)}
            b_aff = branch_affinity(task_affinity, [[index[t] for t in b] for b in branches])
            pooling = sum(1 for d in range(location + 1, depth) if strides[d] > strides[d - 1])
            c, labels, costs = split_junction(b_aff, pooling, p.unit_cost, p.lam, p.seed)
            affinity[str(location)] = task_affinity.tolist()
            rounds.append({"location": location, "round": out_dir, "cached": done["cached"], "clusters": int(c),
                           "costs": [float(x) for x in costs], "branches": [list(b) for b in branches],
                           "branch_affinity": b_aff.tolist(), "pooling_above": pooling})
            ctx.log(f"  FAFS round at location {location} ({'cached' if done['cached'] else 'trained'}): "
                    f"{len(branches)} branches -> {c} group(s)")
            if c == 1:  # this junction keeps one group: the paper stops widening here
                break
            tree = widen(tree, location, labels)
            ctx.log(f"    tree: {tree_summary(tree)}")
            parent = out_dir
        return Derivation({"tree": plain_tree(tree)}, {
            "search": "fafs", "tree": plain_tree(tree), "task_order": tasks, "affinity": affinity,
            "rounds": rounds, "lam": p.lam, "unit_cost": p.unit_cost})



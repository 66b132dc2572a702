"""Grouping searches end to end on a planted relation, in-process (no Ray).

The synthetic data serves two pairs of copied tasks (depth / depth_copy, semseg / semseg_copy) and
an unrelated one (scene classification). Their single-task networks are trained briefly; Branched Multi-Task
Networks must give each pair one branch at the budget-limited split, and FAFS must cluster each
pair together at its first junction. The searches run their actor jobs in this process.
"""
from __future__ import annotations

import os

import pytest
import torch

from orchestrator.grouping import GroupingContext
from orchestrator.grouping.actor import SearchActor
from orchestrator.grouping.base import stage_sizes
from orchestrator.grouping.branched_mtl import BranchedMTL
from orchestrator.grouping.fafs_search import FAFS
from orchestrator.plan import Experiment
from trainables.config import TrialConfig
from trainables.plugins import Plugin
from trainables.session import Session
from trainables.train_loop import fit

TASKS = ("depth", "depth_copy", "semseg", "semseg_copy", "scene")
DATA = Plugin("synthetic", {"image_size": 32, "num_train": 96, "num_val": 16, "num_test": 16,
                            "copies": {"depth_copy": "depth", "semseg_copy": "semseg"}})
SETTING = {"batch_size": 16, "scheduler": "poly", "optimizer": "adam", "lr": 1e-3}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(the branched experiment, its single-task networks, a folder): trained once for the module."""
    root = tmp_path_factory.mktemp("grouping")
    common = dict(dataset=DATA, data_root=str(root / "data"), epochs=2, max_steps_per_epoch=4, eval_batch_size=16,
                  **SETTING)
    best = {}
    for task in TASKS:
        folder = str(root / "baselines" / task)
        fit(TrialConfig(experiment=f"single_task/{task}", tasks=(task,), model={"architecture": "single_task"},
                        **common), Session(device=torch.device("cpu"), checkpoint_dir=folder))
        best[task] = {"checkpoint": folder}
    base = TrialConfig(experiment="tree", tasks=TASKS, model={"architecture": "branched"}, **common)
    return Experiment("tree", "multi_task", base, (SETTING,), (0,)), best, root


def context(study, calls=None):
    exp, best, root = study
    actor = SearchActor()

    def run_jobs(method, jobs):
        if calls is not None:
            calls.append((method, len(jobs)))
        return [getattr(actor, method)(*job) for job in jobs]

    return GroupingContext(exp, best, run_jobs, str(root / "work"), log=lambda _: None)


def groups_of(partition):
    return {frozenset(g) for g in partition}


def test_branched_mtl_gives_each_pair_one_branch(study):
    exp = study[0]
    stages, heads, _ = stage_sizes(exp.base)
    # a budget for three branches from stage 1 on (two more copies of stages 1..3): the planted
    # tree costs 0 there, any other three-way or cheaper tree groups unlike tasks somewhere
    fraction = (2 * sum(stages[1:]) + 1) / ((len(TASKS) - 1) * sum(stages))
    derivation = BranchedMTL(budget=fraction, first_location=1, num_images=48).search(context(study))
    tree = derivation.tree
    assert len(tree[0]) == 1  # the stem stays shared (first_location 1)
    planted = {frozenset({"depth", "depth_copy"}), frozenset({"semseg", "semseg_copy"}), frozenset({"scene"})}
    assert all(groups_of(p) == planted for p in tree[1:]), tree
    assert derivation.details["cost"] == pytest.approx(0.0, abs=1e-9)
    # half that budget: two branches; each pair still stays in one branch
    half = BranchedMTL(budget=fraction / 2, first_location=1, num_images=48).search(context(study)).tree
    for p in half[1:]:
        assert all(any(pair <= g for g in groups_of(p)) for pair in planted)
    a = derivation.details["affinity"][str(len(stages) - 1)]
    index = {t: i for i, t in enumerate(TASKS)}
    assert a[index["depth"]][index["depth_copy"]] == pytest.approx(1.0)  # a copy's RDM is its task's
    assert a[index["depth"]][index["scene"]] < 0.99


def test_second_search_over_the_same_baselines_computes_no_features(study):
    calls = []
    before = {t: sorted(os.listdir(info["checkpoint"])) for t, info in study[1].items()}
    BranchedMTL(budget=0.5, first_location=1, num_images=48).search(context(study, calls))
    after = {t: sorted(os.listdir(info["checkpoint"])) for t, info in study[1].items()}
    assert calls == [("rdms", len(TASKS))] and before == after  # cached RDM files read back, none written
    assert all(any(f.startswith("rdm-") for f in files) for files in after.values())


def test_fafs_clusters_each_pair_at_its_first_junction(study):
    """At the top junction the copies make or lose examples together: with a branch costing 0.1 the
    cheapest split is the planted one (the affinities are in the derivation for the record)."""
    stages = len(stage_sizes(study[0].base)[0])
    derivation = FAFS(lam=1.0, unit_cost=0.1, first_location=stages - 1, num_images=48,
                      round_epochs=6).search(context(study))
    first = derivation.details["rounds"][0]
    assert [b[0] for b in first["branches"]] == list(TASKS)  # the heads: one branch per task
    a = first["branch_affinity"]
    for task, copy in ((0, 1), (2, 3)):  # each copy agrees most with its source
        assert max(range(len(TASKS)), key=lambda j: -1 if j == copy else a[copy][j]) == task
    assert first["clusters"] == 3
    assert groups_of(derivation.tree[-1]) == {frozenset({"depth", "depth_copy"}),
                                              frozenset({"semseg", "semseg_copy"}), frozenset({"scene"})}

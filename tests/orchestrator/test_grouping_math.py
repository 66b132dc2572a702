"""The pure math of the task-grouping searches: RSA, FAFS affinities, trees and their search, FAFS
junctions. Expected numbers are worked out by hand in the comments, or by brute force written here
independently of the code under test."""
import itertools
import math

import numpy as np
import pytest

from orchestrator.grouping import affinity as aff
from orchestrator.grouping import fafs, trees


def _from_upper(upper, k):
    """A symmetric K x K matrix with zero diagonal from its upper triangle, row by row."""
    m, it = np.zeros((k, k)), iter(upper)
    for i in range(k):
        for j in range(i + 1, k):
            m[i, j] = m[j, i] = next(it)
    return m


# ---------------------------------------------------------------- RDM and RSA

def test_rdm_by_hand():
    f = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 2.0, 4.0]])
    # centred rows: (-1, 0, 1), (1, 0, -1), (-4/3, -1/3, 5/3); r(0, 1) = -1
    # r(0, 2) = 3 / (sqrt(2) * sqrt(42) / 3) = 9 / sqrt(84); r(1, 2) = -9 / sqrt(84)
    r02 = 9.0 / math.sqrt(84.0)
    expected = [[0.0, 2.0, 1.0 - r02], [2.0, 0.0, 1.0 + r02], [1.0 - r02, 1.0 + r02, 0.0]]
    np.testing.assert_allclose(aff.rdm(f), expected, atol=1e-12)


def test_rdm_constant_image_and_feature_maps():
    f = np.array([[5.0, 5.0, 5.0, 5.0], [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.5]])
    r = aff.rdm(f)
    assert r[0, 1] == r[1, 0] == 1.0 and r[0, 2] == 1.0 and r[0, 0] == 0.0  # constant: uncorrelated
    np.testing.assert_allclose(aff.rdm(f.reshape(3, 2, 2)), r)  # trailing axes are flattened
    with pytest.raises(ValueError):
        aff.rdm(np.ones(4))


def test_rsa_spearman_with_ties_by_hand():
    u1 = [0.1, 0.4, 0.4, 0.2, 0.9, 0.3]  # ranks 1, 4.5, 4.5, 2, 6, 3 (tie -> average rank)
    u2 = [0.5, 0.6, 0.1, 0.2, 0.8, 0.7]  # ranks 3, 4, 1, 2, 6, 5
    # deviations from 3.5: (-2.5, 1, 1, -1.5, 2.5, -.5) and (-.5, .5, -2.5, -1.5, 2.5, 1.5)
    # sum of products 7, sums of squares 17 and 17.5
    rho = 7.0 / math.sqrt(17.0 * 17.5)
    u3 = [v ** 3 for v in u1]  # a monotone transform of task 1's dissimilarities
    a = aff.rsa_affinity(np.stack([_from_upper(u, 4) for u in (u1, u2, u3)]))
    expected = [[1.0, rho, 1.0], [rho, 1.0, rho], [1.0, rho, 1.0]]
    np.testing.assert_allclose(a, expected, atol=1e-12)


def test_rsa_affine_features_and_permutations():
    rng = np.random.default_rng(0)
    fa, fc = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    fb = 3.0 * fa + 2.0  # same Pearson correlations between images -> same RDM
    rdms = np.stack([aff.rdm(fa), aff.rdm(fb), aff.rdm(fc)])
    a = aff.rsa_affinity(rdms)
    assert a[0, 1] == pytest.approx(1.0) and a[0, 2] < 0.99
    np.testing.assert_allclose(a, a.T)
    np.testing.assert_allclose(np.diag(a), 1.0)
    perm = np.array([3, 0, 5, 1, 4, 2])  # the same image order change for every task: no effect
    np.testing.assert_allclose(aff.rsa_affinity(rdms[:, perm][:, :, perm]), a, atol=1e-12)
    order = [2, 0, 1]  # reordering tasks reorders the matrix
    np.testing.assert_allclose(aff.rsa_affinity(rdms[order]), a[np.ix_(order, order)], atol=1e-12)
    shuffled = np.stack([rdms[0], rdms[0][perm][:, perm]])  # images out of step between tasks
    assert aff.rsa_affinity(shuffled)[0, 1] < 0.9


# ---------------------------------------------------------------- FAFS affinities

def test_difficult_rule():
    e = np.array([[0.1, 0.9], [0.5, 0.5], [0.7, 0.2]])
    np.testing.assert_array_equal(aff.difficult(e, np.array([0.5, 0.5])), [[0, 1], [1, 1], [1, 0]])
    np.testing.assert_array_equal(aff.difficult(e, np.array([0.5, 0.5]), strict=True), [[0, 1], [0, 0], [1, 0]])


def test_cooccurrence_by_hand():
    d = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 1]], dtype=bool)
    # (0,1): both difficult in row 0, both easy in row 2 -> 2/4; (0,2): never agree -> 0;
    # (1,2): both difficult in row 3, both easy in row 1 -> 2/4
    np.testing.assert_allclose(aff.cooccurrence(d), [[1, 0.5, 0], [0.5, 1, 0.5], [0, 0.5, 1]])
    valid = np.ones_like(d)
    valid[1, 1] = False  # task 1 unlabelled on example 1: pairs with task 1 use rows 0, 2, 3
    c = aff.cooccurrence(d, valid)
    assert c[0, 1] == pytest.approx(2 / 3) and c[1, 2] == pytest.approx(1 / 3) and c[0, 2] == 0.0


def test_affinity_ema_by_hand():
    ema = aff.AffinityEMA(2, decay=0.5)
    # batch 1 has no running mean yet: its own mean (0.4, 0.6) is the threshold
    hard = ema.update(np.array([[0.2, 0.8], [0.6, 0.4]]))
    np.testing.assert_array_equal(hard, [[0, 1], [1, 0]])  # the tasks never agree: affinity 0
    np.testing.assert_allclose(ema.affinity, [[1, 0], [0, 1]])
    # batch 2 is judged against the running mean (0.4, 0.6), not its own (0.85, 0.8): all difficult
    # -> affinity 1 (its own mean would give rows (1, 0), (0, 1) -> 0)
    hard = ema.update(np.array([[0.9, 0.7], [0.8, 0.9]]))
    np.testing.assert_array_equal(hard, [[1, 1], [1, 1]])
    # weights: W = 0.5 * 1 + 1 = 1.5; off-diagonal (0.5 * 0 + 1) / 1.5
    np.testing.assert_allclose(ema.affinity, [[1, 2 / 3], [2 / 3, 1]])
    # means: (0.5 * (0.4, 0.6) + (0.85, 0.8)) / 1.5 = (0.7, 1.1 / 1.5)
    np.testing.assert_allclose(ema.mean_error, [0.7, 1.1 / 1.5])
    last = aff.AffinityEMA(2, decay=0.0)
    last.update(np.array([[0.2, 0.8], [0.6, 0.4]]))
    last.update(np.array([[0.9, 0.7], [0.8, 0.9]]))
    np.testing.assert_allclose(last.affinity, np.ones((2, 2)))  # decay 0: only the last batch


def test_branch_affinity_by_hand():
    a = np.array([[1, .8, .2, .5], [.8, 1, .4, .3], [.2, .4, 1, .6], [.5, .3, .6, 1]])
    # {0,1} vs {2}: tasks 0, 1 -> min .2, .4 -> .3; task 2 -> min(.2, .4) = .2; mean .25
    # {0,1} vs {3}: .5, .3 -> .4; task 3 -> .3; .35.   {2} vs {3}: .6
    # diagonal {0,1}: min(1, .8) = .8 for both -> .8
    expected = [[.8, .25, .35], [.25, 1, .6], [.35, .6, 1]]
    np.testing.assert_allclose(aff.branch_affinity(a, [[0, 1], [2], [3]]), expected)
    with pytest.raises(ValueError):
        aff.branch_affinity(a, [[0, 1], [1]])


# ---------------------------------------------------------------- trees (brute force here)

def _all_partitions(tasks):
    """Every set partition via restricted growth strings, as a set of frozensets."""
    n = len(tasks)
    for labels in itertools.product(range(n), repeat=n):
        if labels[0] != 0 or any(labels[i] > max(labels[:i]) + 1 for i in range(1, n)):
            continue
        groups = {}
        for t, label in zip(tasks, labels):
            groups.setdefault(label, set()).add(t)
        yield frozenset(frozenset(g) for g in groups.values())


def _all_nested_trees(tasks, depth):
    parts = list(_all_partitions(tasks))
    for combo in itertools.product(parts, repeat=depth):
        if all(all(any(g <= h for h in outer) for g in inner) for outer, inner in zip(combo, combo[1:])):
            yield combo


def _bf_cost(tree, dis, tasks):
    idx = {t: i for i, t in enumerate(tasks)}
    total = 0.0
    for d, part in enumerate(tree):
        worst = [max([dis[d, idx[s], idx[t]] for s in g for t in g if s != t], default=0.0) for g in part]
        total += float(np.mean(worst))
    return total


def _bf_params(tree, stage, head=0.0):
    return sum(len(p) * s for p, s in zip(tree, stage)) + head


def _as_sets(tree):
    return tuple(frozenset(frozenset(g) for g in part) for part in tree)


def _random_case(n, depth, seed):
    rng = np.random.default_rng(seed)
    dis = rng.uniform(0.05, 1.0, size=(depth, n, n))
    dis = (dis + dis.transpose(0, 2, 1)) / 2.0
    return [f"t{i}" for i in range(n)], dis, [float(s) for s in rng.integers(1, 10, size=depth)]


def test_partitions_and_refinements_against_brute_force():
    tasks = ["a", "b", "c", "d"]
    ps = trees.partitions(tasks)
    assert len(ps) == 15 and {frozenset(map(frozenset, p)) for p in ps} == set(_all_partitions(tasks))
    assert ps[0] == (("a", "b", "c", "d"),) and ps[-1] == (("a",), ("b",), ("c",), ("d",))
    coarse = (("a", "c"), ("b", "d"))
    expected = {p for p in _all_partitions(tasks) if all(any(g <= set(h) for h in coarse) for g in p)}
    got = trees.refinements(coarse, order=tasks)
    assert {frozenset(map(frozenset, p)) for p in got} == expected and len(got) == 4
    assert all(p in ps for p in got)  # canonical w.r.t. the task order


def test_is_nested():
    assert trees.is_nested(((("a", "b", "c"),), (("a", "b"), ("c",))))
    assert not trees.is_nested(((("a", "b"), ("c",)), (("a",), ("b", "c"))))  # b, c rejoin
    assert not trees.is_nested(((("a", "b"),), (("a",), ("c",))))  # different tasks
    assert not trees.is_nested(((("a", "a"),),))
    assert not trees.is_nested(())


def test_tree_cost_and_params_by_hand_and_brute_force():
    tasks = ["a", "b", "c"]
    dis = np.stack([_from_upper([0.2, 0.7, 0.5], 3), _from_upper([0.4, 0.9, 0.1], 3)])
    tree = ((("a", "b", "c"),), (("a", "b"), ("c",)))
    # location 0: one group, max .7; location 1: (max(a, b) = .4 + 0) / 2 = .2 -> .9
    assert trees.tree_cost(tree, dis, tasks) == pytest.approx(0.9)
    assert trees.tree_params(tree, [3.0, 5.0], head_params=2.0) == 3 + 2 * 5 + 2
    names, rand, stage = _random_case(4, 3, seed=7)
    for t in _all_nested_trees(names, 3):
        tree = tuple(tuple(tuple(sorted(g)) for g in part) for part in t)
        assert trees.tree_cost(tree, rand, names) == pytest.approx(_bf_cost(t, rand, names), abs=1e-12)
        assert trees.tree_params(tree, stage, 1.5) == pytest.approx(_bf_params(t, stage, 1.5))
    with pytest.raises(ValueError):
        trees.tree_cost(((("a", "b"), ("c",)), (("a",), ("b", "c"))), dis, tasks)


@pytest.mark.parametrize("n,seed", [(3, 0), (3, 1), (4, 2), (4, 3), (4, 4)])
@pytest.mark.parametrize("beam", [False, True])
def test_best_tree_against_brute_force(n, seed, beam):
    tasks, dis, stage = _random_case(n, 3, seed)
    all_trees = list(_all_nested_trees(tasks, 3))
    for fraction in [0.0, 0.15, 0.3, 0.5, 0.7, 0.85, 1.0]:
        budget = trees.budget_between(stage, n, fraction, head_params=4.0)
        feasible = [t for t in all_trees if _bf_params(t, stage, 4.0) <= budget + 1e-9]
        best = min(_bf_cost(t, dis, tasks) for t in feasible)
        tree, cost = trees.best_tree(tasks, dis, stage, budget, head_params=4.0,
                                     exhaustive_max_tasks=0 if beam else 6)
        assert cost == pytest.approx(best, abs=1e-12)
        assert _as_sets(tree) in {_as_sets(t) for t in feasible}
        assert _bf_cost(_as_sets(tree), dis, tasks) == pytest.approx(cost, abs=1e-12)
        if fraction == 0.0:
            assert tree == trees.shared_tree(tasks, 3)
        if fraction == 1.0:
            assert tree == trees.split_tree(tasks, 3) and cost == 0.0


def test_budgets_and_ties():
    assert trees.budget_between([1.0, 2.0, 3.0], 4, 0.5, head_params=10.0) == 25.0  # 16 + .5 * (34 - 16)
    tasks, dis, stage = _random_case(3, 2, seed=0)
    shared = trees.tree_params(trees.shared_tree(tasks, 2), stage, 1.0)
    with pytest.raises(ValueError, match=rf"{shared - 0.5}.*{shared}"):
        trees.best_tree(tasks, dis, stage, shared - 0.5, head_params=1.0)
    # every tree costs 0: the tie goes to the fewest parameters, the shared tree
    tree, cost = trees.best_tree(tasks, np.zeros_like(dis), stage, 1e9)
    assert tree == trees.shared_tree(tasks, 2) and cost == 0.0


def _random_nested_tree(tasks, depth, rng):
    parts = [[list(tasks)]]
    for _ in range(depth):
        groups = []
        for g in parts[-1]:
            labels = rng.integers(0, rng.integers(1, len(g) + 1), size=len(g))
            groups += [[t for t, l in zip(g, labels) if l == k] for k in sorted(set(labels))]
        parts.append(groups)
    return tuple(tuple(tuple(g) for g in p) for p in parts[1:])


def test_beam_not_worse_than_random_trees_on_nine_tasks():
    tasks, dis, stage = _random_case(9, 3, seed=11)
    rng = np.random.default_rng(5)
    for fraction in [0.2, 0.5, 0.8]:
        budget = trees.budget_between(stage, 9, fraction)
        tree, cost = trees.best_tree(tasks, dis, stage, budget)
        assert trees.is_nested(tree) and trees.tree_params(tree, stage) <= budget + 1e-9
        assert trees.tree_cost(tree, dis, tasks) == pytest.approx(cost, abs=1e-12)
        rivals = [t for t in (_random_nested_tree(tasks, 3, rng) for _ in range(300))
                  if trees.tree_params(t, stage) <= budget]
        assert rivals and cost <= min(trees.tree_cost(t, dis, tasks) for t in rivals) + 1e-12


@pytest.mark.parametrize("depth,seed", [(3, 0), (3, 5), (4, 3), (4, 13), (4, 39)])
def test_beam_equals_exhaustive_on_six_tasks(depth, seed):
    # includes cases where keeping only the cheapest trees in the beam (no Pareto layers) fails
    tasks, dis, stage = _random_case(6, depth, seed)
    for fraction in [0.25, 0.5, 0.75]:
        budget = trees.budget_between(stage, 6, fraction)
        exact_tree, exact_cost = trees.best_tree(tasks, dis, stage, budget)
        tree, cost = trees.best_tree(tasks, dis, stage, budget, exhaustive_max_tasks=0)
        assert cost == pytest.approx(exact_cost, abs=1e-12)  # the max-based cost has exact ties:
        assert trees.is_nested(tree) and trees.tree_params(tree, stage) <= budget + 1e-9  # compare costs


def test_beam_with_dendrogram_splits_finds_planted_groups():
    tasks = [f"t{i}" for i in range(6)]
    rng = np.random.default_rng(3)
    block = np.array([0, 1, 0, 1, 1, 0])
    dis = np.where(block[:, None] == block[None, :], 0.1, 0.9) + rng.uniform(0, 0.05, size=(3, 6, 6))
    dis = (dis + dis.transpose(0, 2, 1)) / 2.0
    stage = [1.0, 2.0, 4.0]
    for fraction in [0.2, 0.5]:
        budget = trees.budget_between(stage, 6, fraction)
        exact = trees.best_tree(tasks, dis, stage, budget)
        assert trees.best_tree(tasks, dis, stage, budget, exhaustive_max_tasks=0, enumerate_splits_max=0) == exact
    assert exact[0][0] == (("t0", "t2", "t5"), ("t1", "t3", "t4"))  # the planted blocks split at once


# ---------------------------------------------------------------- FAFS junctions

def _planted(sizes, within, across, seed):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    a = np.where(labels[:, None] == labels[None, :], within, across) + rng.uniform(0, 0.02, (len(labels),) * 2)
    a = (a + a.T) / 2.0
    np.fill_diagonal(a, 1.0)
    return a, labels


def _same_partition(x, y):
    return {frozenset(np.flatnonzero(x == k)) for k in set(x)} == {frozenset(np.flatnonzero(y == k)) for k in set(y)}


@pytest.mark.parametrize("method", ["njw", "rw"])
def test_spectral_clusters_recover_planted_blocks(method):
    a2, planted2 = _planted([4, 4], 0.9, 0.1, seed=0)
    labels = fafs.spectral_clusters(a2, 2, seed=0, method=method)
    assert _same_partition(labels, planted2) and labels[0] == 0
    np.testing.assert_array_equal(labels, fafs.spectral_clusters(a2, 2, seed=0, method=method))
    a3, planted3 = _planted([3, 4, 2], 0.85, 0.15, seed=1)
    assert _same_partition(fafs.spectral_clusters(a3, 3, seed=4, method=method), planted3)
    np.testing.assert_array_equal(fafs.spectral_clusters(a3, 1), np.zeros(9))
    np.testing.assert_array_equal(fafs.spectral_clusters(a3, 9), np.arange(9))
    with pytest.raises(ValueError):
        fafs.spectral_clusters(a3, 10)
    with pytest.raises(ValueError):
        fafs.spectral_clusters(-a3, 2)


def test_separation_cost_by_hand():
    ab = np.array([[.8, .25, .35], [.25, 1, .6], [.35, .6, 1]])
    # {0}: 1 - .8 = .2; {1, 2}: row minima .6, .6 -> 1 - .6 = .4; mean over 2 clusters .3
    assert fafs.separation_cost(ab, [0, 1, 1]) == pytest.approx(0.3)
    # one cluster: row minima .25, .25, .35 -> 1 - .85 / 3
    assert fafs.separation_cost(ab, [0, 0, 0]) == pytest.approx(1 - 0.85 / 3)


def test_split_junction_regimes():
    block = np.array([0, 1, 1, 0, 1, 0])
    ab = np.where(block[:, None] == block[None, :], 0.95, 0.3)
    np.fill_diagonal(ab, 1.0)
    c, labels, costs = fafs.split_junction(ab, pooling_above=1, unit_cost=0.01, lam=1.0)
    # L(1) = 1 - .3 = .7; L(2) = .02 + (1 - .95) = .07; L(6) = 5 * .02 + 0 = .1
    assert c == 2 and _same_partition(labels, block)
    assert costs[0] == pytest.approx(0.7) and costs[1] == pytest.approx(0.07) and costs[5] == pytest.approx(0.1)
    assert fafs.split_junction(ab, 1, unit_cost=10.0, lam=1.0)[0] == 1  # branches too dear
    assert fafs.split_junction(ab, 0, unit_cost=0.05, lam=1.0)[0] == 2  # .1 < .7
    assert fafs.split_junction(ab, 4, unit_cost=0.05, lam=1.0)[0] == 1  # 16 * .05 + .05 > .7
    assert fafs.split_junction(ab, 1, 0.01, 1.0, max_clusters=1)[2].shape == (1,)
    unrelated = np.full((5, 5), 0.5)  # independent tasks: P(agree) = 1/2
    np.fill_diagonal(unrelated, 1.0)
    c, labels, _ = fafs.split_junction(unrelated, 2, unit_cost=1e-3, lam=100.0)
    assert c == 5 and sorted(labels) == [0, 1, 2, 3, 4]


def _refines(new, old):
    return all(all(any(set(g) <= set(h) for h in o) for g in n) for n, o in zip(new, old))


def test_widen_top_down_keeps_nesting():
    tasks = ["a", "b", "c", "d"]
    t0 = trees.shared_tree(tasks, 3)
    assert fafs.junction_branches(t0, 2) == [("a",), ("b",), ("c",), ("d",)]
    t1 = fafs.widen(t0, 2, [0, 0, 1, 1])
    assert t1 == (t0[0], t0[1], (("a", "b"), ("c", "d")))
    assert fafs.junction_branches(t1, 1) == [("a", "b"), ("c", "d")]
    t2 = fafs.widen(t1, 1, [0, 1])
    assert t2 == (t0[0], (("a", "b"), ("c", "d")), (("a", "b"), ("c", "d")))
    assert fafs.widen(t2, 0, [0, 0]) == t2  # c = 1: nothing to widen
    for new, old in [(t1, t0), (t2, t1)]:
        assert trees.is_nested(new) and _refines(new, old)
    with pytest.raises(ValueError):
        fafs.widen(t2, 1, [0, 1, 2])


def test_widen_never_joins_separate_groups():
    tree = ((("a", "b"), ("c", "d")), (("a",), ("b",), ("c",), ("d",)))
    new = fafs.widen(tree, 0, [0, 1, 0, 1])  # label 0 spans a and c, which already branched apart
    assert new[0] == (("a",), ("b",), ("c",), ("d",)) and trees.is_nested(new) and _refines(new, tree)

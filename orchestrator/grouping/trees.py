"""Trees of task groupings, their cost and size, and the cheapest tree within a parameter budget.

A tree is a tuple over the candidate sharing locations d = 0..D-1 (shallow to deep) of partitions
of the task names; a partition is a tuple of groups, a group a tuple of names. The layers of stage
d exist once per group of the partition at d, and partitions nest going deeper (every group at
d + 1 lies inside a group at d: tasks that branched apart never share again). Canonical order: the
tasks of a group and the groups (by their first task) follow the task order given.

The cost is Branched Multi-Task Networks' (Vandenhende et al., BMVC 2020, arXiv:1904.02920,
Sec. 3, building the tree; the survey, TPAMI 2021, Sec. 2.2.4, describes the search): a group at
location d costs the largest dissimilarity (1 - RSA affinity) between two of its tasks - complete
linkage, a singleton costs 0; a location costs the mean over its groups; the tree costs the sum
over locations. The paper's text was not at hand here (the section number is from memory); this
definition matches public re-implementations of the paper. The paper picks the cheapest tree whose
parameter count fits the budget by enumerating all trees; ``best_tree`` does that exactly with a
dynamic programme and falls back to a beam search for many tasks (CelebA's 40), our own design.
"""
from __future__ import annotations

import functools
import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.cluster.hierarchy import linkage, to_tree
from scipy.spatial.distance import squareform

Partition = Tuple[Tuple[str, ...], ...]
Tree = Tuple[Partition, ...]
_IPart = Tuple[Tuple[int, ...], ...]  # a partition of task indices, canonical (sorted)


@functools.lru_cache(maxsize=None)
def _ipartitions(items: Tuple[int, ...]) -> Tuple[_IPart, ...]:
    """All set partitions of sorted ``items``, canonical, sorted by (number of groups, groups)."""
    if not items:
        return ((),)
    first, out = items[0], []
    for rest in _ipartitions(items[1:]):
        for i in range(len(rest)):
            out.append(rest[:i] + ((first,) + rest[i],) + rest[i + 1:])
        out.append(((first,),) + rest)
    return tuple(sorted({tuple(sorted(p)) for p in out}, key=lambda p: (len(p), p)))


@functools.lru_cache(maxsize=None)
def _irefinements(part: _IPart) -> Tuple[_IPart, ...]:
    combos = itertools.product(*(_ipartitions(g) for g in part))
    return tuple(sorted({tuple(sorted(g for p in c for g in p)) for c in combos}, key=lambda p: (len(p), p)))


def partitions(tasks: Sequence[str]) -> List[Partition]:
    """All partitions of ``tasks`` (Bell(T) of them), canonical, fewest groups first."""
    names = _check_tasks(tasks)
    return [tuple(tuple(names[i] for i in g) for g in p) for p in _ipartitions(tuple(range(len(names))))]


def refinements(partition: Partition, order: Optional[Sequence[str]] = None) -> List[Partition]:
    """All partitions refining ``partition`` (itself included): every group split any way.

    Canonical w.r.t. ``order`` (default: the tasks as they appear in ``partition``); pass the task
    list to compare with ``partitions(tasks)``.
    """
    names = _check_tasks(order if order is not None else [t for g in partition for t in g])
    pos = {t: i for i, t in enumerate(names)}
    ipart = _to_ipart(partition, pos)
    return [tuple(tuple(names[i] for i in g) for g in p) for p in _irefinements(ipart)]


def is_nested(tree: Tree) -> bool:
    """True when every entry partitions the same tasks and each group at d + 1 lies in a group at d."""
    if not tree:
        return False
    tasks = None
    for part in tree:
        flat = [t for g in part for t in g]
        if not part or any(not g for g in part) or len(set(flat)) != len(flat):
            return False
        if tasks is None:
            tasks = set(flat)
        elif set(flat) != tasks:
            return False
    return all(any(set(g) <= set(p) for p in outer) for outer, inner in zip(tree, tree[1:]) for g in inner)


def shared_tree(tasks: Sequence[str], depth: int) -> Tree:
    """Every location shared by all tasks (hard parameter sharing)."""
    return (tuple([tuple(_check_tasks(tasks))]),) * depth


def split_tree(tasks: Sequence[str], depth: int) -> Tree:
    """Every task its own branch at every location (single-task networks side by side)."""
    return (tuple((t,) for t in _check_tasks(tasks)),) * depth


def tree_cost(tree: Tree, dissimilarity: np.ndarray, tasks: Sequence[str]) -> float:
    """Sum over locations d of the mean over d's groups of the largest task dissimilarity in a group.

    Args:
        dissimilarity: [D, T, T], e.g. 1 - RSA affinity per location, rows in the order of ``tasks``.
    """
    names, dis = _check_dissimilarity(tasks, dissimilarity)
    itree = _to_itree(tree, names, dis.shape[0])
    return _tree_cost(itree, _GroupCost(dis))


def tree_params(tree: Tree, stage_params: Sequence[float], head_params: float = 0.0) -> float:
    """Parameters of ``tree``: sum over d of (number of groups at d) x stage_params[d], plus heads.

    ``head_params`` is everything that does not depend on the tree (stem before location 0, all
    task heads).
    """
    if len(tree) != len(stage_params):
        raise ValueError(f"tree has {len(tree)} locations, stage_params {len(stage_params)}")
    return float(sum(len(p) * float(s) for p, s in zip(tree, stage_params)) + float(head_params))


def budget_between(stage_params: Sequence[float], num_tasks: int, fraction: float,
                   head_params: float = 0.0) -> float:
    """shared + fraction x (split - shared): a budget between hard sharing and single-task networks."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    shared = sum(map(float, stage_params)) + float(head_params)
    split = num_tasks * sum(map(float, stage_params)) + float(head_params)
    return shared + fraction * (split - shared)


def best_tree(tasks: Sequence[str], dissimilarity: np.ndarray, stage_params: Sequence[float], budget: float,
              head_params: float = 0.0, exhaustive_max_tasks: int = 6, beam_width: int = 64,
              enumerate_splits_max: int = 6) -> Tuple[Tree, float]:
    """(tree, cost): the cheapest nested tree with ``tree_params(tree) <= budget``.

    Exact for up to ``exhaustive_max_tasks`` tasks: a dynamic programme over locations whose state
    is the partition at d, holding the Pareto front of (params, cost) of the trees ending there -
    both add up over locations, so no optimum is lost. Beyond, a beam search (ours): start from the
    shared tree; a move splits one group g at one location d in two and applies the split to every
    deeper location (so the tree stays nested); the candidate splits are every bipartition for
    |g| <= ``enumerate_splits_max``, else each cluster of g's complete-linkage dendrogram on d's
    dissimilarity against the rest of g. Each round keeps ``beam_width`` of the new trees within
    budget by non-dominated sorting of (params, cost); the answer is the cheapest tree seen. With
    every bipartition allowed, every nested tree is reachable, so a wide enough beam is exhaustive.
    Ties (the max-based cost has exact ones): lower cost, then fewer parameters, then the
    lexicographically smaller tree of task indices.
    Budgets are compared with a relative tolerance of 1e-9.
    """
    names, dis = _check_dissimilarity(tasks, dissimilarity)
    stage = [float(s) for s in stage_params]
    if len(stage) != dis.shape[0] or any(s < 0 for s in stage):
        raise ValueError(f"need {dis.shape[0]} non-negative stage_params, got {list(stage_params)}")
    shared = tree_params(shared_tree(names, len(stage)), stage, head_params)
    limit = float(budget) - float(head_params) + 1e-9 * max(1.0, abs(float(budget)))
    if shared - float(head_params) > limit:
        raise ValueError(f"budget {budget} is below the fully shared tree's {shared} parameters")
    costs = _GroupCost(dis)
    if len(names) <= exhaustive_max_tasks:
        _, _, itree = _exhaustive(len(names), stage, limit, costs)
    else:
        _, _, itree = _beam(len(names), stage, limit, costs, beam_width, enumerate_splits_max)
    return tuple(tuple(tuple(names[i] for i in g) for g in p) for p in itree), _tree_cost(itree, costs)


class _GroupCost:
    """Cached complete-linkage cost of a group at a location, and the mean over a partition."""

    def __init__(self, dis: np.ndarray):
        self.dis, self._cache = dis, {}

    def group(self, d: int, g: Tuple[int, ...]) -> float:
        if len(g) < 2:
            return 0.0
        key = (d, g)
        if key not in self._cache:
            sub = self.dis[d][np.ix_(g, g)].copy()
            np.fill_diagonal(sub, -np.inf)
            self._cache[key] = float(sub.max())
        return self._cache[key]

    def location(self, d: int, part: _IPart) -> float:
        return sum(self.group(d, g) for g in part) / len(part)


def _tree_cost(itree: Sequence[_IPart], costs: _GroupCost) -> float:
    return _total(costs.location(d, part) for d, part in enumerate(itree))


def _total(location_costs) -> float:
    """Left-to-right float sum, the order the dynamic programme adds in (``sum`` may compensate)."""
    total = 0.0
    for c in location_costs:
        total += c
    return total


def _exhaustive(num_tasks, stage, limit, costs):
    """Dynamic programme over locations; entries are (params, cost, tree) with tree a tuple."""
    rest = [sum(stage[d + 1:]) for d in range(len(stage))]  # cheapest completion: no more splits
    fronts: Dict[_IPart, list] = {}
    for p in _ipartitions(tuple(range(num_tasks))):
        if len(p) * (stage[0] + rest[0]) <= limit:
            fronts[p] = [(len(p) * stage[0], costs.location(0, p), (p,))]
    for d in range(1, len(stage)):
        grown: Dict[_IPart, list] = {}
        for p, entries in fronts.items():
            for q in _irefinements(p):
                if entries[0][0] + len(q) * (stage[d] + rest[d]) > limit:
                    continue  # entries are sorted by params: the first is the lightest
                c = costs.location(d, q)
                grown.setdefault(q, []).extend(
                    (pp + len(q) * stage[d], cc + c, tr + (q,)) for pp, cc, tr in entries
                    if pp + len(q) * (stage[d] + rest[d]) <= limit)
        fronts = {q: _pareto(es) for q, es in grown.items()}
    return min((e for es in fronts.values() for e in es), key=lambda e: (e[1], e[0], e[2]))


def _pareto(entries: list) -> list:
    """Entries not dominated in (params, cost), sorted by params; equal pairs keep the smaller tree."""
    kept, best = [], np.inf
    for e in sorted(entries):
        if e[1] < best:
            kept.append(e)
            best = e[1]
    return kept


def _beam(num_tasks, stage, limit, costs, beam_width, enumerate_splits_max):
    """Beam search over trees whose groups are bitmasks of task indices (a split is two ANDs)."""
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    depth = len(stage)
    members = functools.lru_cache(maxsize=None)(lambda m: tuple(i for i in range(num_tasks) if m >> i & 1))
    seen_locations: Dict[tuple, float] = {}  # the same partitions recur across trees

    def location(d, part):
        if (d, part) not in seen_locations:
            seen_locations[d, part] = costs.location(d, tuple(members(m) for m in part))
        return seen_locations[d, part]

    def indexed(tree):
        return tuple(tuple(sorted(members(m) for m in part)) for part in tree)

    start = (((1 << num_tasks) - 1,),) * depth
    location_costs = {start: tuple(location(d, p) for d, p in enumerate(start))}
    best = (_total(location_costs[start]), _params(start, stage), indexed(start))
    beam, seen, split_cache = [start], {start}, {}
    while beam:
        found = []
        for tree in beam:
            for d in range(depth):
                for g in tree[d]:
                    if (d, g) not in split_cache:
                        halves = _splits(members(g), d, costs.dis, enumerate_splits_max)
                        split_cache[d, g] = [sum(1 << i for i in h) for h in halves]
                    for half in split_cache[d, g]:
                        new = _apply_split(tree, d, g, half)
                        if new in seen:
                            continue
                        seen.add(new)
                        params = _params(new, stage)
                        if params <= limit:  # shallower locations keep their costs
                            loc = location_costs[tree][:d] + tuple(location(e, new[e]) for e in range(d, depth))
                            location_costs[new] = loc
                            found.append((_total(loc), params, new))
        found.sort()
        if found:  # ties in (cost, params) go to the smaller tree of indices, as in the programme
            tied = itertools.takewhile(lambda e: e[:2] == found[0][:2], found)
            best = min(best, min((c, p, indexed(t)) for c, p, t in tied))
        beam = _select(found, beam_width)
    return best


def _select(found: list, width: int) -> list:
    """Up to ``width`` trees by non-dominated sorting of (params, cost): the Pareto front first,
    then the front of the rest, ...; within a front by cost. Keeping light trees whose cost is not
    yet low matters because a split can raise the mean cost before the next one lowers it."""
    rest, chosen = [(p, c, t) for c, p, t in found], []
    while rest and len(chosen) < width:
        front = _pareto(rest)
        chosen += [t for _, _, t in sorted((c, p, t) for p, c, t in front)][:width - len(chosen)]
        taken = {t for _, _, t in front}
        rest = [e for e in rest if e[2] not in taken]
    return chosen


def _params(itree, stage) -> float:
    return sum(len(p) * s for p, s in zip(itree, stage))


def _splits(g: Tuple[int, ...], d: int, dis: np.ndarray, enumerate_max: int) -> List[Tuple[int, ...]]:
    """One side of each candidate bipartition of g: all of them for |g| <= enumerate_max, else
    every cluster of g's complete-linkage dendrogram on d's dissimilarity against the rest of g
    (2|g| - 3 splits: the top split, peeling off one task, and everything between)."""
    if len(g) < 2:
        return []
    if len(g) <= enumerate_max:
        rest = g[1:]
        return [(g[0],) + s for r in range(len(rest)) for s in itertools.combinations(rest, r)]
    sub = dis[d][np.ix_(g, g)]
    sub = np.maximum(sub, sub.T)
    sub = sub - min(0.0, float(sub.min()))  # complete linkage only ranks distances: shift to >= 0
    np.fill_diagonal(sub, 0.0)
    _, nodes = to_tree(linkage(squareform(sub, checks=False), method="complete"), rd=True)
    sides = set()
    for node in nodes[:-1]:  # every cluster but the root
        members = set(node.pre_order())
        side = members if 0 in members else set(range(len(g))) - members
        sides.add(tuple(sorted(g[i] for i in side)))
    return sorted(sides)


def _apply_split(tree, d: int, g: int, half: int):
    """``tree`` (groups as bitmasks) with group g split into half / the rest at location d and every
    deeper one; in a nested tree a deeper group lies inside g or outside it."""
    out = list(tree[:d])
    for part in tree[d:]:
        groups = []
        for h in part:
            if h & g:
                groups.extend(x for x in (h & half, h & ~half) if x)
            else:
                groups.append(h)
        out.append(tuple(sorted(groups)))
    return tuple(out)


def _check_tasks(tasks: Sequence[str]) -> List[str]:
    names = list(tasks)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"tasks must be a non-empty list of distinct names, got {names}")
    return names


def _check_dissimilarity(tasks, dissimilarity):
    names = _check_tasks(tasks)
    dis = np.asarray(dissimilarity, dtype=np.float64)
    if dis.ndim != 3 or dis.shape[1:] != (len(names), len(names)) or not np.all(np.isfinite(dis)):
        raise ValueError(f"dissimilarity must be finite [D, {len(names)}, {len(names)}], got {dis.shape}")
    return names, dis


def _to_ipart(partition, pos: Dict[str, int]) -> _IPart:
    try:
        return tuple(sorted(tuple(sorted(pos[t] for t in g)) for g in partition))
    except KeyError as err:
        raise ValueError(f"partition {partition} names a task outside {sorted(pos, key=pos.get)}") from err


def _to_itree(tree: Tree, names: List[str], depth: int) -> Tuple[_IPart, ...]:
    if len(tree) != depth or not is_nested(tree) or {t for g in tree[0] for t in g} != set(names):
        raise ValueError(f"not a nested tree over {names} with {depth} locations: {tree}")
    pos = {t: i for i, t in enumerate(names)}
    return tuple(_to_ipart(p, pos) for p in tree)

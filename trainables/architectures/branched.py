"""Branched (tree-shaped) encoder: tasks share the backbone's stages up to where their branches split.

Vandenhende, Georgoulis, De Brabandere & Van Gool, "Branched Multi-Task Networks: Deciding What
Layers To Share", BMVC 2020 (the survey's [37]); Lu et al., "Fully-Adaptive Feature Sharing in
Multi-Task Networks with Applications in Person Attribute Classification", CVPR 2017 (FAFS,
[36]); Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI
2021, Sec. 2.2.4 "Tree-Based Encoders" and Fig. 5 (FAFS), Sec. 4.2.2-4.2.3 with Table 4 and
Fig. 10 (Cityscapes, "Branched-1..3"), Table 5 (Taskonomy, "FAFS-1..3", "Branched-1..3"), the
groupings in the supplement's Figs. S1-S3.

The sharing locations are the backbone's stages (0 the stem ... the last stage). ``tree`` gives,
for every stage d, a partition of the tasks into groups; the tasks of a group share one copy of
stage d, and that copy reads the output of the group of stage d - 1 that contains it. Groups may
only split going deeper (each group of stage d + 1 lies inside one group of stage d), so the
encoder is a tree whose root is the input; each task's head reads its leaf (its group at the
last stage), and a head with a stride-4 skip (DeepLab-v3+) reads the stride-4 features of the
task's own branch. Example, three tasks on a 4-stage backbone (tiny_cnn): stem and stage 1
shared by all, at stage 2 one branch for a and b and one for c, at stage 3 a and b split::

    tree = ((("a", "b", "c"),), (("a", "b", "c"),), (("a", "b"), ("c",)), (("a",), ("b",), ("c",)))

Equivalences (tested): the fully shared tree (``tree=None``: one group per stage) is
``mtl_baseline``, parameter for parameter; the fully split tree (one group per task at every
stage) is the tasks' ``single_task`` networks side by side.

Parameters: one copy of stage d per group of stage d, so #P = sum_d |tree[d]| * P(stage d) +
heads. Each copy is stage d of a fresh ``make_backbone()`` (group k of every stage takes the
k-th backbone built), so copies are independently initialised as the backbone would be (or all
start from the same pretrained weights) - the fully shared tree builds and initialises exactly
what ``mtl_baseline`` does. Module keys: ``stages.<d>.<group>`` with the group's tasks joined by
"+", e.g. ``stages.2.semseg+depth``.

Parameter split: a stage copy used by two or more tasks (or by every task, for one task) is
shared; one used by a single task belongs to that task with its head. ``last_shared_module()``
is the last conv of the last stage shared by all tasks (none with a split stem: a ValueError).
Whenever the stem is shared by all tasks, ``encode`` runs the stages shared by all (the longest
shared prefix; with a stride-4 skip read inside that prefix before its end, z is the pair
(stride-4 features, prefix output)) and ``decode`` the branches and heads, forward == decode o
encode. ``has_shared_representation`` is narrower: the stem is shared by all AND every stage
after the prefix is split into single tasks (mtl_baseline, or one split point). The training
step's gradient-level path starts at z and treats every non-shared parameter as decoder, so a
group of 2..T-1 tasks after the prefix (shared, yet after z) would get no gradient at all;
such trees take the step's generic path (per-task gradients of all shared parameters from the
losses) and representation-level balancers (MGDA-UB, IMTL, IAL) are refused for them.

Growing (FAFS, and the BMVC paper's trained tree): ``load_parent`` starts each copy of stage d from
the weights of the parent's group that contains it, and copies the heads, so a refined model
computes exactly what its parent did until it trains. The parent is a ``branched`` model with a
coarser tree, or ``mtl_baseline`` (the fully shared tree, where FAFS starts).

Hyper-parameters:
    tree (list over stages of lists of groups of task names, or None; default None = every stage
        shared by all tasks): must partition the same tasks at every stage, nest, and match the
        model's tasks and the backbone's number of stages.

Deviations:
    - Sharing locations are whole stages (ResNet: stem, layer1..layer4), as in the survey's
      experiments ("candidate branching points ... after every ResNet block", Sec. 4.2.3; on
      Cityscapes only the last three blocks branch: share stages 0-1 in the tree); FAFS
      (Lu et al.) branches after single layers.
    - The tree is given, not searched: the BMVC paper derives it from task affinities (RSA
      between single-task networks) under a parameter budget, FAFS grows it greedily during
      training; either search runs outside this model (``ArchitectureInfo.accepts_grouping``)
      and hands over its ``tree``; FAFS's rounds grow through ``load_parent`` (Fig. 5: "the
      weights at the newly created junction are initialized by replicating the current weights").
    - FAFS starts from a thin network (fewer filters, widened as it branches); here every copy
      keeps the backbone's width, and the FAFS start is the plain ``mtl_baseline``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from trainables.architectures.base import BackboneFactory, HeadFactory, MultiTaskModel, last_weight_layer, params_of
from trainables.heads.base import apply_head
from trainables.plugins import ArchitectureInfo, ModelRef
from trainables.registry import ARCHITECTURES, register_architecture
from trainables.schema import ConfigError, from_plain
from trainables.tasks.base import Task

Group = Tuple[str, ...]
Tree = Tuple[Tuple[Group, ...], ...]


def group_key(group: Sequence[str]) -> str:
    """The module key of a group: its tasks joined by "+" ("semseg+depth")."""
    return "+".join(group)


def check_tree(tree: Tree) -> None:
    """Each stage a partition (disjoint, non-empty groups) of the same tasks; partitions nest."""
    if not tree:
        raise ConfigError("tree: give one partition of the tasks per backbone stage, or null for all shared")
    for d, stage in enumerate(tree):
        if not stage or any(not group for group in stage):
            raise ConfigError(f"tree: stage {d} has an empty partition or an empty group: {stage!r}")
        seen: Dict[str, Group] = {}
        for group in stage:
            for task in group:
                if not isinstance(task, str) or not task or "." in task:
                    raise ConfigError(f"tree: stage {d}, group {group!r}: {task!r} is not a task name "
                                      "(a non-empty string without dots)")
                if task in seen:
                    raise ConfigError(f"tree: stage {d}: task {task!r} is in two groups, {seen[task]!r} and "
                                      f"{group!r}; the groups of a stage must be disjoint")
                seen[task] = group
        first = {t for group in tree[0] for t in group}
        if set(seen) != first:
            raise ConfigError(f"tree: stage {d} groups tasks {sorted(seen)} but stage 0 groups {sorted(first)}; "
                              f"missing {sorted(first - set(seen))}, extra {sorted(set(seen) - first)}: every "
                              "stage must partition the same tasks")
        if d:
            for group in stage:
                parents = [p for p in tree[d - 1] if set(group) & set(p)]
                if len(parents) > 1:
                    raise ConfigError(f"tree: stage {d}: group {group!r} spans groups {parents} of stage {d - 1}; "
                                      "a group may only split going deeper (partitions must nest)")


def shared_depth(tree: Tree) -> int:
    """The number of leading stages shared by all tasks (the longest shared prefix)."""
    return next((d for d, groups in enumerate(tree) if len(groups) > 1), len(tree))


def representation_is_shared(tree: Tree) -> bool:
    """Whether ``encode`` gives a representation that every shared parameter lies before: the
    stem is shared by all tasks and the tree splits into single tasks where the prefix ends (a
    group of 2..T-1 tasks after the prefix would hold shared parameters that the step's
    gradient-level path, which starts at z, never reaches)."""
    depth = shared_depth(tree)
    return depth > 0 and (depth == len(tree) or all(len(g) == 1 for g in tree[depth]))


def normalise(tree) -> Optional[Tree]:
    """``tree`` as nested tuples (a list of lists from YAML, or tuples)."""
    if tree is None:
        return None
    if isinstance(tree, (str, bytes)) or not all(isinstance(s, (list, tuple)) for s in tree) or not all(
            isinstance(g, (list, tuple)) for s in tree for g in s):
        raise ConfigError(f"tree: expected a list (per stage) of lists (groups) of task names, got {tree!r}")
    return tuple(tuple(tuple(group) for group in stage) for stage in tree)


@dataclass(frozen=True)
class BranchedParams:
    """Hyper-parameters of ``branched`` (see the module docstring)."""

    tree: Optional[Tuple[Tuple[Tuple[str, ...], ...], ...]] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tree", normalise(self.tree))
        if self.tree is not None:
            check_tree(self.tree)


@register_architecture("branched")
class BranchedNetwork(MultiTaskModel):
    """Tree-shaped encoder: tasks share stages until their groups split (Branched MTN, FAFS)."""

    Params = BranchedParams
    INFO = ArchitectureInfo(has_shared_representation=True, needs_sequential_stages=True, accepts_grouping=True)

    @classmethod
    def info_for(cls, params) -> ArchitectureInfo:
        tree = cls.params_of(params).tree
        return ArchitectureInfo(has_shared_representation=tree is None or representation_is_shared(tree),
                                needs_sequential_stages=True, accepts_grouping=True)

    def __init__(self, tasks: Mapping[str, Task], make_backbone: BackboneFactory, make_head: HeadFactory,
                 params=None, **kwargs):
        super().__init__(tasks, params, **kwargs)
        first = make_backbone()
        num_stages = len(first.stages)
        tree = self.params.tree or ((tuple(self.task_names),),) * num_stages
        if len(tree) != num_stages:
            raise ValueError(f"{self.label()}: the tree has {len(tree)} stages, the backbone {num_stages} "
                             f"(stage 0 is the stem); give one partition of the tasks per stage")
        covered = {t for group in tree[0] for t in group}
        if covered != set(self.task_names):
            raise ValueError(f"{self.label()}: stage 0 of the tree groups tasks {sorted(covered)}, the model's tasks "
                             f"are {self.task_names}: missing {sorted(set(self.task_names) - covered)}, not a task "
                             f"{sorted(covered - set(self.task_names))}")
        self.tree: Tree = tree
        # group k of every stage takes stage d of the k-th fresh backbone: independent init per copy
        backbones = [first] + [make_backbone() for _ in range(max(len(s) for s in tree) - 1)]
        self.stages = nn.ModuleList(
            nn.ModuleDict({group_key(g): backbones[k].stages[d] for k, g in enumerate(groups)})
            for d, groups in enumerate(tree))
        # parent[d][k]: the group of stage d - 1 that contains group k of stage d
        self.parent: List[List[int]] = [[0] * len(tree[0])] + [
            [next(j for j, p in enumerate(tree[d - 1]) if set(g) <= set(p)) for g in tree[d]]
            for d in range(1, num_stages)]
        self.shared_depth = shared_depth(tree)
        low = first.low_level_index()
        low_channels = None if low is None else first.stage_channels[low]
        self.heads = nn.ModuleDict(
            {name: make_head(task, first.out_channels, low_channels) for name, task in self.tasks.items()})
        # the stage whose output low-level heads also read (None: no head reads one)
        self.low_level = low if any(head.INFO.low_level for head in self.heads.values()) else None

    # -- forward ---------------------------------------------------------------------------
    def _group_of(self, d: int, task: str) -> int:
        return next(k for k, g in enumerate(self.tree[d]) if task in g)

    def _run(self, x: Tensor, start: int, low: Optional[Tensor], input_hw: Sequence[int]) -> Dict[str, Tensor]:
        """Stages ``start``.. from ``x`` (the input, or the output of the one group of stage
        start - 1), then the heads; ``low``: the shared stride-4 features when that stage < start."""
        outs: List[Tensor] = [x]
        lows: List[Optional[Tensor]] = [low]
        for d in range(start, len(self.tree)):
            outs = [self.stages[d][group_key(g)](outs[self.parent[d][k]]) for k, g in enumerate(self.tree[d])]
            if d == self.low_level:
                lows = outs
        outputs = {}
        for name in self.task_names:
            feature = None
            if self.low_level is not None:
                feature = lows[0] if self.low_level < start else lows[self._group_of(self.low_level, name)]
            outputs[name] = apply_head(self.heads[name], outs[self._group_of(len(self.tree) - 1, name)], feature)
        return self.resize_outputs(outputs, input_hw)

    def encode(self, x: Tensor) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """The stages shared by all tasks (with a stride-4 skip read inside them, before their
        end: the pair (stride-4 features, their output))."""
        self._check_prefix()
        low = None
        for d in range(self.shared_depth):
            x = self.stages[d][group_key(self.tree[d][0])](x)
            if d == self.low_level and d < self.shared_depth - 1:
                low = x
        return x if low is None else (low, x)

    def decode(self, z: Union[Tensor, Tuple[Tensor, Tensor]], input_hw: Sequence[int]) -> Dict[str, Tensor]:
        """The branches after the shared prefix, and the heads."""
        self._check_prefix()
        low, high = z if isinstance(z, tuple) else (None, z)
        if self.low_level == self.shared_depth - 1:
            low = high  # the prefix ends at the stride-4 stage: z is both
        return self._run(high, self.shared_depth, low, input_hw)

    def _check_prefix(self) -> None:
        if self.shared_depth == 0:
            raise NotImplementedError(f"{self.label()}: the stem is split into {list(self.tree[0])}, so no "
                                      "representation is shared by all tasks")

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        if self.info.has_shared_representation:
            return self.decode(self.encode(x), x.shape[-2:])
        return self._run(x, 0, None, x.shape[-2:])

    # -- parameter split ---------------------------------------------------------------------
    def _copies(self):
        """(tasks of the group, its stage copy) for every group of every stage."""
        return [(g, self.stages[d][group_key(g)]) for d, groups in enumerate(self.tree) for g in groups]

    def _is_shared(self, group: Group) -> bool:
        return len(group) > 1 or len(group) == len(self.task_names)

    def shared_parameters(self) -> List[nn.Parameter]:
        return params_of(*[m for g, m in self._copies() if self._is_shared(g)])

    def task_specific_parameters(self, task: str) -> List[nn.Parameter]:
        self.check_task(task)
        return params_of(*[m for g, m in self._copies() if not self._is_shared(g) and g == (task,)], self.heads[task])

    def last_shared_module(self) -> nn.Module:
        if self.shared_depth == 0:
            raise ValueError(f"{self.label()}: no stage is shared by all tasks (the stem is split into "
                             f"{list(self.tree[0])}), so there is no last shared layer; gradient-level balancers "
                             "with grad_scope 'last_shared' (GradNorm's cheap variant) need one - share the stem, "
                             "or use a balancer that works on all shared parameters or on the losses")
        d = self.shared_depth - 1
        return last_weight_layer(self.stages[d][group_key(self.tree[d][0])])

    # -- growing from a coarser model --------------------------------------------------------------
    def load_parent(self, state: Mapping[str, Tensor], parent_model) -> None:
        """Start from a coarser ``branched`` model (or ``mtl_baseline``, the fully shared tree):
        each copy of stage d takes the weights of the parent's group of stage d that contains it,
        each head the parent's head. A parent that this tree does not refine is a ValueError."""
        ref = parent_model if isinstance(parent_model, ModelRef) else from_plain(ModelRef, parent_model, "parent_model")
        arch = ref.architecture.name
        num_stages = len(self.tree)
        if arch == "branched":
            parent_tree = ARCHITECTURES.get("branched").params_of(ref.architecture.params).tree
            parent_tree = parent_tree or ((tuple(self.task_names),),) * num_stages
            if len(parent_tree) != num_stages:
                raise ValueError(f"{self.label()}.load_parent: the parent's tree has {len(parent_tree)} stages, this "
                                 f"one {num_stages}")

            def source(d: int, group: Group) -> str:
                return f"stages.{d}.{group_key(group)}."
        elif arch == "mtl_baseline":
            parent_tree = ((tuple(self.task_names),),) * num_stages

            def source(d: int, group: Group) -> str:
                return f"backbone.stages.{d}."
        else:
            raise ValueError(f"{self.label()}.load_parent: a parent must be a 'branched' or 'mtl_baseline' model, "
                             f"got architecture {arch!r}")
        parent_tasks = {t for g in parent_tree[0] for t in g}
        if parent_tasks != set(self.task_names):
            raise ValueError(f"{self.label()}.load_parent: the parent serves tasks {sorted(parent_tasks)}, this model "
                             f"{self.task_names}; a refined tree keeps the tasks")
        mapped: Dict[str, Tensor] = {}
        used = set()
        for d, groups in enumerate(self.tree):
            for g in groups:
                parent = next((p for p in parent_tree[d] if set(g) <= set(p)), None)
                if parent is None:
                    raise ValueError(f"{self.label()}.load_parent: stage {d}: group {g!r} lies in no group of the "
                                     f"parent's stage {d} {list(parent_tree[d])}; this tree does not refine the "
                                     "parent's (groups may only split)")
                used.add(source(d, parent))
                mapped.update(self._take(state, source(d, parent), f"stages.{d}.{group_key(g)}."))
        for name in self.task_names:
            used.add(f"heads.{name}.")
            mapped.update(self._take(state, f"heads.{name}.", f"heads.{name}."))
        missing = sorted(set(self.state_dict()) - set(mapped))
        unused = sorted(k for k in state if not any(k.startswith(prefix) for prefix in used))
        if missing or unused:
            raise ValueError(f"{self.label()}.load_parent: the parent's state does not match the {arch!r} model "
                             f"{ref.to_dict()} over tasks {self.task_names}: {len(missing)} keys missing "
                             f"{missing[:3]}, {len(unused)} keys unused {unused[:3]}")
        try:
            self.load_state_dict(mapped, strict=True)
        except RuntimeError as err:  # shapes: another backbone or head
            raise ValueError(f"{self.label()}.load_parent: the parent's weights do not fit (another backbone or "
                             f"head?): {' '.join(str(err).split())}") from None

    @staticmethod
    def _take(state: Mapping[str, Tensor], prefix: str, target: str) -> Dict[str, Tensor]:
        return {target + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

"""Task-grouping searches that derive a tree-shaped encoder before an experiment's Tune run.

The pure math lives in three modules (numpy / scipy only, no Ray, no torch):

* ``affinity`` - task affinities: RSA over representation dissimilarity matrices (Branched
  Multi-Task Networks, Vandenhende et al., BMVC 2020) and the co-occurrence of difficult / easy
  examples with its running average and branch affinity (FAFS, Lu et al., CVPR 2017).
* ``trees`` - trees of task groupings over the sharing locations, the Branched cost, parameter
  counts and budgets, and the cheapest tree within a budget (exact, or a beam search).
* ``fafs`` - FAFS's junction step: spectral clustering of branches, the complexity + separation
  cost, and widening a tree top-down.

The plug-ins (one file each, ``mtl list grouping``): ``branched_mtl`` and ``fafs``; ``base`` holds
the kind's contract and registry, ``actor`` the heavy steps the study's actor pool runs.
"""
from orchestrator.grouping import branched_mtl, fafs_search  # noqa: F401  (registers the searches)
from orchestrator.grouping.base import (  # noqa: F401
    GROUPINGS,
    Derivation,
    GroupingContext,
    GroupingSearch,
    plain_tree,
    register_grouping,
    tree_summary,
)

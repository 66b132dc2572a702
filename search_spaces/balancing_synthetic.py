"""Survey Table 11 on the synthetic scenes: fixed, uncertainty, GradNorm, DWA, DTP and MGDA.

The survey's task-balancing comparison (Sec. 4.4, Table 11) on three dense tasks, plus a
TPE search over the fixed weights (the survey grid-searched them by hand).
"""
from search_spaces.quickstart import SPEC as QUICKSTART

BALANCERS = ("fixed", "uncertainty", "gradnorm", "dwa", "dtp", "mgda")

SPEC = {
    **QUICKSTART,
    "name": "balancing_synthetic",
    "description": __doc__.splitlines()[0],
    "tasks": ["semseg", "depth", "normals"],
    "experiments": [{"name": b, "balancer": b} for b in BALANCERS]
    + [{"name": "fixed_tpe", "balancer": "fixed", "weight_search": {"num_samples": 8, "space": "log_uniform"}}],
    "train": {"epochs": 6, "seeds": [0]},
}

"""IAL (Table I of the IAL paper) on the synthetic scenes: each task in turn as the primary one.

Impartial Auxiliary Learning against uniform and uncertainty weighting, mean +- std over three
seeds. Each IAL experiment trains with one primary task; the report composes the "ial" row
from each task's metric in the experiment where it was primary, as the paper's Table I does.
"""
from search_spaces.quickstart import SPEC as QUICKSTART

TASKS = ["depth", "semseg", "normals"]

SPEC = {
    **QUICKSTART,
    "name": "ial_synthetic",
    "description": __doc__.splitlines()[0],
    "tasks": TASKS,
    "experiments": [{"name": "uniform", "balancer": "fixed"}, {"name": "uw", "balancer": "uncertainty"}]
    + [{"name": f"ial_{t}", "balancer": "ial", "primary_task": t} for t in TASKS],
    "search": {"batch_sizes": [16], "schedulers": ["poly"], "lrs": [2e-4]},
    "train": {"epochs": 6, "seeds": [0, 1, 2]},
}

"""Survey Table 3 on NYUD-v2: single-task networks vs the MTL baseline, semseg + depth.

Vandenhende et al., TPAMI 2021, Sec. 4.2.1 and supp. B.1: a dilated ResNet-50 encoder with
DeepLab-v3 ASPP heads, every model grid-searched over supplementary A's 48 settings (NYUD batch
sizes 4 / 6 / 8). The single-task rows are the study's baselines (Delta_m's reference). The
epoch count is not given in the paper; 100 is our choice. Needs the NYUD_MT folder
(``--data-root``); selection is on the held-out val split, the official val is the test split.
"""

SPEC = {
    "name": "survey_nyud",
    "description": __doc__.splitlines()[0],
    "dataset": {"name": "nyud"},
    "tasks": ["semseg", "depth"],
    "backbone": {"name": "resnet50", "params": {"dilated": True}},
    "head": "aspp",
    "experiments": [{"name": "mtl_baseline", "architecture": "mtl_baseline", "balancer": "fixed"}],
    "search": {},  # the whole 48-setting grid
    "train": {"epochs": 100, "seeds": [0], "eval_batch_size": 8},
}

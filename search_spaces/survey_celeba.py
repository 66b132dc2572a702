"""Survey Table 11a setup on CelebA: 40 attributes, ResNet-18 with one linear head each.

Vandenhende et al., TPAMI 2021, Sec. 4.5.1 and supp. D.1: 224 x 224 inputs with random crops
and flips, binary cross-entropy per attribute, the MTL baseline with fixed uniform weights
("the task-specific weights are set to one") against the 40 single-task networks, every model
grid-searched over supplementary A's 48 settings with CelebA's batch sizes 32 / 128 / 256.
Other balancers (uncertainty, GradNorm, DWA, MGDA) are added as experiments once registered.
The epoch count is not given in the paper; 30 is our choice. Needs ``--data-root``.
"""
from trainables.datasets.celeba import TASK_NAMES

SPEC = {
    "name": "survey_celeba",
    "description": __doc__.splitlines()[0],
    "dataset": {"name": "celeba"},
    "tasks": list(TASK_NAMES),
    "backbone": "resnet18",
    "head": "linear",
    "experiments": [{"name": "fixed", "architecture": "mtl_baseline", "balancer": "fixed"}],
    "search": {"asha": True, "grace_period": 3},  # the whole 48-setting grid, ASHA on
    "train": {"epochs": 30, "seeds": [0], "eval_batch_size": 256},
}

"""Survey Table 11 (task balancing) on NYUD-v2, Cityscapes and CelebA: one preset per dataset.

Vandenhende et al., TPAMI 2021, Sec. 4.5 and Table 11: fixed weights, uncertainty (Eq. 6),
GradNorm (Eq. 7), DWA (Eq. 8) and MGDA on the MTL baseline, each grid-searched like the model
rows of Tables 3-4. Each preset reuses its dataset's survey preset; ``--data-root`` is needed.
"""
from search_spaces.survey_celeba import SPEC as CELEBA
from search_spaces.survey_nyud import SPEC as NYUD

BALANCERS = ("fixed", "uncertainty", "gradnorm", "dwa", "mgda")


def balancing(base: dict, name: str) -> dict:
    return {**base, "name": name, "reference": None, "description": f"Survey Table 11 on {base['dataset']['name']}: "
            f"{', '.join(BALANCERS)} on the MTL baseline",
            "experiments": [{"name": b, "architecture": "mtl_baseline", "balancer": b} for b in BALANCERS]}


NYUD_SPEC = balancing(NYUD, "balancing_nyud")
CELEBA_SPEC = balancing(CELEBA, "balancing_celeba")
CITYSCAPES_SPEC = balancing({
    **NYUD,
    "dataset": {"name": "cityscapes"},
    "tasks": ["semseg", "instance_center", "depth"],
    "head": "psp",  # Table 4's head
}, "balancing_cityscapes")

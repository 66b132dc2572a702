"""The survey's full protocol on the synthetic scenes: the whole 48-setting grid.

Single-task networks vs the MTL baseline (survey Table 3's first two rows) with every model
grid-searched over supplementary A's 48 settings, ASHA stopping weak trials early.
"""
from search_spaces.quickstart import SPEC as QUICKSTART

SPEC = {
    **QUICKSTART,
    "name": "survey_synthetic",
    "description": __doc__.splitlines()[0],
    "search": {"asha": True, "grace_period": 3},
    "train": {"epochs": 20, "seeds": [0]},
}

"""Survey Table 3 on NYUD-v2: single-task networks, MTL baseline, MTAN, cross-stitch, NDDR-CNN.

Vandenhende et al., TPAMI 2021, Sec. 4.2.1 and supp. B.1: semseg + depth at 480 x 640, a dilated
ResNet-50 encoder with DeepLab-v3 ASPP heads, every model grid-searched over supplementary A's 48
settings (NYUD batch sizes 4 / 6 / 8). Cross-stitch and NDDR-CNN start from the study's best
single-task networks. The epoch count is not given in the paper; 100 is our choice. Needs the
NYUD_MT folder (``--data-root``); selection is on the held-out val split, the official val is
the test split. ``mtl models survey_nyud`` compares #P / FLOPS with the table.
"""
from search_spaces.encoder_models import EXPERIMENTS, reference

SPEC = {
    "name": "survey_nyud",
    "description": __doc__.splitlines()[0],
    "dataset": {"name": "nyud"},
    "tasks": ["semseg", "depth"],
    "backbone": {"name": "resnet50", "params": {"dilated": True}},
    "head": "aspp",
    "experiments": EXPERIMENTS,
    "search": {},  # the whole 48-setting grid
    "train": {"epochs": 100, "seeds": [0], "eval_batch_size": 8},
    "reference": reference("survey Table 3", single=(79, 383), mtl=(56, 267), mtan=(214, 1064),
                           cross_stitch=(79, 383), nddr=(101, 413)),
}

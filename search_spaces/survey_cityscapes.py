"""Survey Table 4 on Cityscapes: single-task networks, MTL baseline, MTAN, cross-stitch, NDDR-CNN.

Vandenhende et al., TPAMI 2021, Sec. 4.2.2: semseg, instance-centre regression (the proxy task of
[32]) and depth (from disparity) at 256 x 512, a dilated ResNet-50 encoder with PSP heads, every
model grid-searched like Table 3 (the survey gives no Cityscapes batch sizes: NYUD's 4 / 6 / 8).
Needs the official Cityscapes layout (``--data-root``). ``mtl models survey_cityscapes`` compares
#P / FLOPS with the table. Branched-1/2/3 and FAFS-1/2/3 branch the encoder in its last three
ResNet blocks (first_location 2), as the survey does on Cityscapes; their trees are derived from the
cached single-task networks before they train (``mtl group survey_cityscapes`` runs only that).
"""
from search_spaces.encoder_models import EXPERIMENTS, reference
from search_spaces.grouping_models import grouping_experiments
from search_spaces.survey_nyud import SPEC as TABLE_3

SPEC = {
    **TABLE_3,
    "name": "survey_cityscapes",
    "description": __doc__.splitlines()[0],
    "dataset": {"name": "cityscapes"},
    "tasks": ["semseg", "instance_center", "depth"],
    "head": "psp",
    "experiments": EXPERIMENTS + grouping_experiments(first_location=2),
    "reference": reference("survey Table 4", single=(138, 266), mtl=(92, 166), mtan=(330, 676),
                           cross_stitch=(140, 266), nddr=(190, 372),
                           branched_1=(107, 196), branched_2=(114, 211), branched_3=(116, 213)),
}

"""Survey Table 5 on Taskonomy: single-task networks, MTL baseline, MTAN, cross-stitch, NDDR-CNN.

Vandenhende et al., TPAMI 2021, Sec. 4.2.3: depth, semseg, scene categorisation, edges (texture)
and 2-D keypoints on the tiny split at 256 x 256, Taskonomy's ResNet-50 encoder (output stride
16) with its fully convolutional head for the dense tasks (scene: a linear head), every model grid-searched like
Table 3 (Taskonomy batch sizes 8 / 16 / 32). Needs the Taskonomy folder (``--data-root``).
``mtl models survey_taskonomy`` compares #P / FLOPS with the table. FAFS-1/2/3 and Branched-1/2/3
may branch after every ResNet block (first_location 1), as the survey does on Taskonomy; their
trees are derived from the cached single-task networks before they train.
"""
from search_spaces.encoder_models import EXPERIMENTS, reference
from search_spaces.grouping_models import grouping_experiments
from search_spaces.survey_nyud import SPEC as TABLE_3

SPEC = {
    **TABLE_3,
    "name": "survey_taskonomy",
    "description": __doc__.splitlines()[0],
    "dataset": {"name": "taskonomy"},
    "tasks": ["depth", "semseg", "scene", "edge_texture", "keypoints2d"],
    "backbone": {"name": "resnet50", "params": {"dilated": True, "dilate_scale": 16}},  # Taskonomy's 16x16 map
    "head": "taskonomy_fcn",
    "experiments": EXPERIMENTS + grouping_experiments(first_location=1),
    "reference": reference("survey Table 5", single=(224, 136), mtl=(130, 70), mtan=(525, 365),
                           cross_stitch=(224, 135), nddr=(258, 176),
                           fafs_1=(174, 93), fafs_2=(188, 101), fafs_3=(196, 105),
                           branched_1=(174, 93), branched_2=(188, 101), branched_3=(196, 105)),
}

"""The synthetic twins of survey Tables 3-5: the same encoder-based models on the synthetic scenes.

Each twin trains the table's models (MTL baseline, MTAN, cross-stitch, NDDR-CNN and the
single-task networks) on 64 x 64 synthetic scenes with the tiny backbone and light heads and the
quickstart's two grid settings, so it runs on a laptop; the Table 4 and 5 twins also derive their
Branched-1/2/3 and FAFS-1/2/3 trees (200 images per search). The synthetic data has no instance or
keypoint labels: Table 4's twin uses three dense tasks (semseg, depth, normals) and Table 5's
five tasks with one image-level task (depth, semseg, scene, edge, normals).
"""
from search_spaces.encoder_models import synthetic_twin
from search_spaces.grouping_models import grouping_experiments
from search_spaces.survey_cityscapes import SPEC as TABLE_4
from search_spaces.survey_nyud import SPEC as TABLE_3
from search_spaces.survey_taskonomy import SPEC as TABLE_5

NYUD_TWIN = synthetic_twin(TABLE_3, ["semseg", "depth"], "Survey Table 3's models on the synthetic scenes (semseg, depth).")
CITYSCAPES_TWIN = synthetic_twin(TABLE_4, ["semseg", "depth", "normals"],
                                 "Survey Table 4's models on the synthetic scenes (3 dense tasks).")
TASKONOMY_TWIN = synthetic_twin(TABLE_5, ["depth", "semseg", "scene", "edge", "normals"],
                                "Survey Table 5's models on the synthetic scenes (5 tasks).")
# the tiny backbone has 4 stages (stem + 3): branching from stage 1, small searches for a laptop
for twin in (CITYSCAPES_TWIN, TASKONOMY_TWIN):
    twin["experiments"] = TABLE_3["experiments"] + grouping_experiments(first_location=1, num_images=200)

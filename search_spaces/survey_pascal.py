"""Survey Tables 8-9 setup on PASCAL-Context: single-task networks vs the MTL baseline, 5 tasks.

Vandenhende et al., TPAMI 2021, Sec. 4.3.2: semseg, human parts, saliency, normals and edges
on PASCAL-Context (PASCAL_MT layout, 512 x 512). The tables reuse ASTMT's dilated ResNet-26 +
DeepLab-v3+ (registered here as resnet26 and deeplabv3plus, without ASTMT's squeeze-and-excitation
modules and narrow decoder, see their docstrings); this preset follows the survey code's own PASCAL
ResNet-18 config instead (``configs/pascal/resnet18``: dilated ResNet-18, ASPP heads, Adam 1e-4,
poly, batch 6, 100 epochs) with its fixed loss weights (semseg 1, human parts 2, saliency 5,
edge 50, normals 10). Saliency is scored by mIoU as in the tables. Needs ``--data-root``.
"""
from trainables.datasets.pascal_context import SURVEY_LOSS_WEIGHTS

SPEC = {
    "name": "survey_pascal",
    "description": __doc__.splitlines()[0],
    "dataset": {"name": "pascal_context"},
    "tasks": ["semseg", "human_parts", "saliency", "normals", "edge"],
    "backbone": {"name": "resnet18", "params": {"dilated": True}},
    "head": "aspp",
    "experiments": [{"name": "mtl_baseline", "architecture": "mtl_baseline",
                     "balancer": {"name": "fixed", "params": {"weights": dict(SURVEY_LOSS_WEIGHTS)}}}],
    "search": {"batch_sizes": [6], "schedulers": ["poly"], "optimizers": ["adam"], "lrs": [1e-4]},
    "train": {"epochs": 100, "seeds": [0], "eval_batch_size": 8},
}

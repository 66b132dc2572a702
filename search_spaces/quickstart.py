"""The quickstart: single-task networks vs the MTL baseline on the embedded synthetic scenes.

Five tasks (semseg, depth, normals, edge, scene) on 64x64 synthetic images, the tiny CPU
backbone with light conv heads, and a two-setting slice of the survey grid (Adam 2e-4 and
SGD 1e-2, poly, batch 16). Sized to finish in under 10 minutes on 2 CPU cores.
"""

SPEC = {
    "name": "quickstart",
    "description": __doc__.splitlines()[0],
    "dataset": {"name": "synthetic", "params": {"image_size": 64, "num_train": 1200, "num_val": 200, "num_test": 200}},
    "tasks": ["semseg", "depth", "normals", "edge", "scene"],
    "backbone": "tiny_cnn",
    "head": "conv",
    "experiments": [{"name": "mtl_baseline", "architecture": "mtl_baseline", "balancer": "fixed"}],
    "search": {"batch_sizes": [16], "schedulers": ["poly"], "lrs": [2e-4, 1e-2]},
    "train": {"epochs": 6, "seeds": [0]},
}

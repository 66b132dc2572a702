"""The IAL study (Impartial Auxiliary Learning; seeds/002_...): Table I's methods over 5 seeds.

Table I compares, on the MTL baseline (dilated ResNet-50 + DeepLab-like heads), the "Normal"
(multi-task) weighting methods - uniform, uncertainty, GradNorm, DWA, MGDA, PCGrad, RLW-Normal,
IMTL-L/-G/both, Auto-Lambda (all tasks primary), Miraliev et al., ATW, PUW - with the
"Auxiliary" methods, which train with one primary task: GCS, OL-AUX, Auto-Lambda and IAL, each
task primary in turn (the report composes their row from each task's metric in the experiment
where it was primary, as Table I does). Mean ± std over 5 seeds; the run also prints the
training-time table of Table II. ``ial_nyuv2`` needs NYUv2 in MTAN's layout (``--data-root``);
IAL's Cityscapes columns use part segmentation, which no loader here provides.
``ial_synthetic`` is the laptop twin: the same methods on the synthetic scenes (3 seeds).
"""
from search_spaces.quickstart import SPEC as QUICKSTART

NORMAL = [("uniform", "fixed", {}), ("uw", "uncertainty", {}), ("gradnorm", "gradnorm", {}), ("dwa", "dwa", {}),
          ("mgda", "mgda", {}), ("pcgrad", "pcgrad", {}), ("rlw_normal", "rlw", {}), ("imtl_l", "imtl", {"mode": "l"}),
          ("imtl_g", "imtl", {"mode": "g"}), ("imtl", "imtl", {}), ("auto_lambda_mtl", "auto_lambda", {}),
          ("miraliev", "miraliev", {}), ("atw", "atw", {}), ("puw", "puw", {})]
AUXILIARY = [("gcs", "gcs", {}), ("ol_aux", "ol_aux", {}), ("auto_lambda", "auto_lambda", {"mode": "auxiliary"}),
             ("ial", "ial", {})]


def experiments(tasks, normal=NORMAL, auxiliary=AUXILIARY) -> list:
    """Every Normal method once; every Auxiliary method once per primary task."""
    out = [{"name": name, "balancer": {"name": b, "params": p}} for name, b, p in normal]
    out += [{"name": f"{name}_{t}", "balancer": {"name": b, "params": p}, "primary_task": t}
            for name, b, p in auxiliary for t in tasks]
    return out


NYUV2_TASKS = ["depth", "semseg", "normals"]
NYUV2 = {
    "name": "ial_nyuv2", "description": "IAL Table I on NYUv2: every Normal and Auxiliary method, 5 seeds",
    "dataset": {"name": "nyuv2_mtan"}, "tasks": NYUV2_TASKS,
    "backbone": {"name": "resnet50", "params": {"dilated": True}}, "head": "aspp",
    "experiments": experiments(NYUV2_TASKS),
    "search": {"batch_sizes": [4], "optimizers": ["adam"], "lrs": [1e-4], "schedulers": ["step"]},
    "train": {"epochs": 200, "seeds": [0, 1, 2, 3, 4], "eval_batch_size": 8},
}

SYNTHETIC_TASKS = ["depth", "semseg", "normals"]
# IAL tunes Auto-Lambda's initial weights in {0.005, 0.01, 0.05, 0.1, 1.0} per setting. The twin's
# 4 epochs of SGD at 1e-2 need 1.0: at the code's 0.1 every loss is scaled by 0.1, i.e. the network
# trains at a tenth of the learning rate, and lambda's lr-scaled hypergradient cannot lift it in time
# (val Delta_m -33% in a first run of the twin).
TWIN_AUTO_LAMBDA = {"init_weight": 1.0}
SYNTHETIC_NORMAL = [(n, b, {**p, **TWIN_AUTO_LAMBDA} if b == "auto_lambda" else p) for n, b, p in NORMAL]
SYNTHETIC_AUXILIARY = [(n, b, {**p, **TWIN_AUTO_LAMBDA} if b == "auto_lambda" else p) for n, b, p in AUXILIARY]
SYNTHETIC = {
    **QUICKSTART, "name": "ial_synthetic",
    "description": "IAL Table I's methods on the synthetic scenes, each task primary in turn, 3 seeds",
    # 26 models x 3 seeds: 400 scenes and 4 epochs keep the whole twin to minutes on a laptop
    "dataset": {"name": "synthetic", "params": {"image_size": 64, "num_train": 400, "num_val": 200, "num_test": 200}},
    "tasks": SYNTHETIC_TASKS,
    "experiments": experiments(SYNTHETIC_TASKS, SYNTHETIC_NORMAL, SYNTHETIC_AUXILIARY),
    "search": {"batch_sizes": [16], "schedulers": ["poly"], "optimizers": ["sgd"], "lrs": [1e-2]},
    "train": {"epochs": 4, "seeds": [0, 1, 2]},
}


# IAL Table IV (noisy NYUv2): two pseudo-tasks added as auxiliary tasks. IAL predicts them with
# COCO and ImageNet-21K models, which cannot be downloaded here: the pseudo dataset makes them
# from the dataset's own labels instead (30% of the segmentation labels replaced by random
# classes; Auto-Lambda's per-image noise map) - same role, a controlled noise level.
NOISY = {"semseg_noisy": {"source": "semseg", "kind": "corrupt", "strength": 0.3},
         "noise": {"source": "depth", "kind": "noise"}}


def noisy(spec: dict, name: str, description: str) -> dict:
    return {**spec, "name": name, "description": description,
            "dataset": {**spec["dataset"], "name": "pseudo",
                        "params": {"base": {"name": spec["dataset"]["name"], "params": spec["dataset"].get("params", {})},
                                   "pseudo": NOISY}},
            "auxiliary_tasks": list(NOISY)}


NYUV2_NOISY = noisy(NYUV2, "ial_nyuv2_noisy", "IAL Table IV: NYUv2 with two noisy pseudo-tasks as auxiliary tasks")
SYNTHETIC_NOISY = noisy(SYNTHETIC, "ial_noisy_synthetic",
                        "IAL Table IV's setting on the synthetic scenes: two noisy pseudo-tasks as auxiliary tasks")

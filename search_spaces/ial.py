"""The IAL study (Li et al., "Unprejudiced Training Auxiliary Tasks Makes Primary Better"): its tables as presets, 5 seeds each.

Table I compares, on the MTL baseline (dilated ResNet-50 + DeepLab-like heads), the "Normal"
(multi-task) weighting methods - uniform, uncertainty, GradNorm, DWA, MGDA, PCGrad, RLW-Normal,
IMTL-L/-G/both, Auto-Lambda (all tasks primary), Miraliev et al., ATW, PUW - with the
"Auxiliary" methods, which train with one primary task: GCS, OL-AUX, Auto-Lambda and IAL, each
task primary in turn (the report composes their row from each task's metric in the experiment
where it was primary, as Table I does). Mean ± std over 5 seeds; the run also prints the
training-time table of Table II. Real-data presets need ``--data-root``:

    Table I, NYUv2        ial_nyuv2             NYUv2 in MTAN's layout
    Table I, Cityscapes   ial_cityscapes        Auto-Lambda's CityScapes (cityscapes_mtan, layout
                                                auto_lambda: disparity, 10-class parts, semseg)
    Table III             ial_pascal            PASCAL-Context, 5 tasks, ResNet-18
    Table IV              ial_nyuv2_noisy       Table I's NYUv2 study + two noisy pseudo-tasks
    Table V               ial_cityscapes_noisy  Cityscapes + two noisy pseudo-tasks, Auxiliary methods
    Table VI              ial_pascal_noisy      PASCAL-Context + two noisy pseudo-tasks, Table VI's methods
    Table VII             ial_cifar100          Multi-CIFAR100, 20 tasks, VGG-16 + a linear layer each

IAL makes its pseudo-tasks with pre-trained COCO and ImageNet models; these presets make noisy
ones from the dataset's own labels, and the pseudo dataset's ``folder`` kind reads such
pseudo-labels from files instead (see the Table V comment below). Deviations in optimisers and
schedules (the survey grid has no SGD 0.1 or 3e-5 and no cosine decay) are stated beside each
preset. ``ial_synthetic`` / ``ial_noisy_synthetic`` are the laptop twins of Tables I / IV: the
same methods on the synthetic scenes (3 seeds).
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


# IAL Table I, Cityscapes columns: Auto-Lambda's CityScapes (disparity, 10-class parts, 19-class semseg;
# cityscapes_mtan's auto_lambda layout). IAL: "for cityscapes, the learning rate is simply set to 3e-5 and the
# optimizer is SGD as Auto-lambda". Auto-Lambda's code trains the network with SGD at 0.1 (momentum 0.9, weight
# decay 1e-4, cosine decay, batch 4, 200 epochs, from scratch); 3e-5 is its Adam rate for lambda on CityScapes.
# IAL's single-task numbers equal the code's (disparity 0.84, parts 52.7, semseg 56.2), so the code's recipe is
# taken: SGD 0.1 (off the survey grid; the study accepts it) with poly decay in place of cosine.
# GradNorm: IAL uses eta (alpha) 0 on Cityscapes.
CITYSCAPES_TASKS = ["depth", "parts", "semseg"]
CITYSCAPES_NORMAL = [(n, b, {"alpha": 0.0} if b == "gradnorm" else p) for n, b, p in NORMAL]
CITYSCAPES = {
    "name": "ial_cityscapes",
    "description": "IAL Table I on Cityscapes (disparity, parts, semseg): every Normal and Auxiliary method, 5 seeds",
    "dataset": {"name": "cityscapes_mtan", "params": {"layout": "auto_lambda"}}, "tasks": CITYSCAPES_TASKS,
    "backbone": {"name": "resnet50", "params": {"dilated": True}}, "head": "aspp",
    "experiments": experiments(CITYSCAPES_TASKS, CITYSCAPES_NORMAL),
    "search": {"batch_sizes": [4], "optimizers": ["sgd"], "lrs": [0.1], "schedulers": ["poly"]},
    "train": {"epochs": 200, "seeds": [0, 1, 2, 3, 4], "eval_batch_size": 8},
}

# IAL Table III (PASCAL-Context, 5 tasks): "an Adam optimizer with initial 0.0001 learning rate to train a
# Resnet-18 with deeplab heads", 100 epochs; batch 12, "the best combination in most experiments" of IAL's grid
# (6 or 12); poly decay and a dilated ResNet-18 as the survey code's PASCAL config that IAL builds on. IAL trains
# its single-task networks 60 epochs, the multi-task ones 100 "with early-stop": here every model trains 100
# epochs and is tested after the last (no early stopping). Uniform is 1 per task (not the survey code's weights).
PASCAL_TASKS = ["semseg", "human_parts", "normals", "saliency", "edge"]
PASCAL = {
    "name": "ial_pascal",
    "description": "IAL Table III on PASCAL-Context (5 tasks): every Normal and Auxiliary method, 5 seeds",
    "dataset": {"name": "pascal_context"}, "tasks": PASCAL_TASKS,
    "backbone": {"name": "resnet18", "params": {"dilated": True}}, "head": "aspp",
    "experiments": experiments(PASCAL_TASKS),
    "search": {"batch_sizes": [12], "optimizers": ["adam"], "lrs": [1e-4], "schedulers": ["poly"]},
    "train": {"epochs": 100, "seeds": [0, 1, 2, 3, 4], "eval_batch_size": 12},
}


def with_pseudo(spec: dict, pseudo: dict) -> dict:
    """``spec`` (a ``noisy`` one) with the pseudo-tasks ``pseudo`` as its auxiliary tasks instead."""
    return {**spec, "dataset": {**spec["dataset"], "params": {**spec["dataset"]["params"], "pseudo": pseudo}},
            "auxiliary_tasks": list(pseudo)}


# IAL Table V (noisy Cityscapes): the Auxiliary setting only, with Table IV's noisy pseudo-tasks. With IAL's own
# pseudo-labels (a COCO model's 80-class maps, an ImageNet model's classes) as .npy files, one per sample
# (trainables/datasets/pseudo.py's folder layout: <path>/train/<i>.npy and <path>/val/<i>.npy here):
#   with_pseudo(CITYSCAPES_NOISY, {
#       "coco": {"kind": "folder", "path": "/data/pseudo/coco", "type": "semseg", "params": {"num_classes": 80}},
#       "imagenet": {"kind": "folder", "path": "/data/pseudo/imagenet", "type": "scene",
#                    "params": {"num_classes": 1000}}})
CITYSCAPES_NOISY = noisy({**CITYSCAPES, "experiments": experiments(CITYSCAPES_TASKS, normal=[])},
                         "ial_cityscapes_noisy",
                         "IAL Table V: Cityscapes with two noisy pseudo-tasks; GCS, OL-AUX, Auto-Lambda and IAL")

# IAL Table VI (noisy PASCAL-Context): Table VI's methods. PASCAL has no depth, so the noise task copies the
# normals' shape (N(0, 1) vectors; the normals' L1 takes any target, the saliency and edge BCEs would not).
TABLE_VI_NORMAL = [m for m in NORMAL if m[0] in ("uniform", "uw", "gradnorm", "imtl")]
PASCAL_PSEUDO = {"semseg_noisy": dict(NOISY["semseg_noisy"]), "noise": {"source": "normals", "kind": "noise"}}
PASCAL_NOISY = with_pseudo(
    noisy({**PASCAL, "experiments": experiments(PASCAL_TASKS, TABLE_VI_NORMAL)}, "ial_pascal_noisy",
          "IAL Table VI: PASCAL-Context with two noisy pseudo-tasks; Table VI's methods, 5 seeds"), PASCAL_PSEUDO)

# IAL Table VII (Multi-CIFAR100, 20 five-way tasks): VGG-16 with one linear layer per task. Auto-Lambda's CIFAR
# code (trainer_cifar.py): SGD 0.1, momentum 0.9, weight decay 5e-4, cosine decay, 200 epochs, 32 images of every
# task per step. Here SGD 0.1 with poly decay in place of cosine; a batch of 640 = 20 x 32, since a multi_cifar100 batch
# mixes the tasks (each image labels one).
CIFAR_TASKS = [f"task_{k:02d}" for k in range(20)]
TABLE_VII_NORMAL = [m for m in NORMAL if m[0] in ("uniform", "uw", "auto_lambda_mtl")]
CIFAR100 = {
    "name": "ial_cifar100",
    "description": "IAL Table VII on Multi-CIFAR100 (20 tasks, VGG-16): Table VII's methods, each task primary in turn",
    "dataset": {"name": "multi_cifar100"}, "tasks": CIFAR_TASKS, "backbone": "vgg16", "head": "linear",
    "experiments": experiments(CIFAR_TASKS, TABLE_VII_NORMAL),
    "search": {"batch_sizes": [640], "optimizers": ["sgd"], "lrs": [0.1], "schedulers": ["poly"]},
    "train": {"epochs": 200, "seeds": [0, 1, 2, 3, 4], "weight_decay": 5e-4, "eval_batch_size": 640},
}

"""The MGM study (Bao, Hebert & Wang, "Generative Modeling for Multi-task Visual Learning"):
Tables 2-4 - a generator trained jointly with the multi-task network (``mgm`` regulariser).

Every preset is one data setting: a share of the training images keeps its dense labels, the rest
only the image-level scene label (``labels: {setting: full, unlabelled_fraction: 1 - share,
unlabelled: drop}`` - the dropped images leave the main loader, as in the paper where ST and MT see
the labelled share only; MGM_r reads them back as its weakly labelled real images). Rows:
    ST     the single-task networks (the study's baselines, trained on the same labels)
    MT     the MTL baseline (shared ResNet-18 encoder, one decoder per task, fixed weights)
    MGM    MT + the ``mgm`` regulariser (SAGAN + refinement + SimCLR, joint training)
    MGM_r  MGM with weakly labelled real images instead of synthesized ones (the upper bound)
Table 3 adds MGM/g (no synthesized images) and MGM/j (generator not trained jointly); Table 4 (50%)
MGM/self, MGM/refine and MGM_recon. Mean +- std over 5 seeds. The paper's optimiser: Adam, lr
1e-3 for the multi-task, self-supervision and refinement networks, 1e-4 / 4e-4 for G / D, batch 32;
its number of epochs is not stated (100 here). Encoder ResNet-18 with Taskonomy's transposed-
convolution decoders (``taskonomy_fcn`` head).

    mgm_nyuv2_{100,50,25,10}       Table 2 / 3 (and Table 7's 10%) on NYUv2 in the MGM code's layout
                                   (``mgm_folder``, 1,049 / 200 / 200 images, 27 scene types)
    mgm_taskonomy_{100,50,25}      Table 2 / 3 on Tiny-Taskonomy (its scene label)
    mgm_nyuv2_ablation             Table 4 (50%)
    mgm_synthetic                  a laptop twin of Table 2 at 50%: ST, MT, MGM on the synthetic
                                   scenes at 64 x 64, 3 seeds

Tiny-Taskonomy's columns in the paper are mean test losses; the tables here print each task's
primary metric (the test losses are in the results' ``test/<task>/loss`` columns).
"""

MGM_LAPTOP = {"z_dim": 64, "g_width": 8, "d_width": 8, "r_width": 8}


def mgm(name: str, **params) -> dict:
    return {"name": name, "architecture": "mtl_baseline", "balancer": "fixed",
            "regularisers": [{"name": "mgm", "params": params}]}


MT = {"name": "mt", "architecture": "mtl_baseline", "balancer": "fixed"}
TABLE_2 = [MT, mgm("mgm"), mgm("mgm_r", weak_source="real")]
TABLE_3 = [mgm("mgm_g", generate=False), mgm("mgm_j", joint=False)]
TABLE_4 = [mgm("mgm"), mgm("mgm_self", self_supervision="none"), mgm("mgm_refine", refine=False),
           mgm("mgm_recon", self_supervision="reconstruction")]


def labels(share: int) -> dict:
    """``share`` % of the training images keep their dense labels; the rest only the scene label."""
    if share == 100:
        return {"setting": "full", "seed": 0}
    return {"setting": "full", "seed": 0, "unlabelled_fraction": round(1 - share / 100, 4), "unlabelled": "drop"}


def preset(name: str, dataset: dict, tasks: list, experiments: list, share: int, doc: str) -> dict:
    return {
        "name": name, "description": doc,
        "dataset": {**dataset, "labels": labels(share)},
        "tasks": tasks, "delta_baseline": "single_task",
        "backbone": "resnet18", "head": "taskonomy_fcn",
        "experiments": experiments,
        "search": {"batch_sizes": [32], "optimizers": ["adam"], "lrs": [1e-3], "schedulers": ["step"]},
        "train": {"epochs": 100, "seeds": [0, 1, 2, 3, 4], "eval_batch_size": 32},
    }


NYU = {"name": "mgm_folder", "params": {"image_size": [128, 128], "val_size": 200, "test_size": 200, "num_scenes": 27}}
# MGM keeps Tiny-Taskonomy's 35 most frequent scene categories (>= 1,000 images each); their
# Places365 indices are not published, so the preset keeps all 365 - give the loader's
# ``scene_classes`` (a list of Places365 indices) to keep MGM's 35. The generator's classes follow.
TASKONOMY = {"name": "taskonomy", "params": {"image_size": [128, 128]}}
DENSE = ["semseg", "depth", "normals"]

PRESETS = {}
for share in (100, 50, 25, 10):
    exps = [e for e in TABLE_2 + TABLE_3 if share < 100 or e["name"] != "mgm_r"]  # 100%: no weak real image
    PRESETS[f"mgm_nyuv2_{share}"] = preset(f"mgm_nyuv2_{share}", NYU, DENSE, exps, share,
                                           f"MGM Tables 2-3 on NYUv2, {share}% of the images densely labelled")
for share in (100, 50, 25):
    exps = [e for e in TABLE_2 + TABLE_3 if share < 100 or e["name"] != "mgm_r"]
    PRESETS[f"mgm_taskonomy_{share}"] = preset(f"mgm_taskonomy_{share}", TASKONOMY, DENSE, exps, share,
                                               f"MGM Tables 2-3 on Tiny-Taskonomy, {share}% densely labelled")
PRESETS["mgm_nyuv2_ablation"] = preset("mgm_nyuv2_ablation", NYU, DENSE, TABLE_4, 50,
                                       "MGM Table 4: ablations on NYUv2 at 50%")

SYNTHETIC = {
    **preset("mgm_synthetic",
             {"name": "synthetic", "params": {"image_size": 64, "num_train": 600, "num_val": 200, "num_test": 200}},
             DENSE, [MT, mgm("mgm", **MGM_LAPTOP)], 50,
             "MGM Table 2 at 50% on the synthetic scenes (ST, MT, MGM), on a laptop"),
    "backbone": "tiny_cnn", "head": "conv",
    "search": {"batch_sizes": [16], "optimizers": ["adam"], "lrs": [1e-3], "schedulers": ["poly"]},
    "train": {"epochs": 8, "seeds": [0, 1, 2]},
}

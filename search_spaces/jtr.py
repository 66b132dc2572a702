"""The JTR study (Nishi et al., CVPR 2024): partially labelled MTL, Tables 1-5 and 9.

Every preset trains the same methods on one label setting, with Delta% against supervised MTL on
the same labels (``delta_baseline: supervised_mtl``, JTR's Delta; the single-task networks are
trained too - MuST's teachers). Methods, each the MTL baseline with fixed weights plus one
regulariser: consistency regularisation (JTR Eq. 2), direct and perceptual cross-task maps and
MTPSL (Li et al., CVPR 2022), JTR (Eq. 3-6) and MuST (Table 9). Architecture: the SegNet of MTAN /
MTPSL / JTR (``segnet`` backbone and head). Optimiser as in MTPSL / JTR: Adam 1e-4, step decay;
batch 4 on NYU-v2 (MTAN's preprocessed 288 x 384 split), 16 on Cityscapes (MTAN's 128 x 256,
7 classes), 8 on Taskonomy; 300 epochs (Taskonomy 20). Needs ``--data-root``.

    jtr_nyuv2_{onelabel,randomlabels}       Table 1 (NYU-v2: semseg, depth, normals)
    jtr_cityscapes_onelabel                 Table 2 (Cityscapes: semseg, depth)
    jtr_taskonomy_{onelabel,randomlabels,halflabels}   Table 3 (seven Taskonomy tasks)
    jtr_nyuv2_randomlabels_unlabelled{30,50,70}        Table 4 (x% of images without any label)
    jtr_cityscapes_onelabel_unlabelled{30,50,70}       Table 5
"""

METHODS = ("consistency", "direct_map", "perceptual_map", "mtpsl", "jtr", "must")


def methods(names=METHODS, params=None) -> list:
    """One experiment per method: the MTL baseline with fixed weights plus that regulariser."""
    params = params or {}
    return [{"name": m, "architecture": "mtl_baseline", "balancer": "fixed",
             "regularisers": [{"name": m, "params": params.get(m, {})}]} for m in names]


# laptop sizes for the twin: mapping networks and JTR's auto-encoder three levels deep and narrow
# (their SegNet defaults have 25-29 M parameters each); MTPSL's mapped feature must match the tiny
# backbone's 96 channels at stride 8
LAPTOP = {"mtpsl": {"channels": [32, 64, 96], "convs": [1, 1, 1]},
          "direct_map": {"channels": [16, 32, 64], "convs": [1, 1, 1]},
          "perceptual_map": {"channels": [16, 32, 64], "convs": [1, 1, 1]},
          "jtr": {"widths": [16, 32, 64]}}


def preset(name: str, data: tuple, setting: str, epochs: int = 300, unlabelled: float = 0.0, doc: str = "") -> dict:
    """A JTR table's study: ``data`` = (dataset, tasks, batch size)."""
    dataset, tasks, batch = data
    labels = {"setting": setting, "seed": 0, **({"unlabelled_fraction": unlabelled} if unlabelled else {})}
    return {
        "name": name, "description": doc,
        "dataset": {"name": dataset, "labels": labels},
        "tasks": tasks, "delta_baseline": "supervised_mtl",
        "backbone": "segnet", "head": "segnet",
        "experiments": methods(),
        "search": {"batch_sizes": [batch], "optimizers": ["adam"], "lrs": [1e-4], "schedulers": ["step"]},
        "train": {"epochs": epochs, "seeds": [0], "eval_batch_size": 8},
    }


NYU = ("nyuv2_mtan", ["semseg", "depth", "normals"], 4)
CITYSCAPES = ("cityscapes_mtan", ["semseg", "depth"], 16)
TASKONOMY = ("taskonomy", ["semseg", "depth", "normals", "edge_occlusion", "reshading", "keypoints2d",
                           "edge_texture"], 8)

PRESETS = {}
for setting in ("onelabel", "randomlabels"):
    PRESETS[f"jtr_nyuv2_{setting}"] = preset(f"jtr_nyuv2_{setting}", NYU, setting,
                                             doc=f"JTR Table 1: partially labelled NYU-v2 ({setting})")
PRESETS["jtr_cityscapes_onelabel"] = preset("jtr_cityscapes_onelabel", CITYSCAPES, "onelabel",
                                            doc="JTR Table 2: partially labelled Cityscapes (onelabel)")
for setting in ("onelabel", "randomlabels", "halflabels"):
    PRESETS[f"jtr_taskonomy_{setting}"] = preset(f"jtr_taskonomy_{setting}", TASKONOMY, setting, epochs=20,
                                                 doc=f"JTR Table 3: partially labelled Taskonomy ({setting})")
for percent in (30, 50, 70):
    PRESETS[f"jtr_nyuv2_randomlabels_unlabelled{percent}"] = preset(
        f"jtr_nyuv2_randomlabels_unlabelled{percent}", NYU, "randomlabels", unlabelled=percent / 100,
        doc=f"JTR Table 4: NYU-v2 randomlabels with {percent}% of the images unlabelled")
    PRESETS[f"jtr_cityscapes_onelabel_unlabelled{percent}"] = preset(
        f"jtr_cityscapes_onelabel_unlabelled{percent}", CITYSCAPES, "onelabel", unlabelled=percent / 100,
        doc=f"JTR Table 5: Cityscapes onelabel with {percent}% of the images unlabelled")

# the synthetic twin of Table 1 (randomlabels): the same methods on the synthetic scenes
SYNTHETIC = {
    **preset("jtr_synthetic", ("synthetic", ["semseg", "depth", "normals"], 16), "randomlabels", epochs=6,
             doc="JTR Table 1's methods on the synthetic scenes (randomlabels), on a laptop"),
    "dataset": {"name": "synthetic", "params": {"image_size": 64, "num_train": 600, "num_val": 200, "num_test": 200},
                "labels": {"setting": "randomlabels", "seed": 0}},
    "backbone": "tiny_cnn", "head": "conv", "experiments": methods(params=LAPTOP),
    "search": {"batch_sizes": [16], "schedulers": ["poly"], "optimizers": ["sgd"], "lrs": [1e-2]},
}

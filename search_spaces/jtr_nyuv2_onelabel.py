"""JTR / MTPSL "onelabel" NYUv2: each training image keeps exactly one of three task labels.

JTR (seeds/001_..., Sec. 4.1, Table 1): MTAN's preprocessed NYUv2 (288 x 384; semseg 13
classes, depth, normals), supervised MTL with missing labels (the MTL baseline with fixed
weights; a sample contributes only to the losses of the labels it keeps). The papers use
SegNet (not registered here); the dilated ResNet-50 + ASPP pair stands in for it (JTR's
Table 15 runs ResNet-50 too). MTPSL / JTR's optimiser: Adam 1e-4, batch 4.
"""

SPEC = {
    "name": "jtr_nyuv2_onelabel",
    "description": __doc__.splitlines()[0],
    "dataset": {"name": "nyuv2_mtan", "labels": {"setting": "onelabel", "seed": 0}},
    "tasks": ["semseg", "depth", "normals"],
    "backbone": {"name": "resnet50", "params": {"dilated": True}},
    "head": "aspp",
    "experiments": [{"name": "mtl_baseline", "architecture": "mtl_baseline", "balancer": "fixed"}],
    "search": {"batch_sizes": [4], "optimizers": ["adam"], "lrs": [1e-4], "schedulers": ["step"]},
    "train": {"epochs": 300, "seeds": [0], "eval_batch_size": 8},
}

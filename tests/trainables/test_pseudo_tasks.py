"""Pseudo-tasks (IAL Tables IV-VI, Auto-Lambda's noise task): noisy ones made from the dataset's own labels,
and precomputed class labels read from a folder keyed by the wrapped dataset's sample ids."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

import trainables  # noqa: F401
from trainables.build import build_dataset, build_tasks, describe_dataset
from trainables.config import TrialConfig
from trainables.datasets.readers import DataCheckError
from trainables.plugins import Plugin
from trainables.registry import DATASETS
from trainables.session import Session

BASE = {"name": "synthetic", "params": {"image_size": 32, "num_train": 16, "num_val": 8, "num_test": 8}}
PSEUDO = Plugin("pseudo", {"base": BASE, "pseudo": {
    "semseg_noisy": {"source": "semseg", "kind": "corrupt", "strength": 0.3},
    "depth_blur": {"source": "depth", "kind": "blur", "factor": 4},
    "noise": {"source": "depth", "kind": "noise"}}})


def test_pseudo_tasks_take_their_source_type_and_are_listed():
    info = describe_dataset(PSEUDO)
    assert info.tasks["semseg_noisy"] == info.tasks["semseg"] and info.tasks["noise"] == info.tasks["depth"]
    tasks = build_tasks(PSEUDO, ["semseg", "semseg_noisy", "noise"])
    assert tasks["semseg_noisy"].out_channels == tasks["semseg"].out_channels
    with pytest.raises(ValueError, match="pseudo.bad.source: 'cars' is not a task of 'synthetic'"):
        describe_dataset(Plugin("pseudo", {"base": BASE, "pseudo": {"bad": {"source": "cars"}}}))
    with pytest.raises(ValueError, match="pseudo.x.kind: 'fog' is not one of corrupt, blur, noise"):
        describe_dataset(Plugin("pseudo", {"base": BASE, "pseudo": {"x": {"source": "depth", "kind": "fog"}}}))


def test_pseudo_labels_are_fixed_per_item_and_as_noisy_as_asked(tmp_path):
    ds = build_dataset(PSEUDO, str(tmp_path), "train", ["semseg", "depth", "semseg_noisy", "depth_blur", "noise"])
    a, b = ds[3], ds[3]
    for t in ("semseg_noisy", "depth_blur", "noise"):
        assert torch.equal(a["targets"][t], b["targets"][t]), t  # the same every epoch
        assert bool(a["mask"][t]) == bool(a["mask"]["semseg" if t == "semseg_noisy" else "depth"])
    assert not torch.equal(ds[4]["targets"]["noise"], a["targets"]["noise"])  # a different map per image
    seg, noisy = a["targets"]["semseg"], a["targets"]["semseg_noisy"]
    changed = float((seg != noisy).float().mean())
    assert 0.3 * (1 - 1 / 7) - 0.1 < changed < 0.3 + 0.05  # flipped with p 0.3; a random class may repeat
    depth, blurred = a["targets"]["depth"], a["targets"]["depth_blur"]
    pooled = torch.nn.functional.avg_pool2d(depth[None], 4)[0]
    expected = torch.nn.functional.interpolate(pooled[None], size=depth.shape[-2:], mode="bilinear",
                                               align_corners=False)[0]
    torch.testing.assert_close(blurred, expected)
    # the noise task does not depend on the image: same map whatever the depth
    assert a["targets"]["noise"].shape == depth.shape and abs(float(a["targets"]["noise"].std()) - 1) < 0.2


def test_pseudo_tasks_train_as_auxiliary_tasks(tmp_path):
    from trainables.train_loop import fit

    cfg = TrialConfig(experiment="p", tasks=("semseg", "depth", "semseg_noisy", "noise"),
                      auxiliary_tasks=("semseg_noisy", "noise"), dataset=PSEUDO, data_root=str(tmp_path),
                      epochs=1, max_steps_per_epoch=2, batch_size=4, eval_batch_size=8, lr=1e-3,
                      baseline_val={"semseg/miou": 50.0, "depth/rmse": 1.0}, baseline_test={"semseg/miou": 50.0, "depth/rmse": 1.0})
    last = fit(cfg, Session())
    assert "train/noise/loss" in last and "val/semseg_noisy/miou" in last
    expected = 50.0 * ((last["val/semseg/miou"] - 50.0) / 50.0 - (last["val/depth/rmse"] - 1.0))
    assert last["val_delta_m"] == pytest.approx(expected)  # the pseudo-tasks are not scored


def test_smoke_shrinks_the_wrapped_dataset():
    from orchestrator.plan import smoke
    from orchestrator.spec import load_spec
    from search_spaces import preset

    spec = smoke(load_spec(preset("ial_noisy_synthetic")))
    base = dict(spec.dataset.params)["base"]
    assert base["name"] == "synthetic" and base["params"]["num_train"] == 256 and base["params"]["image_size"] == 32
    assert set(dict(spec.dataset.params)["pseudo"]) == {"semseg_noisy", "noise"}


# ---------------------------------------------------------------- precomputed pseudo-labels (kind folder)
H, W = 6, 8
MTAN_BASE = {"name": "nyuv2_mtan", "params": {"val_fraction": 0.4, "seed": 1}}
FOLDERS = {"coco": {"kind": "folder", "path": "", "type": "semseg", "params": {"num_classes": 4}},
           "imagenet": {"kind": "folder", "path": "", "type": "scene", "params": {"num_classes": 5}}}


def write_mtan(root, n_train: int = 5, n_val: int = 2) -> None:
    """A tiny nyuv2_mtan tree (image, label, depth, normal .npy per sample)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            normals = np.zeros((H, W, 3), np.float32)
            normals[..., 2] = 1
            arrays = {"image": rng.random((H, W, 3)), "label": rng.integers(-1, 13, (H, W)).astype(np.float32),
                      "depth": rng.uniform(0.5, 5, (H, W, 1)).astype(np.float32), "normal": normals}
            for folder, a in arrays.items():
                os.makedirs(os.path.join(root, split, folder), exist_ok=True)
                np.save(os.path.join(root, split, folder, f"{i}.npy"), a)


def coco_map(split: str, i: int) -> np.ndarray:
    """The hand-made 'COCO' map of MTAN sample i of ``split``: class (i + 2 * (split == val)) % 4, one ignored pixel."""
    a = np.full((H, W), (i + 2 * (split == "val")) % 4, np.uint8)
    a[0, 0] = 255
    return a


def imagenet_class(split: str, i: int) -> int:
    return (2 * i + (split == "val")) % 5


def write_labels(root, n_train: int = 5, n_val: int = 2) -> dict:
    """Pseudo-label folders keyed by MTAN's sample numbers; returns the dataset params using them."""
    for split, n in (("train", n_train), ("val", n_val)):
        for folder in ("coco", "imagenet"):
            os.makedirs(root / folder / split, exist_ok=True)
        for i in range(n):
            np.save(root / "coco" / split / f"{i}.npy", coco_map(split, i))
            np.save(root / "imagenet" / split / f"{i}.npy", np.int64(imagenet_class(split, i)))
    pseudo = {name: {**spec, "path": str(root / name)} for name, spec in FOLDERS.items()}
    return {"base": MTAN_BASE, "pseudo": pseudo}


@pytest.fixture
def mtan_with_labels(tmp_path):
    write_mtan(tmp_path / "data")
    return str(tmp_path / "data"), write_labels(tmp_path / "labels")


def test_folder_pseudo_labels_are_keyed_by_the_base_datasets_sample_ids(mtan_with_labels):
    root, params = mtan_with_labels
    info = describe_dataset(Plugin("pseudo", params))
    assert info.tasks["coco"] == Plugin("semseg", {"num_classes": 4})
    assert info.tasks["imagenet"] == Plugin("scene", {"num_classes": 5})
    assert DATASETS.get("pseudo").prepare(root, **params) is None  # every file checked, nothing wrong
    tasks = ["semseg", "coco", "imagenet"]
    for split, folder in (("train", "train"), ("val", "train"), ("test", "val")):
        ds = build_dataset(Plugin("pseudo", params), root, split, tasks)
        if split == "val":  # the held-out samples are not the first ones: the files follow the sample ids
            assert ds.source_indices != list(range(len(ds)))
        for k in range(len(ds)):
            item, j = ds[k], ds.source_indices[k]
            assert item["targets"]["coco"].dtype == torch.long
            assert torch.equal(item["targets"]["coco"], torch.from_numpy(coco_map(folder, j).astype(np.int64)))
            assert int(item["targets"]["imagenet"]) == imagenet_class(folder, j)
            assert bool(item["mask"]["coco"]) and bool(item["mask"]["imagenet"])
    # a dense folder label cannot follow random crops and flips: the base is then not augmented
    assert not build_dataset(Plugin("pseudo", params), root, "train", tasks, augment=True).base.augment
    assert build_dataset(Plugin("pseudo", params), root, "train", ["semseg", "imagenet"], augment=True).base.augment
    # the pixel the file ignores (255) is ignored by the task's loss
    tasks_ = build_tasks(Plugin("pseudo", params), ["coco"])
    assert bool(tasks_["coco"].ignored(ds[0]["targets"]["coco"])[0, 0])


@pytest.mark.parametrize("damage, message", [
    (lambda r: shutil.rmtree(r / "coco" / "val"),
     r"coco/val: missing folder \(pseudo-labels of pseudo-task 'coco' for the test split, one <sample id>.npy per "
     r"sample; write them there or fix pseudo.coco.path\)$"),
    (lambda r: os.remove(r / "imagenet" / "train" / "3.npy"),
     r"imagenet/train/3.npy: missing file \(pseudo-label of pseudo-task 'imagenet'; write it there or fix "
     r"pseudo.imagenet.path\)$"),
    (lambda r: np.save(r / "coco" / "train" / "2.npy", np.zeros((H - 1, W), np.uint8)),
     r"coco/train/2.npy: shape \(6, 8\) \(a map the size of its served image\) expected for pseudo-task 'coco', "
     r"found \(5, 8\); save the labels in that shape$"),
    (lambda r: np.save(r / "coco" / "train" / "2.npy", np.zeros((H, W), np.float32)),
     r"coco/train/2.npy: integer class labels expected for pseudo-task 'coco', found float32; save them with an "
     r"integer dtype, e.g. numpy.int64$"),
    (lambda r: np.save(r / "imagenet" / "val" / "1.npy", np.array([1])),
     r"imagenet/val/1.npy: shape \(\) \(one class index per image, a 0-d array\) expected for pseudo-task "
     r"'imagenet', found \(1,\)"),
    (lambda r: np.save(r / "coco" / "val" / "0.npy", np.full((H, W), 4, np.int64)),
     r"coco/val/0.npy: values must be classes 0..3 or 255 \(ignored\); found e.g. .*4"),
    (lambda r: (r / "imagenet" / "train" / "0.npy").write_text("not an array"),
     r"imagenet/train/0.npy: not a readable .npy array"),
])
def test_folder_files_are_checked_before_training(tmp_path, damage, message):
    write_mtan(tmp_path / "data")
    params = write_labels(tmp_path / "labels")
    damage(tmp_path / "labels")
    with pytest.raises(DataCheckError, match=message):
        DATASETS.get("pseudo").prepare(str(tmp_path / "data"), **params)


def test_folder_values_are_checked_on_every_read(mtan_with_labels):
    root, params = mtan_with_labels
    ds = build_dataset(Plugin("pseudo", params), root, "train", ["semseg", "coco"])
    path = os.path.join(params["pseudo"]["coco"]["path"], "train", f"{ds.source_indices[1]}.npy")
    np.save(path, np.full((H, W), 9, np.int64))  # a middle file: prepare decodes only the first and the last
    DATASETS.get("pseudo").prepare(root, **params)
    with pytest.raises(DataCheckError, match=rf"{path}: values must be classes 0..3 or 255"):
        ds[1]


@pytest.mark.parametrize("spec, message", [
    ({"kind": "folder", "path": "/x", "type": "depth"},
     r"pseudo.p.type: 'depth' does not take class labels; .*semseg for maps, scene for image labels"),
    ({"kind": "folder", "path": "/x", "type": "segmentation", "params": {"num_classes": 3}},
     r"pseudo.p.type: 'segmentation' is not a task type; valid: .*semseg"),
    ({"kind": "folder", "path": "/x", "type": "semseg"}, r"pseudo.p.params: .*num_classes"),
    ({"kind": "folder", "type": "semseg", "params": {"num_classes": 3}},
     r"pseudo.p.path: give the folder holding <split folder>/<sample id>.npy, got None"),
    ({"kind": "folder", "path": "/x", "type": "scene", "params": {"num_classes": 3}, "source": "semseg"},
     r"pseudo.p: unknown key\(s\) \['source'\]; accepted with kind folder: kind, path, type, params"),
    ({"source": "semseg", "path": "/x"}, r"pseudo.p: unknown key\(s\) \['path'\]; .*\(kind folder: kind, path, type"),
])
def test_folder_spec_errors_name_the_field(spec, message):
    with pytest.raises(ValueError, match=message):
        describe_dataset(Plugin("pseudo", {"base": BASE, "pseudo": {"p": spec}}))


def test_folder_pseudo_labels_of_the_synthetic_set_are_keyed_by_split_and_index(tmp_path):
    labels = tmp_path / "labels"
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        os.makedirs(labels / split)
        for i in range(n):
            np.save(labels / split / f"{i}.npy", np.int64((i + len(split)) % 3))
    params = {"base": BASE, "pseudo": {"p": {"kind": "folder", "path": str(labels), "type": "scene",
                                             "params": {"num_classes": 3}}}}
    DATASETS.get("pseudo").prepare(str(tmp_path / "cache"), **params)
    for split in ("train", "test"):
        ds = build_dataset(Plugin("pseudo", params), str(tmp_path / "cache"), split, ["semseg", "p"])
        assert [int(ds[i]["targets"]["p"]) for i in (0, 5)] == [(0 + len(split)) % 3, (5 + len(split)) % 3]

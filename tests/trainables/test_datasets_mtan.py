"""MTAN's preprocessed NYUv2 / Cityscapes (.npy) and Auto-Lambda's CityScapes layout, on fixture files the tests write."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import trainables  # noqa: F401  (registers the plug-ins)
from trainables.config import TrialConfig
from trainables.datasets.readers import DataCheckError
from trainables.plugins import Plugin
from trainables.registry import DATASETS
from trainables.session import Session
from trainables.train_loop import fit

# ---------------------------------------------------------------- fixture writers

def write_mtan(root, name: str, n_train: int = 5, n_val: int = 2, h: int = 12, w: int = 16) -> dict:
    """An MTAN .npy tree for ``name`` (nyuv2_mtan / cityscapes_mtan); returns (split, i) -> arrays."""
    rng = np.random.default_rng(1)
    written = {}
    label_folders = ["label"] if name == "nyuv2_mtan" else ["label_7", "label_19"]
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            image = rng.random((h, w, 3))
            arrays = {"image": image, "depth": rng.uniform(0, 5, (h, w, 1)).astype(np.float32)}
            arrays["depth"][0, 0] = 0
            for folder in label_folders:
                c = 13 if folder == "label" else int(folder.split("_")[1])
                label = rng.integers(-1, c, (h, w)).astype(np.float32)
                label[0, :2] = [-1, c - 1]
                arrays[folder] = label
            if name == "nyuv2_mtan":
                n_ = rng.normal(size=(h, w, 3))
                n_ /= np.linalg.norm(n_, axis=2, keepdims=True)
                n_[1, 1] = 0
                arrays["normal"] = n_.astype(np.float32)
            for folder, a in arrays.items():
                os.makedirs(os.path.join(root, split, folder), exist_ok=True)
                np.save(os.path.join(root, split, folder, f"{i}.npy"), a)
            written[(split, i)] = arrays
    return written


# Cityscapes-Panoptic-Parts uids (sid | iid (3) | pid (2)) and Auto-Lambda's part class of each, by hand:
# 1-2 and 4-5 digit uids carry no part; person / rider pids 1..4 -> 1..4; car / truck / bus pids 1..5
# -> 5..9; a void part (pid 0), person pid 5 and parts of other classes (sid 11) -> 0
PART_UIDS = [0, 23, 24, 26002, 2400101, 2400102, 2500103, 2500204, 2600301, 2700402, 2800503, 2600604, 2700705,
             2400100, 2400105, 1100105]
PART_CLASSES = [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0]


def write_auto_lambda(root, n_train: int = 3, n_val: int = 2, h: int = 8, w: int = 16, extra=None) -> dict:
    """Auto-Lambda's CityScapes tree (png images, label ids and disparities, int32 tif part uids);
    returns (split, i) -> arrays written."""
    rng = np.random.default_rng(3)
    written = {}
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            arrays = {"image": rng.integers(0, 256, (h, w, 3)).astype(np.uint8),
                      "seg": rng.integers(0, 34, (h, w)).astype(np.uint8),
                      "depth": rng.integers(0, 40000, (h, w)).astype(np.uint16),
                      "part_seg": rng.choice(PART_UIDS, (h, w)).astype(np.int32)}
            arrays.update((extra or {}).get((split, i), {}))
            for folder, a in arrays.items():
                os.makedirs(os.path.join(root, split, folder), exist_ok=True)
                ext = ".tif" if folder == "part_seg" else ".png"
                Image.fromarray(a).save(os.path.join(root, split, folder, f"{i}{ext}"))
            written[(split, i)] = arrays
    return written


# ---------------------------------------------------------------- MTAN .npy sets


def test_nyuv2_mtan_values_round_trip(tmp_path):
    written = write_mtan(tmp_path, "nyuv2_mtan")
    cls = DATASETS.get("nyuv2_mtan")
    info = cls.describe()
    assert info.input_size == (288, 384) and info.tasks["semseg"].params == {"num_classes": 13}
    assert set(info.tasks) == {"semseg", "depth", "normals"}
    ds = cls(str(tmp_path), "test", ["semseg", "depth", "normals"])
    assert len(ds) == 2
    item, a = ds[1], written[("val", 1)]
    seg = item["targets"]["semseg"]
    assert seg.dtype == torch.long and seg[0, :2].tolist() == [255, 12]
    expected = a["label"].astype(np.int64)
    expected[expected < 0] = 255
    assert torch.equal(seg, torch.from_numpy(expected))
    assert torch.equal(item["targets"]["depth"], torch.from_numpy(a["depth"]).permute(2, 0, 1))
    assert torch.allclose(item["targets"]["normals"], torch.from_numpy(a["normal"]).permute(2, 0, 1), atol=1e-6)
    # MTAN feeds the [0, 1] image un-normalised by default
    assert torch.allclose(item["image"], torch.from_numpy(a["image"].astype(np.float32)).permute(2, 0, 1))
    imagenet = cls(str(tmp_path), "test", ["depth"], normalize="imagenet")[1]["image"]
    assert torch.allclose(imagenet[0], (item["image"][0] - 0.485) / 0.229, atol=1e-5)
    train, val = cls(str(tmp_path), "train", ["depth"]), cls(str(tmp_path), "val", ["depth"])
    assert sorted(train.source_indices + val.source_indices) == list(range(5))
    assert cls.check(str(tmp_path))["splits"] == {"train": 4, "val": 1, "test": 2}


def test_nyuv2_mtan_augment_flip_and_scale(tmp_path):
    write_mtan(tmp_path, "nyuv2_mtan")
    cls = DATASETS.get("nyuv2_mtan")
    plain = cls(str(tmp_path), "test", ["depth", "normals"])[0]
    flips = cls(str(tmp_path), "test", ["depth", "normals"], augment=True, scales=[1.0])
    outcomes = set()
    for seed in range(10):
        torch.manual_seed(seed)
        item = flips[0]
        flipped = not torch.equal(item["image"], plain["image"])
        outcomes.add(flipped)
        if flipped:
            assert torch.equal(item["targets"]["depth"], plain["targets"]["depth"].flip(-1))
            assert torch.equal(item["targets"]["normals"][0], -plain["targets"]["normals"][0].flip(-1))
    assert outcomes == {True, False}
    zoom = cls(str(tmp_path), "test", ["depth"], augment=True, scales=[1.5], flip=False)
    torch.manual_seed(0)
    d = zoom[0]["targets"]["depth"]
    original = plain["targets"]["depth"]
    assert set((d[d > 0] * 1.5).round(decimals=3).tolist()) <= set(original[original > 0].round(decimals=3).tolist())


def test_cityscapes_mtan_label_folders_and_disparity_scaling(tmp_path):
    written = write_mtan(tmp_path, "cityscapes_mtan")
    cls = DATASETS.get("cityscapes_mtan")
    assert set(cls.describe().tasks) == {"semseg", "depth"}
    assert cls.describe().tasks["semseg"].params == {"num_classes": 7}
    assert cls.describe(num_classes=19).tasks["semseg"].params == {"num_classes": 19}
    with pytest.raises(ValueError, match="num_classes must be 7 or 19"):
        cls.describe(num_classes=13)
    for c in (7, 19):
        seg = cls(str(tmp_path), "test", ["semseg"], num_classes=c)[0]["targets"]["semseg"]
        assert seg[0, :2].tolist() == [255, c - 1]
        expected = written[("val", 0)][f"label_{c}"].astype(np.int64)
        expected[expected < 0] = 255
        assert torch.equal(seg, torch.from_numpy(expected))
    plain = cls(str(tmp_path), "test", ["depth"])[0]["targets"]["depth"]
    torch.manual_seed(0)
    zoomed = cls(str(tmp_path), "test", ["depth"], augment=True, scales=[1.5], flip=False)[0]["targets"]["depth"]
    # disparity grows when the scene comes closer
    assert set((zoomed[zoomed > 0] / 1.5).round(decimals=3).tolist()) <= set(plain[plain > 0].round(decimals=3).tolist())


def test_mtan_missing_sample_is_named(tmp_path):
    write_mtan(tmp_path, "nyuv2_mtan")
    os.remove(tmp_path / "train" / "normal" / "3.npy")
    with pytest.raises(DataCheckError, match=r"normal.3\.npy: missing file"):
        DATASETS.get("nyuv2_mtan").prepare(str(tmp_path))
    write_mtan(tmp_path / "b", "nyuv2_mtan")
    os.remove(tmp_path / "b" / "val" / "image" / "0.npy")
    with pytest.raises(DataCheckError, match=r"image.0\.npy: missing file"):
        DATASETS.get("nyuv2_mtan").prepare(str(tmp_path / "b"))


def test_cityscapes_mtan_auto_lambda_layout_values(tmp_path):
    seg = np.zeros((8, 16), np.uint8)
    seg[0, :8] = [7, 8, 26, 33, 0, 9, 29, 24]
    depth = np.zeros((8, 16), np.uint16)
    depth[0, :5] = [0, 1, 257, 1025, 65535]
    parts = np.zeros((8, 16), np.int32)
    parts[0] = PART_UIDS
    written = write_auto_lambda(tmp_path, extra={("val", 1): {"seg": seg, "depth": depth, "part_seg": parts}})
    cls = DATASETS.get("cityscapes_mtan")
    info = cls.describe(layout="auto_lambda")
    assert info.tasks == {"semseg": Plugin("semseg", {"num_classes": 19}),
                          "depth": Plugin("depth", {"disparity": True}),
                          "parts": Plugin("semseg", {"num_classes": 10})}
    assert info.input_size == (256, 512)
    item = cls(str(tmp_path), "test", ["semseg", "depth", "parts"], layout="auto_lambda")[1]
    targets = item["targets"]
    assert targets["semseg"][0, :8].tolist() == [0, 1, 13, 18, 255, 255, 255, 11]  # trainIds, 255 = ignore
    # (p - 1) / 256 px at 2048 wide, / 4 at 512 wide; p = 0 invalid and p = 1 (disparity 0) too
    assert targets["depth"].shape == (1, 8, 16)
    assert targets["depth"][0, 0, :5].tolist() == pytest.approx([0.0, 0.0, 0.25, 1.0, 65534 / 1024])
    assert targets["parts"].dtype == torch.long and targets["parts"][0].tolist() == PART_CLASSES
    assert not bool((targets["parts"] == 255).any())  # the part task has no ignore label
    image = written[("val", 1)]["image"]
    assert torch.allclose(item["image"], torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1))
    # part files are read only when the task is asked for
    os.remove(tmp_path / "val" / "part_seg" / "0.tif")
    served = cls(str(tmp_path), "test", ["semseg", "depth"], layout="auto_lambda")[0]["targets"]
    assert set(served) == {"semseg", "depth"}


def test_cityscapes_mtan_auto_lambda_checks_and_errors(tmp_path):
    write_auto_lambda(tmp_path)
    cls = DATASETS.get("cityscapes_mtan")
    summary = cls.check(str(tmp_path), layout="auto_lambda")
    assert summary["splits"] == {"train": 2, "val": 1, "test": 2}
    assert summary["tasks"]["parts"]["max"] <= 9 and summary["tasks"]["parts"]["ignored_fraction"] == 0.0
    with pytest.raises(ValueError, match="layout 'auto_lambda' has 19 classes, got num_classes=7"):
        cls.describe(layout="auto_lambda", num_classes=7)
    with pytest.raises(ValueError, match="layout must be 'mtan'.* or 'auto_lambda'"):
        cls.describe(layout="autolambda")
    assert "parts" not in cls.describe().tasks  # MTAN's .npy set has no part labels
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['parts'\]; valid tasks: semseg, depth"):
        cls(str(tmp_path), "test", ["parts"])
    uids = np.array(Image.open(tmp_path / "val" / "part_seg" / "1.tif"))
    uids[2, 3] = 500  # 3-digit uids do not exist in the format
    Image.fromarray(uids).save(tmp_path / "val" / "part_seg" / "1.tif")
    with pytest.raises(DataCheckError, match=r"part_seg.1\.tif: values must be panoptic-parts uids .*found e.g. .*500"):
        cls.check(str(tmp_path), layout="auto_lambda")
    os.rename(tmp_path / "train" / "part_seg", tmp_path / "train" / "parts_elsewhere")
    with pytest.raises(DataCheckError) as err:
        cls.prepare(str(tmp_path), layout="auto_lambda")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'train' / 'part_seg'}: missing folder (parts of train; ")
    assert "train/part_seg<i>.tif: move them into train/part_seg/" in message


def test_cityscapes_mtan_parts_train_through_the_train_loop(tmp_path):
    write_auto_lambda(tmp_path, h=16, w=32)
    cfg = TrialConfig(experiment="t", tasks=("semseg", "depth", "parts"),
                      dataset={"name": "cityscapes_mtan", "params": {"layout": "auto_lambda", "max_samples": 2}},
                      data_root=str(tmp_path),
                      model={"architecture": "mtl_baseline", "backbone": "tiny_cnn", "head": "conv"}, epochs=1,
                      batch_size=2, eval_batch_size=2)
    report = fit(cfg, Session(device=torch.device("cpu")))
    for key in ("train/parts/loss", "val/parts/miou", "test/parts/miou", "test/semseg/miou", "test/depth/rmse"):
        assert math.isfinite(report[key]), key



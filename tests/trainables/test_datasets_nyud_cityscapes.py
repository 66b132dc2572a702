"""The real-data loaders nyud and cityscapes (MTAN's .npy sets: test_datasets_mtan.py) on tiny fixture trees
written here in each dataset's exact on-disk format: decoded values round-trip, splits, masks,
augmentation, checks, and one training epoch through the same train loop as on real data. Also
what every loader shares: task-driven augmentation and summary, the params bases, make_tasks."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import trainables  # noqa: F401  (registers the plug-ins)
from trainables.config import TrialConfig
from trainables.datasets import cityscapes as cs
from trainables.datasets import nyud
from trainables.datasets.base import make_tasks
from trainables.datasets.disk import DiskDataset
from trainables.datasets.params import HoldoutParams, SampleParams, ZoomParams
from trainables.datasets.readers import DataCheckError
from trainables.datasets.summary import summarize
from trainables.datasets.transforms import normalize_image, random_scale_crop, zoom_and_flip
from trainables.plugins import Plugin
from trainables.registry import DATASETS, TASKS
from trainables.schema import field_names
from trainables.session import Session
from trainables.train_loop import fit

H, W = 48, 64
TRAIN_IDS = ["0001", "0002", "0003", "0004", "0005", "0006"]
VAL_IDS = ["0100", "0101"]


# ---------------------------------------------------------------- fixture writers


def sample_arrays(seed: int, h: int = H, w: int = W) -> dict:
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, 41, (h, w)).astype(np.uint8)
    seg[0, :4] = [0, 1, 40, 17]
    depth = rng.uniform(0.5, 9.0, (h, w)).astype(np.float32)
    depth[1, :3] = 0
    normals = rng.normal(size=(h, w, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=2, keepdims=True)
    normals[2, :2] = 0
    edge = (rng.random((h, w)) < 0.2).astype(np.float32)
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    return {"image": image, "semseg": seg, "depth": depth, "normals": normals, "edge": edge}


def write_nyud(root, train=TRAIN_IDS, val=VAL_IDS, h=H, w=W) -> dict:
    """A NYUD_MT tree; returns id -> the arrays written (depth of odd ids stored H x W x 1)."""
    root = str(root)
    for folder in ("gt_sets", "images", "segmentation", "depth", "normals", "edge"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    for name, ids in (("train", train), ("val", val)):
        with open(os.path.join(root, "gt_sets", f"{name}.txt"), "w") as fh:
            fh.write("\n".join(ids) + "\n")
    written = {}
    for k, i in enumerate(list(train) + list(val)):
        a = sample_arrays(k, h, w)
        Image.fromarray(a["image"]).save(os.path.join(root, "images", f"{i}.jpg"), quality=95)
        Image.fromarray(a["semseg"]).save(os.path.join(root, "segmentation", f"{i}.png"))
        np.save(os.path.join(root, "depth", f"{i}.npy"), a["depth"][..., None] if k % 2 else a["depth"])
        np.save(os.path.join(root, "normals", f"{i}.npy"), a["normals"])
        np.save(os.path.join(root, "edge", f"{i}.npy"), a["edge"])
        written[i] = a
    return written


@pytest.fixture(scope="module")
def nyud_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyud")
    return str(root), write_nyud(root)


def write_cityscapes(root, n_train: int = 3, n_val: int = 2, h: int = 16, w: int = 32, extra=None) -> dict:
    """An official-layout Cityscapes tree; returns (split, base) -> arrays written."""
    rng = np.random.default_rng(2)
    written = {}
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(n):
            city = ["aachen", "bochum"][k % 2] if split == "train" else "frankfurt"
            base = f"{city}_{k:06d}_000019"
            labels = rng.integers(0, 34, (h, w)).astype(np.uint8)
            inst = labels.astype(np.uint16).copy()
            inst[:4, :6] = 26000
            inst[10:14, 20:28] = 24001
            disparity = rng.integers(0, 30000, (h, w)).astype(np.uint16)
            arrays = {"image": rng.integers(0, 256, (h, w, 3)).astype(np.uint8), "semseg": labels,
                      "instance": inst, "disparity": disparity}
            if extra and (split, k) in extra:
                arrays.update(extra[(split, k)])
            out = {"leftImg8bit": (arrays["image"], "_leftImg8bit.png"),
                   "gtFine": (arrays["semseg"], "_gtFine_labelIds.png"),
                   "gtFine2": (arrays["instance"], "_gtFine_instanceIds.png"),
                   "disparity": (arrays["disparity"], "_disparity.png")}
            for folder, (a, suffix) in out.items():
                d = os.path.join(root, folder.rstrip("2"), split, city)
                os.makedirs(d, exist_ok=True)
                Image.fromarray(a).save(os.path.join(d, base + suffix))
            written[(split, base)] = arrays
    return written


# ---------------------------------------------------------------- nyud


def test_nyud_describe_and_registry():
    cls = DATASETS.get("nyud")
    info = cls.describe()
    assert set(info.tasks) == {"semseg", "depth", "normals", "edge"}
    assert info.tasks["semseg"].params == {"num_classes": 40}
    assert info.input_size == (480, 640) and info.default_batch_sizes == (4, 6, 8)
    assert cls.describe(image_size=[48, 64]).input_size == (48, 64)
    with pytest.raises(ValueError, match="bogus: unknown key"):
        cls.describe(bogus=1)
    with pytest.raises(ValueError, match="val_fraction"):
        cls.describe(val_fraction=1.5)
    with pytest.raises(ValueError, match="image_size"):
        cls.describe(image_size=[48])


def test_nyud_values_round_trip(nyud_tree):
    root, written = nyud_tree
    ds = nyud.NYUD(root, "test", list(nyud.TASK_NAMES))
    assert ds.ids == VAL_IDS and len(ds) == 2
    for i, sample_id in enumerate(ds.ids):
        a, item = written[sample_id], ds[i]
        seg = item["targets"]["semseg"]
        assert seg.dtype == torch.long and seg.shape == (H, W)
        assert seg[0, :4].tolist() == [255, 0, 39, 16]  # 0 = void, 1..40 -> 0..39
        expected = a["semseg"].astype(np.int64) - 1
        expected[expected < 0] = 255
        assert torch.equal(seg, torch.from_numpy(expected))
        depth = item["targets"]["depth"]
        assert depth.shape == (1, H, W) and torch.equal(depth[0], torch.from_numpy(a["depth"]))
        normals = item["targets"]["normals"]
        assert normals.shape == (3, H, W)
        assert torch.allclose(normals, torch.from_numpy(a["normals"]).permute(2, 0, 1), atol=1e-6)
        assert (normals[:, 2, :2] == 0).all()
        assert torch.equal(item["targets"]["edge"][0], torch.from_numpy(a["edge"]))
        image = item["image"]
        decoded = np.array(Image.open(os.path.join(root, "images", f"{sample_id}.jpg")).convert("RGB"))
        assert image.shape == (3, H, W) and image.dtype == torch.float32
        assert torch.allclose(image, normalize_image(decoded, nyud.IMAGENET_MEAN, nyud.IMAGENET_STD))
        assert all(bool(m) for m in item["mask"].values()) and set(item["mask"]) == set(nyud.TASK_NAMES)


def test_nyud_holdout_splits(nyud_tree):
    root, _ = nyud_tree
    train = nyud.NYUD(root, "train", ["depth"])
    val = nyud.NYUD(root, "val", ["depth"])
    assert set(train.ids).isdisjoint(val.ids) and sorted(train.ids + val.ids) == TRAIN_IDS
    assert len(val) == 1  # round(0.1 * 6), at least one
    assert [TRAIN_IDS[i] for i in train.source_indices] == train.ids
    other = nyud.NYUD(root, "val", ["depth"], seed=5, val_fraction=0.5)
    assert len(other) == 3
    assert len(nyud.NYUD(root, "train", ["depth"], max_samples=2)) == 2
    with pytest.raises(ValueError, match="unknown split"):
        nyud.NYUD(root, "dev", ["depth"])
    with pytest.raises(ValueError, match="unknown task"):
        nyud.NYUD(root, "train", ["keypoints"])


def test_nyud_flip_mirrors_maps_and_negates_normals_x(nyud_tree):
    root, _ = nyud_tree
    tasks = list(nyud.TASK_NAMES)
    plain = nyud.NYUD(root, "test", tasks)[0]
    aug = nyud.NYUD(root, "test", tasks, augment=True, scales=[1.0])
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        item = aug[0]
        if torch.equal(item["image"], plain["image"]):
            seen.add("same")
            for t in tasks:
                assert torch.equal(item["targets"][t], plain["targets"][t])
            continue
        seen.add("flipped")
        assert torch.equal(item["image"], plain["image"].flip(-1))
        for t in ("semseg", "depth", "edge"):
            assert torch.equal(item["targets"][t], plain["targets"][t].flip(-1))
        n, n0 = item["targets"]["normals"], plain["targets"]["normals"].flip(-1)
        assert torch.equal(n[0], -n0[0]) and torch.equal(n[1:], n0[1:])
    assert seen == {"same", "flipped"}


def test_nyud_scale_divides_depth(nyud_tree):
    root, _ = nyud_tree
    plain = nyud.NYUD(root, "test", ["semseg", "depth"])[0]
    aug = nyud.NYUD(root, "test", ["semseg", "depth"], augment=True, scales=[1.5], flip=False)
    torch.manual_seed(0)
    item = aug[0]
    depth, seg = item["targets"]["depth"], item["targets"]["semseg"]
    assert depth.shape == (1, H, W) and seg.shape == (H, W) and item["image"].shape == (3, H, W)
    original = set(plain["targets"]["depth"][plain["targets"]["depth"] > 0].tolist())
    scaled = depth[depth > 0] * 1.5
    assert all(any(math.isclose(v, o, rel_tol=1e-5) for o in original) for v in scaled[:50].tolist())
    assert set(seg.unique().tolist()) <= set(plain["targets"]["semseg"].unique().tolist())
    assert not torch.equal(item["image"], plain["image"])  # zoomed in


def test_nyud_prepare_names_missing_and_bad_files(tmp_path):
    write_nyud(tmp_path, train=TRAIN_IDS[:3], val=VAL_IDS[:1])
    cls = DATASETS.get("nyud")
    assert cls.prepare(str(tmp_path)) is None
    with pytest.raises(DataCheckError, match="image of 480x640"):
        cls.prepare(str(tmp_path), image_size=[480, 640])
    os.remove(tmp_path / "edge" / "0002.npy")
    with pytest.raises(DataCheckError, match=r"edge.0002\.npy: missing file"):
        cls.prepare(str(tmp_path))
    with pytest.raises(DataCheckError, match="missing folder"):
        cls.prepare(str(tmp_path / "nowhere"))


def test_nyud_check_decodes_every_small_list_and_finds_bad_value(tmp_path):
    write_nyud(tmp_path, train=TRAIN_IDS[:3], val=VAL_IDS[:1])
    cls = DATASETS.get("nyud")
    summary = cls.check(str(tmp_path))
    assert summary["splits"] == {"train": 2, "val": 1, "test": 1}
    assert summary["checked"] == {"files": 20, "decoded": 4}
    assert summary["tasks"]["semseg"]["max"] <= 39 and summary["tasks"]["semseg"]["ignored_fraction"] > 0
    seg = np.array(Image.open(tmp_path / "segmentation" / "0002.png"))
    seg[5, 5] = 41
    Image.fromarray(seg).save(tmp_path / "segmentation" / "0002.png")
    with pytest.raises(DataCheckError, match=r"0002\.png: values must be in 0\.\.40"):
        cls.check(str(tmp_path))


def test_nyud_one_epoch_through_the_train_loop(tmp_path):
    write_nyud(tmp_path, train=TRAIN_IDS, val=VAL_IDS, h=32, w=32)
    cfg = TrialConfig(experiment="t", tasks=("semseg", "depth"),
                      dataset={"name": "nyud", "params": {"max_samples": 4, "image_size": [32, 32]}},
                      data_root=str(tmp_path),
                      model={"architecture": "mtl_baseline", "backbone": "tiny_cnn", "head": "conv"}, epochs=1,
                      batch_size=2, eval_batch_size=2)
    report = fit(cfg, Session(device=torch.device("cpu")))
    for key in ("val/semseg/miou", "val/depth/rmse", "test/semseg/miou", "test/depth/rmse",
                "train/semseg/loss", "train/depth/loss"):
        assert math.isfinite(report[key]), key


# ---------------------------------------------------------------- Cityscapes (official layout)


def test_cityscapes_describe():
    info = DATASETS.get("cityscapes").describe()
    assert set(info.tasks) == {"semseg", "depth", "instance_center"}
    assert info.tasks["semseg"].params == {"num_classes": 19} and info.tasks["instance_center"].name == "instance_center"
    assert info.input_size == (256, 512)
    assert DATASETS.get("cityscapes").describe(size=None).input_size == (1024, 2048)
    with pytest.raises(ValueError, match="depth_from_disparity"):
        DATASETS.get("cityscapes").describe(depth_from_disparity="inverse")
    # the depth task knows whether it serves disparity (its zoom multiplies by s) or metres
    assert info.tasks["depth"] == Plugin("depth", {"disparity": True})
    metric = DATASETS.get("cityscapes").describe(depth_from_disparity="metric")
    assert metric.tasks["depth"].params == {"disparity": False}
    assert DATASETS.get("cityscapes_mtan").describe().tasks["depth"].params == {"disparity": True}
    assert DATASETS.get("nyuv2_mtan").describe().tasks["depth"].params == {"disparity": False}


def test_cityscapes_train_ids_and_disparity(tmp_path):
    labels = np.zeros((16, 32), np.uint8)
    labels[0, :8] = [7, 8, 26, 33, 0, 9, 29, 24]
    disparity = np.zeros((16, 32), np.uint16)
    disparity[0, :5] = [0, 1, 257, 513, 65535]
    write_cityscapes(tmp_path, extra={("val", 0): {"semseg": labels, "disparity": disparity}})
    cls = DATASETS.get("cityscapes")
    item = cls(str(tmp_path), "test", ["semseg", "depth"], size=None)[0]
    assert item["targets"]["semseg"][0, :8].tolist() == [0, 1, 13, 18, 255, 255, 255, 11]
    d = item["targets"]["depth"]
    assert d.shape == (1, 16, 32)
    assert d[0, 0, :5].tolist() == pytest.approx([0.0, 0.0, 1.0, 2.0, 65534 / 256])
    metric = cls(str(tmp_path), "test", ["depth"], size=None, depth_from_disparity="metric")[0]["targets"]["depth"]
    assert metric[0, 0, :4].tolist() == pytest.approx([0.0, 0.0, 0.209313 * 2262.52, 0.209313 * 2262.52 / 2])
    # the default 2x downscale: nearest-exact takes source pixel 2 * dst + 1
    small = cls(str(tmp_path), "test", ["semseg", "depth"], size=[8, 16])[0]
    assert small["image"].shape == (3, 8, 16) and small["targets"]["semseg"].shape == (8, 16)
    full_seg = item["targets"]["semseg"]
    assert torch.equal(small["targets"]["semseg"], full_seg[1::2, 1::2])


def test_cityscapes_instance_centre_offsets():
    ids = np.full((6, 8), 7, np.int64)  # road
    ids[0:2, 0:3] = 26000  # car instance: centroid (0.5, 1.0)
    ids[3:6, 6:8] = 24001  # person instance: centroid (4.0, 6.5)
    ids[5, 0] = 29000  # caravan instance: no trainId, ignored
    ids[2, 5] = 26  # a car group without instance id, ignored
    off = cs.instance_offsets(ids, None)
    assert off.shape == (2, 6, 8)
    assert off[:, 0, 0].tolist() == [0.5, 1.0] and off[:, 1, 2].tolist() == [-0.5, -1.0]
    assert off[:, 3, 6].tolist() == [1.0, 0.5] and off[:, 5, 7].tolist() == [-1.0, -0.5]
    ignored = torch.isnan(off).all(dim=0)
    assert int((~ignored).sum()) == 12 and ignored[5, 0] and ignored[2, 5] and ignored[4, 4]
    assert torch.isnan(off).any(dim=0).equal(ignored)
    # half size: centroids map to ((c + 0.5) / 2 - 0.5); pixel (y, x) samples (2y + 1, 2x + 1)
    half = cs.instance_offsets(ids, (3, 4))
    assert half[:, 0, 0].tolist() == [0.0, 0.25]  # car centroid (0.0, 0.25)
    assert half[:, 1, 3].tolist() == [0.75, 0.0]  # person centroid (1.75, 3.0)
    assert half[:, 2, 3].tolist() == [-0.25, 0.0]
    assert torch.isnan(half[:, 2, 0]).all() and torch.isnan(half[:, 0, 2]).all()


def test_cityscapes_items_flip_and_checks(tmp_path):
    write_cityscapes(tmp_path)
    cls = DATASETS.get("cityscapes")
    tasks = ["semseg", "depth", "instance_center"]
    plain = cls(str(tmp_path), "test", tasks, size=[8, 16])[0]
    inst = plain["targets"]["instance_center"]
    assert inst.shape == (2, 8, 16) and inst.dtype == torch.float32 and torch.isfinite(inst).any()
    aug = cls(str(tmp_path), "test", tasks, augment=True, size=[8, 16])
    outcomes = set()
    for seed in range(10):
        torch.manual_seed(seed)
        item = aug[0]
        flipped = not torch.equal(item["image"], plain["image"])
        outcomes.add(flipped)
        if flipped:
            off = item["targets"]["instance_center"]
            ref = plain["targets"]["instance_center"].flip(-1)
            assert torch.equal(off[0], ref[0], ) or torch.allclose(off[0], ref[0], equal_nan=True)
            assert torch.allclose(off[1], -ref[1], equal_nan=True)
    assert outcomes == {True, False}
    zoom = cls(str(tmp_path), "test", ["instance_center"], augment=True, scales=[2.0], flip=False, size=None)
    native = cls(str(tmp_path), "test", ["instance_center"], size=None)[0]["targets"]["instance_center"]
    for seed in range(20):  # a zoomed window that shows an instance
        torch.manual_seed(seed)
        z = zoom[0]["targets"]["instance_center"]
        if torch.isfinite(z).any():
            break
    for c in range(2):  # offsets double with a 2x zoom (exact factors: 16 / 8 and 32 / 16)
        zc, nc = z[c][torch.isfinite(z[c])] / 2, native[c][torch.isfinite(native[c])]
        assert set(zc.tolist()) <= set(nc.tolist())
    summary = cls.check(str(tmp_path), size=[8, 16])
    assert summary["splits"] == {"train": 2, "val": 1, "test": 2}
    assert 0 < summary["tasks"]["instance_center"]["ignored_fraction"] < 1
    assert summary["checked"]["decoded"] == 5 and summary["checked"]["files"] == 20
    train, val = cls(str(tmp_path), "train", tasks), cls(str(tmp_path), "val", tasks)
    assert set(train.samples).isdisjoint(val.samples) and len(train.samples) + len(val.samples) == 3


def test_cityscapes_bad_instance_id_is_named(tmp_path):
    inst = np.full((16, 32), 7, np.uint16)
    inst[0, 0] = 5000  # class 5 has no instances
    write_cityscapes(tmp_path, extra={("train", 1): {"instance": inst}})
    with pytest.raises(DataCheckError, match=r"bochum_000001_000019_gtFine_instanceIds\.png: values"):
        DATASETS.get("cityscapes").check(str(tmp_path))


# ---------------------------------------------------------------- what every loader shares


@pytest.mark.parametrize("seed", range(4))
def test_zoom_and_flip_asks_each_targets_task(seed):
    """Names carry no meaning: the values follow the task type (metric depth / s, disparity * s,
    offsets * (fy, fx), x negated by a flip), image-level targets pass through."""
    tasks = {"a": TASKS.get("depth")("a"), "b": TASKS.get("depth")("b", disparity=True),
             "c": TASKS.get("instance_center")("c"), "d": TASKS.get("scene")("d", num_classes=4)}
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, 8, 12, generator=g)
    targets = {"a": torch.rand(1, 8, 12, generator=g) + 1, "b": torch.rand(1, 8, 12, generator=g) + 1,
               "c": torch.randn(2, 8, 12, generator=g), "d": torch.tensor(2)}
    torch.manual_seed(seed)
    image_z, dense, s, (fy, fx) = random_scale_crop(image, {k: targets[k] for k in "abc"}, (1.5, 2.0))
    flipped = bool(torch.rand(()) < 0.5)
    torch.manual_seed(seed)
    out_image, out = zoom_and_flip(image, targets, tasks, (1.5, 2.0), flip=True)
    expected = {"a": dense["a"] / s, "b": dense["b"] * s, "c": dense["c"] * torch.tensor([fy, fx]).view(2, 1, 1)}
    if flipped:
        image_z, expected = image_z.flip(-1), {k: v.flip(-1) for k, v in expected.items()}
        expected["c"][1] *= -1
    assert torch.equal(out_image, image_z) and out["d"] is targets["d"]
    assert all(torch.equal(out[k], expected[k]) for k in "abc")


def test_summary_counts_what_each_task_ignores():
    tasks = {"x": TASKS.get("depth")("x"), "y": TASKS.get("semseg")("y", num_classes=3)}
    labelled = {"x": torch.tensor(True), "y": torch.tensor(True)}
    unlabelled = {"x": torch.tensor(False), "y": torch.tensor(False)}
    items = [{"image": torch.zeros(3, 1, 2), "mask": labelled,
              "targets": {"x": torch.tensor([[[0.0, 2.0]]]), "y": torch.tensor([[255, 1]])}},
             {"image": torch.ones(3, 1, 2), "mask": unlabelled,  # not counted
              "targets": {"x": torch.tensor([[[9.0, 9.0]]]), "y": torch.tensor([[2, 2]])}}]
    summary = summarize(lambda split: items, ["train"], tasks)
    assert summary["splits"] == {"train": 2}
    assert summary["tasks"]["x"] == {"shape": [1, 1, 2], "dtype": "float32", "min": 2.0, "max": 2.0,
                                     "ignored_fraction": 0.5}
    assert summary["tasks"]["y"]["ignored_fraction"] == 0.5 and summary["tasks"]["y"]["max"] == 1.0
    assert summary["tasks"]["image"]["ignored_fraction"] == 0.0 and summary["tasks"]["image"]["max"] == 1.0


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_describes_tasks_that_build(name):
    info = DATASETS.get(name).describe()
    tasks = make_tasks(info, info.tasks)
    for task_name, task in tasks.items():
        assert isinstance(info.tasks[task_name], Plugin) and type(task) is TASKS.get(info.tasks[task_name].name)
        assert task.name == task_name


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if issubclass(DATASETS.get(n), DiskDataset)])
def test_loader_params_carry_only_fields_the_loader_uses(name):
    cls = DATASETS.get(name)
    assert issubclass(cls.Params, SampleParams)  # max_samples, flip
    # val_fraction / seed only where "val" is carved out of the official train list
    assert issubclass(cls.Params, HoldoutParams) == (cls.HOLDOUT is not None)
    # scales only where the random zoom-crop runs
    zooms = name in ("nyud", "cityscapes", "nyuv2_mtan", "cityscapes_mtan")
    assert issubclass(cls.Params, ZoomParams) == zooms == ("scales" in field_names(cls.Params))


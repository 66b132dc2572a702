"""PASCAL-Context (PASCAL_MT layout) and Tiny Taskonomy loaders on tiny fixture trees."""
from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

import trainables  # noqa: F401
from orchestrator.cli import main
from trainables.config import TrialConfig
from trainables.datasets import pascal_context as pc
from trainables.datasets import taskonomy as tk
from trainables.datasets.base import make_tasks
from trainables.datasets.readers import DataCheckError
from trainables.registry import DATASETS
from trainables.session import Session
from trainables.train_loop import fit

H, W = 20, 24
RNG = np.random.default_rng(0)


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


# ============================================================================ PASCAL-Context
def _struct_array(rows, fields):
    a = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        for f, v in zip(fields, row):
            a[0, i][f] = v
    return a


def write_parts(path, persons):
    """A PASCAL-Part ``anno`` struct: ``persons`` is a list of [(part_name, mask)] (one list
    per person); a dog without parts is always added (class_ind 12)."""
    objects = [("person", np.array([[15]]), np.ones((H, W), np.uint8),
                _struct_array([(n, m.astype(np.uint8)) for n, m in parts], ("part_name", "mask")) if parts
                else np.zeros((0, 0))) for parts in persons]
    objects.append(("dog", np.array([[12]]), np.ones((H, W), np.uint8), np.zeros((0, 0))))
    anno = {"imname": "x", "objects": _struct_array(objects, ("class", "class_ind", "mask", "parts"))}
    savemat(path, {"anno": anno})


HEAD = np.zeros((H, W), bool)
HEAD[2:5, 3:6] = True
ARM = np.zeros((H, W), bool)
ARM[4:9, 4:7] = True  # overlaps HEAD at row 4: the later part (arm) wins


def make_pascal(root, n_train=6, n_val=3):
    """PASCAL_MT tree. Official val id 0 has no person; ids alternate VOC12 / context semseg."""
    ids = {"train": [f"2008_{i:06d}" for i in range(n_train)], "val": [f"2009_{i:06d}" for i in range(n_val)]}
    os.makedirs(root / "ImageSets" / "Context")
    for split, lst in ids.items():
        (root / "ImageSets" / "Context" / f"{split}.txt").write_text("\n".join(lst) + "\n")
    for d in ("human_parts", "pascal-context/trainval", "semseg/VOC12", "semseg/pascal-context"):
        os.makedirs(root / d, exist_ok=True)
    for k, i in enumerate(ids["train"] + ids["val"]):
        _png(str(root / "JPEGImages" / f"{i}.jpg"), RNG.integers(0, 255, (H, W, 3), dtype=np.uint8))
        seg = RNG.integers(0, 21, (H, W)).astype(np.uint8)
        seg[0, :3] = 255
        _png(str(root / "semseg" / ("VOC12" if k % 2 == 0 else "pascal-context") / f"{i}.png"), seg)
        write_parts(str(root / "human_parts" / f"{i}.mat"),
                    [] if i == ids["val"][0] else [[("head", HEAD), ("ruarm", ARM)], []])
        normals = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
        normals[0, 0] = (255, 0, 128)
        _png(str(root / "normals_distill" / f"{i}.png"), normals)
        sal = np.full((H, W), 100, np.uint8)
        sal[0, :4] = (200, 128, 127, 255)
        _png(str(root / "sal_distill" / f"{i}.png"), sal)
        labels = np.ones((H, W), np.uint16)
        labels[:, W // 2:] = 7  # one vertical boundary between columns W/2-1 and W/2
        savemat(str(root / "pascal-context" / "trainval" / f"{i}.mat"), {"LabelMap": labels})
    return ids


@pytest.fixture(scope="module")
def pascal(tmp_path_factory):
    root = tmp_path_factory.mktemp("PASCAL_MT")
    return root, make_pascal(root)


NATIVE = {"image_size": [H, W]}


def test_pascal_targets_round_trip(pascal):
    root, ids = pascal
    ds = DATASETS.get("pascal_context")(str(root), "test", list(pc.TASK_NAMES), **NATIVE)
    assert ds.ids == ids["val"] and len(ds) == 3
    item = ds[1]
    i = ids["val"][1]
    seg = np.array(Image.open(root / "semseg" / "pascal-context" / f"{i}.png"))  # k = 7: odd -> context
    assert torch.equal(item["targets"]["semseg"], torch.from_numpy(seg.astype(np.int64)))
    assert (item["targets"]["semseg"][0, :3] == 255).all()
    parts = item["targets"]["human_parts"]
    expected = np.zeros((H, W), np.int64)
    expected[HEAD] = 1
    expected[ARM] = 3  # right upper arm -> group 3, painted after the head
    assert torch.equal(parts, torch.from_numpy(expected)) and bool(item["mask"]["human_parts"])
    sal = item["targets"]["saliency"]
    assert sal.shape == (1, H, W) and sal[0, 0, :4].tolist() == [1.0, 1.0, 0.0, 1.0] and sal[0, 1:].sum() == 0
    n = item["targets"]["normals"][:, 0, 0]
    raw = torch.tensor([1.0, -1.0, 2 * 128 / 255 - 1])
    assert n.tolist() == pytest.approx((raw / raw.norm()).tolist(), abs=1e-5)
    edge = item["targets"]["edge"][0].numpy()
    band = np.zeros((H, W), bool)
    band[:, W // 2 - 1: W // 2 + 1] = True  # the Laplacian marks both sides of the boundary
    assert (edge.astype(bool) <= band).all() and (edge.sum(axis=1) <= 1).all() and edge.sum() >= H - 2
    unthinned = DATASETS.get("pascal_context")(str(root), "test", ["edge"], edge_thin=False, **NATIVE)[1]
    assert np.array_equal(unthinned["targets"]["edge"][0].numpy().astype(bool), band)
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32


def test_pascal_image_without_person_has_no_parts_label(pascal):
    root, _ = pascal
    item = DATASETS.get("pascal_context")(str(root), "test", ["human_parts", "semseg"], **NATIVE)[0]
    assert not bool(item["mask"]["human_parts"]) and (item["targets"]["human_parts"] == 255).all()
    assert bool(item["mask"]["semseg"])


def test_pascal_splits_and_semseg_source(pascal):
    root, ids = pascal
    make = lambda split, **kw: DATASETS.get("pascal_context")(str(root), split, ["semseg"], **NATIVE, **kw)  # noqa: E731
    train, val = make("train"), make("val")
    assert sorted(train.ids + val.ids) == sorted(ids["train"]) and not set(train.ids) & set(val.ids)
    assert len(val) == 1 and len(make("train", max_samples=2)) == 2
    voc_only = make("test", semseg_source="voc12")
    with pytest.raises(DataCheckError, match=r"VOC12.*2009_000001\.png"):
        voc_only[1]  # id 2009_000001 only has a pascal-context label
    with pytest.raises(ValueError, match="semseg_source"):
        make("test", semseg_source="coco")


def test_pascal_geometry_rotation_and_flip():
    labels = torch.arange(16).view(4, 4)
    normals = torch.zeros(3, 4, 4)
    normals[0] = 1.0  # pointing right (x)
    tasks = make_tasks(pc.PascalContext.describe(), ["semseg", "normals"])
    targets = {"semseg": labels, "normals": normals}
    img, out = pc.geometry(torch.zeros(3, 4, 4), targets, tasks, (4, 4), angle=90.0)
    assert torch.equal(out["semseg"], torch.rot90(labels, 1, (0, 1)))  # counter-clockwise on screen
    assert out["normals"][:, 1, 1].tolist() == pytest.approx([0.0, -1.0, 0.0], abs=1e-6)  # now up (y down)
    _, flipped = pc.geometry(torch.zeros(3, 4, 4), targets, tasks, (4, 4), flip=True)
    assert torch.equal(flipped["semseg"], labels.flip(-1)) and flipped["semseg"].dtype == torch.long
    assert flipped["normals"][0].unique().tolist() == [-1.0]
    _, small = pc.geometry(torch.zeros(3, 4, 4), {"semseg": labels}, tasks, (4, 4), scale=0.5)
    assert (small["semseg"][0] == 255).all() and small["semseg"][1, 1] != 255  # outside -> ignore


def test_pascal_augments_only_when_asked(pascal):
    root, _ = pascal
    make = lambda aug: DATASETS.get("pascal_context")(str(root), "train", list(pc.TASK_NAMES), augment=aug, **NATIVE)  # noqa: E731
    plain = make(False)
    assert torch.equal(plain[0]["targets"]["semseg"], plain[0]["targets"]["semseg"])
    aug = make(True)
    torch.manual_seed(0)
    draws = [aug[0] for _ in range(4)]
    assert any(not torch.equal(d["targets"]["semseg"], plain[0]["targets"]["semseg"]) for d in draws)
    for d in draws:
        n = d["targets"]["normals"]
        norm = n.norm(dim=0)
        assert ((norm - 1).abs() < 1e-4).logical_or(norm == 0).all()
        assert set(d["targets"]["human_parts"].unique().tolist()) <= {0, 1, 3, 255}
        assert d["image"].shape == (3, H, W)


def test_pascal_check_cli_and_bad_files(pascal, tmp_path, capsys):
    root, _ = pascal
    assert main(["data", "check", "--dataset", "pascal_context", "--root", str(root), "--param", f"image_size=[{H},{W}]"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": 5, "val": 1, "test": 3} and summary["checked"]["decoded"] == 9
    assert summary["tasks"]["semseg"]["ignored_fraction"] > 0
    bad = tmp_path / "bad"
    make_pascal(bad, n_train=2, n_val=1)
    (bad / "sal_distill" / "2008_000001.png").write_bytes(b"not a png")
    assert main(["data", "check", "--dataset", "pascal_context", "--root", str(bad)]) == 1
    assert "sal_distill/2008_000001.png" in capsys.readouterr().err
    write_parts(str(bad / "human_parts" / "2008_000000.mat"), [[("tail", HEAD)]])
    with pytest.raises(DataCheckError, match=r"2008_000000\.mat.*'tail'"):
        pc.read_human_parts(str(bad / "human_parts" / "2008_000000.mat"))
    write_parts(str(bad / "human_parts" / "2008_000000.mat"), [[("head", HEAD)]])
    (bad / "sal_distill" / "2008_000001.png").write_bytes((bad / "sal_distill" / "2008_000000.png").read_bytes())
    os.remove(bad / "normals_distill" / "2009_000000.png")
    with pytest.raises(DataCheckError, match=r"normals_distill/2009_000000\.png: missing file"):
        DATASETS.get("pascal_context").prepare(str(bad))


def test_pascal_trains_one_epoch(pascal):
    root, _ = pascal
    cfg = TrialConfig(experiment="t", tasks=("semseg", "human_parts"),
                      dataset={"name": "pascal_context", "params": {"image_size": [32, 32]}}, data_root=str(root),
                      model={"architecture": "mtl_baseline", "backbone": "tiny_cnn", "head": "conv"}, epochs=1,
                      batch_size=2, eval_batch_size=2)
    last = fit(cfg, Session(device=torch.device("cpu")))
    for key in ("val/semseg/miou", "val/human_parts/miou", "test/semseg/miou", "test/human_parts/miou",
                "train/semseg/loss", "train/human_parts/loss"):
        assert math.isfinite(last[key]), key
    info = DATASETS.get("pascal_context").describe()
    assert info.tasks["saliency"].params == {"primary": "miou"} and pc.SURVEY_LOSS_WEIGHTS["edge"] == 50.0


# ================================================================================ Taskonomy
S = 16
BUILDINGS = {"train": ["allensville", "beechwood"], "val": ["collierville"], "test": ["darden"]}


def make_taskonomy(root, layout="building_first", points=2):
    """Tiny Taskonomy tree with known values at the first pixels of every file."""
    with open(root / "train_val_test_tiny.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "train", "val", "test"])
        for split, bs in BUILDINGS.items():
            for b in bs:
                w.writerow([b] + [int(s == split) for s in ("train", "val", "test")])
        w.writerow(["unused", 0, 0, 0])
    for b in sum(BUILDINGS.values(), []):
        def f(folder, p, ext="png"):
            d = root / folder / b if layout == "task_first" else root / b / folder
            os.makedirs(d, exist_ok=True)
            return str(d / f"point_{p}_view_0_domain_{folder}.{ext}")
        for p in range(points):
            _png(f("rgb", p), RNG.integers(0, 255, (S, S, 3), dtype=np.uint8))
            seg = RNG.integers(0, 18, (S, S)).astype(np.uint8)
            seg[0, :2] = (0, 5)
            _png(f("segment_semantic", p), seg)
            depth = RNG.integers(1, 8000, (S, S)).astype(np.uint16)
            depth[0, :3] = (512, 65535, 1024)
            _png(f("depth_zbuffer", p), depth)
            normal = RNG.integers(0, 256, (S, S, 3), dtype=np.uint8)
            normal[0, 0] = (255, 0, 128)
            _png(f("normal", p), normal)
            for folder in ("edge_texture", "edge_occlusion", "keypoints2d"):
                m = RNG.integers(0, 65536, (S, S)).astype(np.uint16)
                m[0, 0] = 65535
                m[0, 2] = 32768
                _png(f(folder, p), m)
            _png(f("reshading", p), np.full((S, S, 3), 51, np.uint8))
            scores = RNG.random(365)
            scores[42] = 5.0
            scores[7] = 4.0
            np.save(f("class_scene", p, "npy"), scores)


@pytest.fixture(scope="module")
def tasko(tmp_path_factory):
    root = tmp_path_factory.mktemp("taskonomy")
    make_taskonomy(root)
    return root


def test_taskonomy_targets_round_trip(tasko):
    ds = DATASETS.get("taskonomy")(str(tasko), "val", list(tk.TASK_NAMES), image_size=[S, S])
    assert len(ds) == 2 and ds.samples[0] == ("collierville", "point_0_view_0")
    t = ds[0]["targets"]
    assert t["semseg"][0, :2].tolist() == [255, 4]  # 0 = unlabelled -> ignore, k -> k - 1
    assert t["depth"][0, 0, :3].tolist() == [1.0, 0.0, 2.0]  # metres = value / 512; 65535 -> 0 invalid
    n = t["normals"][:, 0, 0]
    raw = torch.tensor([1.0, -1.0, 2 * 128 / 255 - 1])
    assert n.tolist() == pytest.approx((raw / raw.norm()).tolist(), abs=1e-6)  # served unit length
    assert (t["normals"][:, 0, 1] == 0).all()  # invalid depth masks the normals ...
    assert math.isnan(t["edge_occlusion"][0, 0, 1]) and math.isnan(t["reshading"][0, 0, 1])  # ... and these
    assert t["edge_texture"][0, 0, 0] == 1.0 and t["edge_texture"][0, 0, 2] == pytest.approx(32768 / 65535)
    assert not math.isnan(t["edge_texture"][0, 0, 1])  # texture edges are not depth-masked
    assert t["keypoints2d"][0, 0, 0] == 1.0 and t["reshading"][0, 0, 0] == pytest.approx(0.2)
    assert t["scene"].item() == 42 and t["scene"].dtype == torch.long
    subset = DATASETS.get("taskonomy")(str(tasko), "val", ["scene"], image_size=[S, S], scene_classes=[7, 3, 9])
    assert subset[0]["targets"]["scene"].item() == 0
    assert DATASETS.get("taskonomy").describe(scene_classes=[7, 3, 9]).tasks["scene"].params == {"num_classes": 3}


def test_taskonomy_resizes_and_splits(tasko):
    make = lambda split, **kw: DATASETS.get("taskonomy")(str(tasko), split, ["semseg", "depth", "normals"], **kw)  # noqa: E731
    assert [len(make(s)) for s in ("train", "val", "test")] == [4, 2, 2]
    item = make("train", image_size=[8, 8])[0]
    assert item["image"].shape == (3, 8, 8) and item["targets"]["depth"].shape == (1, 8, 8)
    assert set(item["targets"]["semseg"].unique().tolist()) <= set(range(17)) | {255}
    explicit = make("test", train_buildings=["allensville"], val_buildings=["beechwood"], test_buildings=["darden"])
    assert {b for b, _ in explicit.samples} == {"darden"}
    with pytest.raises(ValueError, match="all of train_buildings"):
        make("test", train_buildings=["allensville"])


def test_taskonomy_task_first_layout(tmp_path):
    make_taskonomy(tmp_path, layout="task_first", points=1)
    ds = DATASETS.get("taskonomy")(str(tmp_path), "train", ["depth"], image_size=[S, S])
    assert len(ds) == 2 and ds[0]["targets"]["depth"][0, 0, 0] == 1.0


def test_taskonomy_flip_only_when_augmenting(tasko):
    make = lambda aug: DATASETS.get("taskonomy")(str(tasko), "train", ["normals", "depth"], augment=aug, image_size=[S, S])  # noqa: E731
    plain, aug = make(False)[0]["targets"], make(True)
    torch.manual_seed(0)
    draws = [aug[0]["targets"] for _ in range(6)]
    flipped = [d for d in draws if not torch.equal(d["depth"], plain["depth"])]
    assert flipped and len(flipped) < len(draws)
    for d in flipped:
        assert torch.equal(d["depth"], plain["depth"].flip(-1))
        assert torch.equal(d["normals"][0], -plain["normals"][0].flip(-1))


def test_taskonomy_check_and_errors(tasko, tmp_path, capsys):
    assert main(["data", "check", "--dataset", "taskonomy", "--root", str(tasko), "--param", f"image_size=[{S},{S}]"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": 4, "val": 2, "test": 2} and summary["checked"]["files"] == 8 * 8
    make_taskonomy(tmp_path, points=1)
    bad = tmp_path / "beechwood" / "depth_zbuffer" / "point_0_view_0_domain_depth_zbuffer.png"
    _png(str(bad), np.zeros((S, S, 3), np.uint8))  # RGB instead of a 16-bit depth map
    assert main(["data", "check", "--dataset", "taskonomy", "--root", str(tmp_path)]) == 1
    assert "beechwood/depth_zbuffer/point_0_view_0_domain_depth_zbuffer.png" in capsys.readouterr().err
    os.remove(bad)
    with pytest.raises(DataCheckError, match="missing file"):
        DATASETS.get("taskonomy").prepare(str(tmp_path))
    item = DATASETS.get("taskonomy")(str(tmp_path), "train", ["depth", "semseg"], allow_missing=True)[1]
    assert not bool(item["mask"]["depth"]) and bool(item["mask"]["semseg"])
    with open(tmp_path / "train_val_test_tiny.csv", "a") as fh:
        fh.write("darden,1,0,1\n")
    with pytest.raises(DataCheckError, match="train_val_test_tiny.csv: line .*more than one split"):
        DATASETS.get("taskonomy")(str(tmp_path), "train", ["depth"])


def test_taskonomy_trains_one_epoch(tasko):
    cfg = TrialConfig(experiment="t", tasks=("semseg", "depth"),
                      dataset={"name": "taskonomy", "params": {"image_size": [32, 32]}}, data_root=str(tasko),
                      model={"architecture": "mtl_baseline", "backbone": "tiny_cnn", "head": "conv"}, epochs=1,
                      batch_size=2, eval_batch_size=2)
    last = fit(cfg, Session(device=torch.device("cpu")))
    for key in ("val/semseg/miou", "val/depth/l1", "test/depth/l1", "train/semseg/loss", "train/depth/loss"):
        assert math.isfinite(last[key]), key

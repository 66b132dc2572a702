"""MGM's data: the optional scene task of nyuv2_mtan / nyud, the mgm_folder layout (values, masks,
scene ids, seeded splits, named errors) and ``partial.split_unlabelled`` - on tiny fixture trees
written here."""
from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import trainables  # noqa: F401  (registers the plug-ins)
from trainables.config import TrialConfig
from trainables.datasets import mgm_folder
from trainables.datasets.base import make_tasks
from trainables.datasets.partial import LabelMasked, make_label_mask, split_unlabelled
from trainables.datasets.readers import DataCheckError
from trainables.registry import DATASETS
from trainables.session import Session
from trainables.train_loop import fit

SCENES = {"train": [2, 0, 1, 2], "val": [1, 0]}  # nyuv2_mtan fixture: the scene type of each sample


# ---------------------------------------------------------------- nyuv2_mtan / nyud scene types


def write_mtan(root, scenes=SCENES, h: int = 4, w: int = 6) -> None:
    """A nyuv2_mtan tree with ``scene/<i>.npy`` (stored 0-d, (1,) and float in turn)."""
    rng = np.random.default_rng(0)
    for split, types in scenes.items():
        for i, t in enumerate(types):
            n = rng.normal(size=(h, w, 3))
            arrays = {"image": rng.random((h, w, 3)), "label": rng.integers(-1, 13, (h, w)).astype(np.float32),
                      "depth": rng.uniform(0.5, 5, (h, w, 1)), "normal": n / np.linalg.norm(n, axis=2, keepdims=True),
                      "scene": [np.int64(t), np.array([t], dtype=np.int32), np.float32(t)][i % 3]}
            for folder, a in arrays.items():
                os.makedirs(os.path.join(root, split, folder), exist_ok=True)
                np.save(os.path.join(root, split, folder, f"{i}.npy"), a)


def test_nyuv2_mtan_offers_scene_only_with_num_scenes(tmp_path):
    cls = DATASETS.get("nyuv2_mtan")
    assert "scene" not in cls.describe().tasks
    assert cls.describe(num_scenes=3).tasks["scene"].params == {"num_classes": 3}
    with pytest.raises(ValueError, match="num_scenes must be an int >= 2"):
        cls.describe(num_scenes=1)
    write_mtan(tmp_path)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['scene'\]"):
        cls(str(tmp_path), "test", ["scene"])


def test_nyuv2_mtan_scene_values_splits_and_augment(tmp_path):
    write_mtan(tmp_path)
    cls = DATASETS.get("nyuv2_mtan")
    test = cls(str(tmp_path), "test", ["semseg", "scene"], num_scenes=3)
    for i, t in enumerate(SCENES["val"]):
        item = test[i]
        assert item["targets"]["scene"].dtype == torch.long and item["targets"]["scene"].shape == ()
        assert item["targets"]["scene"].item() == t and item["mask"]["scene"].item()
    seg = np.load(tmp_path / "val" / "label" / "1.npy").astype(np.int64)
    seg[seg < 0] = 255
    assert torch.equal(test[1]["targets"]["semseg"], torch.from_numpy(seg))
    # the hold-out "train" / "val" keep each sample's own type; augmentation leaves it alone
    for split in ("train", "val"):
        ds = cls(str(tmp_path), split, ["depth", "scene"], augment=True, num_scenes=3)
        assert [ds[k]["targets"]["scene"].item() for k in range(len(ds))] == \
            [SCENES["train"][i] for i in ds.source_indices]
    assert cls.check(str(tmp_path), num_scenes=3)["splits"] == {"train": 3, "val": 1, "test": 2}


def test_nyuv2_mtan_scene_files_read_only_when_asked(tmp_path):
    write_mtan(tmp_path)
    shutil.rmtree(tmp_path / "val" / "scene")
    cls = DATASETS.get("nyuv2_mtan")
    cls.prepare(str(tmp_path))  # no num_scenes: scene/ is never looked at
    assert cls(str(tmp_path), "test", ["depth"], num_scenes=3)[0]["targets"]["depth"].shape == (1, 4, 6)
    with pytest.raises(DataCheckError) as err:
        cls(str(tmp_path), "test", ["scene"], num_scenes=3)[0]
    message = str(err.value)
    assert "\n" not in message and message.startswith(os.path.join(str(tmp_path), "val", "scene", "0.npy"))
    assert "missing file" in message and "np.save one int in 0..2" in message and "drop the scene task" in message
    with pytest.raises(DataCheckError, match=r"val.scene.0\.npy: missing file"):
        cls.prepare(str(tmp_path), num_scenes=3)


def test_nyuv2_mtan_scene_out_of_range_is_named(tmp_path):
    write_mtan(tmp_path)
    np.save(tmp_path / "train" / "scene" / "2.npy", np.int64(3))
    cls = DATASETS.get("nyuv2_mtan")
    with pytest.raises(DataCheckError, match=r"train.scene.2\.npy: value must be an integer in 0\.\.2, found 3$"):
        cls.prepare(str(tmp_path), num_scenes=3)
    np.save(tmp_path / "train" / "scene" / "2.npy", np.array([1.5]))
    with pytest.raises(DataCheckError, match=r"integer in 0\.\.2, found 1\.5$"):
        cls.prepare(str(tmp_path), num_scenes=3)
    np.save(tmp_path / "train" / "scene" / "2.npy", np.array([1, 2]))
    with pytest.raises(DataCheckError, match=r"one number expected, found int64 of shape \(2,\)"):
        cls.prepare(str(tmp_path), num_scenes=3)


def write_nyud(root, scene_of: dict, h: int = 4, w: int = 6) -> None:
    """A NYUD_MT tree with ids ``scene_of`` (train: the first three) and ``scene/<id>.npy``."""
    rng = np.random.default_rng(0)
    ids = list(scene_of)
    for folder in ("gt_sets", "images", "segmentation", "depth", "normals", "edge", "scene"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    for name, part in (("train", ids[:3]), ("val", ids[3:])):
        (root / "gt_sets" / f"{name}.txt").write_text("\n".join(part) + "\n")
    for i in ids:
        n = rng.normal(size=(h, w, 3)).astype(np.float32)
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(root / "images" / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 41, (h, w)).astype(np.uint8)).save(root / "segmentation" / f"{i}.png")
        np.save(root / "depth" / f"{i}.npy", rng.uniform(0.5, 5, (h, w)).astype(np.float32))
        np.save(root / "normals" / f"{i}.npy", n / np.linalg.norm(n, axis=2, keepdims=True))
        np.save(root / "edge" / f"{i}.npy", np.zeros((h, w), np.float32))
        np.save(root / "scene" / f"{i}.npy", np.int64(scene_of[i]))


def test_nyud_scene_task(tmp_path):
    scene_of = {"a1": 0, "a2": 3, "a3": 1, "b1": 2, "b2": 3}
    write_nyud(tmp_path, scene_of)
    cls = DATASETS.get("nyud")
    assert "scene" not in cls.describe().tasks
    assert cls.describe(num_scenes=4).tasks["scene"].params == {"num_classes": 4}
    test = cls(str(tmp_path), "test", ["edge", "scene"], num_scenes=4)
    assert [test[k]["targets"]["scene"].item() for k in range(2)] == [2, 3]
    assert test[0]["targets"]["edge"].shape == (1, 4, 6)
    assert cls.check(str(tmp_path), num_scenes=4)["splits"] == {"train": 2, "val": 1, "test": 2}
    os.remove(tmp_path / "scene" / "b2.npy")
    cls.prepare(str(tmp_path))  # without num_scenes nothing under scene/ is read
    with pytest.raises(DataCheckError, match=r"scene.b2\.npy: missing file \(the scene type of id 'b2'"):
        cls.prepare(str(tmp_path), num_scenes=4)


# ---------------------------------------------------------------- mgm_folder

MGM_SCENES = {"office": 3, "bedroom": 4, "kitchen": 3}  # sorted: bedroom 0, kitchen 1, office 2
H, W = 6, 8


def write_mgm(root, scenes=MGM_SCENES, h: int = H, w: int = W, num_classes: int = 5) -> dict:
    """MGM's tree; returns (scene, stem) -> the arrays written. Masks alternate between greyscale
    and RGB pngs; each sample's mask zeroes pixel (0, 0) and its ss holds a 255 at (1, 1)."""
    rng = np.random.default_rng(0)
    written = {}
    for scene, n in scenes.items():
        for folder in mgm_folder.FOLDERS:
            os.makedirs(os.path.join(root, folder, scene), exist_ok=True)
        for k in range(n):
            stem = f"{k:03d}"
            a = {"rgb": rng.integers(0, 256, (h, w, 3)).astype(np.uint8),
                 "ss": rng.integers(0, num_classes, (h, w)).astype(np.int16),
                 "de": rng.uniform(0.5, 9.0, (h, w)).astype(np.float32),
                 "nm": rng.integers(0, 256, (h, w, 3)).astype(np.uint8),
                 "msk": np.full((h, w), 255, np.uint8)}
            a["ss"][1, 1] = 255
            a["msk"][0, 0] = 0
            Image.fromarray(a["rgb"]).save(os.path.join(root, "rgb", scene, f"{stem}.png"))
            np.save(os.path.join(root, "ss", scene, f"{stem}.npy"), a["ss"])
            np.save(os.path.join(root, "de", scene, f"{stem}.npy"), a["de"][..., None] if k % 2 else a["de"])
            Image.fromarray(a["nm"]).save(os.path.join(root, "nm", scene, f"{stem}.png"))
            mask = np.repeat(a["msk"][..., None], 3, axis=2) if k % 2 else a["msk"]
            Image.fromarray(mask).save(os.path.join(root, "msk", scene, f"{stem}.png"))
            written[(scene, stem)] = a
    return written


def mgm_params(**extra) -> dict:
    return {"num_classes": 5, "num_scenes": 3, "image_size": [H, W], **extra}


def test_mgm_folder_values_masks_and_scene_ids(tmp_path):
    written = write_mgm(tmp_path)
    cls = DATASETS.get("mgm_folder")
    info = cls.describe(**mgm_params())
    assert {t: p.name for t, p in info.tasks.items()} == {"semseg": "semseg", "depth": "depth",
                                                        "normals": "normals", "scene": "scene"}
    assert info.tasks["scene"].params == {"num_classes": 3} and info.input_size == (H, W)
    tasks = ["semseg", "depth", "normals", "scene"]
    seen = 0
    for split in ("train", "val", "test"):
        ds = cls(str(tmp_path), split, tasks, **mgm_params())
        for k, (scene_index, scene, stem, _) in enumerate(ds.items):
            item, a = ds[k], written[(scene, stem)]
            assert scene_index == sorted(MGM_SCENES).index(scene)
            assert item["targets"]["scene"].dtype == torch.long and item["targets"]["scene"].item() == scene_index
            assert torch.allclose(item["image"], torch.from_numpy(a["rgb"]).permute(2, 0, 1) / 127.5 - 1, atol=1e-6)
            assert item["image"].min() >= -1 and item["image"].max() <= 1
            assert torch.equal(item["targets"]["semseg"], torch.from_numpy(a["ss"].astype(np.int64)))
            assert item["targets"]["semseg"][1, 1] == 255
            assert torch.equal(item["targets"]["depth"], torch.from_numpy(a["de"])[None])
            n = torch.from_numpy(2 * a["nm"].astype(np.float32) / 255 - 1).permute(2, 0, 1)
            expected = n / n.norm(dim=0, keepdim=True)
            expected[:, 0, 0] = 0  # the mask's invalid pixel
            assert torch.allclose(item["targets"]["normals"], expected, atol=1e-6)
            assert all(v.item() for v in item["mask"].values())
            seen += 1
    assert seen == sum(MGM_SCENES.values())
    imagenet = cls(str(tmp_path), "test", ["depth"], **mgm_params(normalize="imagenet"))[0]["image"]
    plain = cls(str(tmp_path), "test", ["depth"], **mgm_params())[0]["image"]
    assert torch.allclose(imagenet[0], ((plain[0] + 1) / 2 - 0.485) / 0.229, atol=1e-5)


def test_mgm_folder_splits_sizes_determinism_and_seed(tmp_path):
    write_mgm(tmp_path)  # 10 samples
    cls = DATASETS.get("mgm_folder")

    def parts(**extra):
        return {s: cls(str(tmp_path), s, ["scene"], **mgm_params(**extra)).items for s in ("train", "val", "test")}

    default = parts()  # 80 / 10 / 10
    assert {s: len(v) for s, v in default.items()} == {"train": 8, "val": 1, "test": 1}
    counts = parts(val_size=2, test_size=3, seed=4)  # counts, as NYUv2's 200 / 200
    assert {s: len(v) for s, v in counts.items()} == {"train": 5, "val": 2, "test": 3}
    every = sorted(mgm_folder.samples(str(tmp_path)))
    assert sorted(sum(counts.values(), [])) == every  # a partition
    # the definition: a seeded permutation, test first, then val
    order = np.random.default_rng(4).permutation(10)
    assert counts["test"] == [every[i] for i in sorted(order[:3])]
    assert counts["val"] == [every[i] for i in sorted(order[3:5])]
    assert parts(val_size=2, test_size=3, seed=4) == counts  # deterministic
    assert parts(val_size=2, test_size=3, seed=5) != counts
    assert {s: len(v) for s, v in parts(val_size=0.25, test_size=0.3).items()} == {"train": 5, "val": 2, "test": 3}
    assert len(cls(str(tmp_path), "train", ["scene"], **mgm_params(max_samples=3))) == 3
    assert cls.check(str(tmp_path), **mgm_params())["splits"] == {"train": 8, "val": 1, "test": 1}
    with pytest.raises(ValueError, match="give 5 test and 5 val of 10 samples; each split needs at least one"):
        cls(str(tmp_path), "train", ["scene"], **mgm_params(val_size=5, test_size=5))
    with pytest.raises(ValueError, match="each split needs at least one"):
        cls.prepare(str(tmp_path), **mgm_params(val_size=0.01))
    for bad in (0, 1.5, 0.0, -2):
        with pytest.raises(ValueError, match="val_size must be a fraction in \\(0, 1\\) or a count >= 1"):
            cls.describe(val_size=bad)
    with pytest.raises(ValueError, match="val_size: expected integer or number, got True"):
        cls.describe(val_size=True)


def test_mgm_folder_resize_and_flip(tmp_path):
    write_mgm(tmp_path)
    cls = DATASETS.get("mgm_folder")
    small = cls(str(tmp_path), "test", ["semseg", "depth", "normals", "scene"], **mgm_params(image_size=[3, 4]))
    full = cls(str(tmp_path), "test", ["semseg", "depth", "normals"], **mgm_params())
    item, ref = small[0], full[0]
    assert item["image"].shape == (3, 3, 4) and item["targets"]["semseg"].shape == (3, 4)
    assert item["targets"]["depth"].shape == (1, 3, 4) and item["targets"]["normals"].shape == (3, 3, 4)
    # nearest: every class and depth value is one of the original's; normals unit or invalid zero
    assert set(item["targets"]["semseg"].unique().tolist()) <= set(ref["targets"]["semseg"].unique().tolist())
    assert set(item["targets"]["depth"].flatten().tolist()) <= set(ref["targets"]["depth"].flatten().tolist())
    norms = item["targets"]["normals"].norm(dim=0)
    assert torch.all(((norms - 1).abs() < 1e-5) | (norms == 0))
    flips = cls(str(tmp_path), "train", ["normals", "scene"], augment=True, **mgm_params(flip=True))
    plain = cls(str(tmp_path), "train", ["normals", "scene"], **mgm_params())[0]
    assert cls(str(tmp_path), "train", ["normals"], augment=True, **mgm_params()).params.flip is False  # MGM's default
    outcomes = set()
    for seed in range(10):
        torch.manual_seed(seed)
        item = flips[0]
        flipped = not torch.equal(item["image"], plain["image"])
        outcomes.add(flipped)
        assert item["targets"]["scene"] == plain["targets"]["scene"]
        if flipped:
            assert torch.equal(item["targets"]["normals"][0], -plain["targets"]["normals"][0].flip(-1))
    assert outcomes == {True, False}


def test_mgm_folder_errors_name_the_folder_or_file(tmp_path):
    cls = DATASETS.get("mgm_folder")
    write_mgm(tmp_path / "a")
    cls.prepare(str(tmp_path / "a"), **mgm_params())
    shutil.rmtree(tmp_path / "a" / "msk")
    with pytest.raises(DataCheckError, match=r"a.msk: missing folder"):
        cls.prepare(str(tmp_path / "a"), **mgm_params())
    write_mgm(tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "nm")
    with pytest.raises(DataCheckError, match=r"b.nm: missing folder \(normals as RGB pngs; MGM's readme calls it sn\)"):
        cls.prepare(str(tmp_path / "b"), **mgm_params())
    write_mgm(tmp_path / "c")
    shutil.rmtree(tmp_path / "c" / "de" / "kitchen")
    with pytest.raises(DataCheckError, match=r"de.kitchen: missing folder \(scene 'kitchen' of de\)"):
        cls.prepare(str(tmp_path / "c"), **mgm_params())
    write_mgm(tmp_path / "d")
    write_mgm(tmp_path / "e")
    os.remove(tmp_path / "d" / "ss" / "office" / "002.npy")
    with pytest.raises(DataCheckError, match=r"ss.office.002\.npy: missing file \(ss of '002' in scene 'office'\)"):
        cls.prepare(str(tmp_path / "d"), **mgm_params())
    with pytest.raises(DataCheckError, match=r"rgb: 27 scene folders expected \(num_scenes\), found 3: "
                                             r"set num_scenes: 3"):
        cls.prepare(str(tmp_path / "e"), num_classes=5)
    np.save(tmp_path / "e" / "ss" / "bedroom" / "001.npy", np.full((H, W), 5, np.int16))
    with pytest.raises(DataCheckError, match=r"001\.npy: values must be integers in 0\.\.4 or 255"):
        cls.check(str(tmp_path / "e"), **mgm_params())
    np.save(tmp_path / "e" / "ss" / "bedroom" / "001.npy", np.zeros((H, W + 1), np.int16))
    with pytest.raises(DataCheckError, match=rf"001\.npy: {H}x{W} like its image expected, found {H}x{W + 1}"):
        cls.check(str(tmp_path / "e"), **mgm_params())
    with pytest.raises(DataCheckError, match=r"<no root>: the MGM data folder"):
        cls.prepare(None)


def test_mgm_folder_one_epoch_through_the_train_loop(tmp_path):
    write_mgm(tmp_path, scenes={"a": 4, "b": 4, "c": 4}, h=32, w=32)
    cfg = TrialConfig(experiment="t", tasks=("semseg", "normals", "scene"),
                      dataset={"name": "mgm_folder",
                               "params": mgm_params(image_size=[32, 32], val_size=2, test_size=2)},
                      data_root=str(tmp_path),
                      model={"architecture": "mtl_baseline", "backbone": "tiny_cnn", "head": "conv"}, epochs=1,
                      batch_size=2, eval_batch_size=2)
    report = fit(cfg, Session(device=torch.device("cpu")))
    for key in ("val/semseg/miou", "val/normals/mean_angle", "test/scene/top1", "train/scene/loss"):
        assert math.isfinite(report[key]), key


# ---------------------------------------------------------------- labelled / unlabelled split


class InMemory(torch.utils.data.Dataset):
    """Five items with dense targets and a scene label, every task labelled."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((3, 2, 2), float(i)),
                "targets": {"semseg": torch.full((2, 2), i), "depth": torch.full((1, 2, 2), float(i)),
                            "scene": torch.tensor(10 + i)},
                "mask": {t: torch.tensor(True) for t in ("semseg", "depth", "scene")}}


MASK = np.array([[1, 0], [0, 0], [0, 1], [0, 0], [1, 1]], dtype=bool)  # columns semseg, depth


def test_split_unlabelled_exact_sets_and_scene_survives():
    masked = LabelMasked(InMemory(), MASK, ["semseg", "depth"])
    labelled, unlabelled = split_unlabelled(masked, ["semseg", "depth"])
    assert labelled.indices == [0, 2, 4] and unlabelled.indices == [1, 3]
    for k, i in enumerate([1, 3]):
        item = unlabelled[k]
        assert not item["mask"]["semseg"] and not item["mask"]["depth"]
        assert item["mask"]["scene"] and item["targets"]["scene"].item() == 10 + i  # the weak label is kept
    assert [bool(labelled[k]["mask"]["depth"]) for k in range(3)] == [False, True, True]
    only_depth = split_unlabelled(masked, ["depth"])
    assert only_depth[0].indices == [2, 4] and only_depth[1].indices == [0, 1, 3]
    # rows pick the mask row of each item (a weights file indexing the official list)
    reversed_rows = LabelMasked(InMemory(), MASK, ["semseg", "depth"], rows=[4, 3, 2, 1, 0])
    assert [s.indices for s in split_unlabelled(reversed_rows, ["semseg"])] == [[0, 4], [1, 2, 3]]


def test_split_unlabelled_with_an_unlabelled_fraction_and_errors():
    mask = make_label_mask("full", 5, 2, seed=3, unlabelled_fraction=0.4)
    labelled, unlabelled = split_unlabelled(LabelMasked(InMemory(), mask, ["semseg", "depth"]), ["semseg", "depth"])
    assert len(unlabelled) == 2 and sorted(labelled.indices + unlabelled.indices) == list(range(5))
    assert not mask[unlabelled.indices].any() and mask[labelled.indices].all()
    with pytest.raises(TypeError, match="a LabelMasked dataset expected, got InMemory"):
        split_unlabelled(InMemory(), ["semseg"])
    with pytest.raises(ValueError, match=r"subset of the mask's tasks \['semseg', 'depth'\]; got \['scene'\]"):
        split_unlabelled(LabelMasked(InMemory(), MASK, ["semseg", "depth"]), ["scene"])


def test_every_mgm_folder_task_builds():
    info = DATASETS.get("mgm_folder").describe()
    tasks = make_tasks(info, info.tasks)
    assert tasks["scene"].num_classes == 27 and tasks["semseg"].out_channels == 40

"""CelebA and Multi-task CIFAR-100 loaders on tiny fixture trees in the official formats."""
from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import trainables  # noqa: F401
from orchestrator.cli import main
from orchestrator.plan import validate
from orchestrator.spec import load_spec
from search_spaces import preset
from trainables.config import TrialConfig
from trainables.datasets import celeba as cb
from trainables.datasets import multi_cifar100 as mc
from trainables.datasets.readers import DataCheckError
from trainables.registry import DATASETS
from trainables.session import Session
from trainables.train_loop import fit

RNG = np.random.default_rng(0)
PARTITION = [0] * 6 + [1] * 2 + [2] * 2


# ==================================================================================== CelebA
def make_celeba(root, n=10):
    """torchvision's layout; values separated by one or two spaces like the official file."""
    base = root / "celeba"
    os.makedirs(base / "img_align_celeba")
    files = [f"{i + 1:06d}.jpg" for i in range(n)]
    values = RNG.choice([-1, 1], size=(n, 40))
    for f in files:
        Image.fromarray(RNG.integers(0, 255, (22, 18, 3), dtype=np.uint8)).save(base / "img_align_celeba" / f)
    rows = [f + " " + " ".join(f"{v:2d}" for v in row) for f, row in zip(files, values)]
    (base / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(cb.ATTRIBUTES) + " \n" + "\n".join(rows) + "\n")
    (base / "list_eval_partition.txt").write_text("\n".join(f"{f} {p}" for f, p in zip(files, PARTITION[:n])) + "\n")
    return files, values


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba_root")
    return root, *make_celeba(root)


SMALL = {"image_size": [32, 32], "crop_padding": 4}


def test_celeba_attributes_and_partition(celeba):
    root, files, values = celeba
    make = lambda split, **kw: DATASETS.get("celeba")(str(root), split, list(cb.TASK_NAMES), **SMALL, **kw)  # noqa: E731
    assert [len(make(s)) for s in ("train", "val", "test")] == [6, 2, 2]
    val = make("val")
    assert val.files == files[6:8]
    item = val[1]
    smiling = cb.TASK_NAMES.index("attr_smiling")
    assert cb.TASK_NAMES[0] == "attr_5_o_clock_shadow" and len(cb.TASK_NAMES) == 40
    got = [item["targets"][t].item() for t in cb.TASK_NAMES]
    assert got == [(v + 1) / 2 for v in values[7]]  # -1 -> 0, 1 -> 1
    assert item["targets"]["attr_smiling"].item() == (values[7][smiling] + 1) / 2
    assert item["targets"]["attr_smiling"].shape == () and item["targets"]["attr_smiling"].dtype == torch.float32
    assert all(bool(m) for m in item["mask"].values()) and item["image"].shape == (3, 32, 32)
    info = DATASETS.get("celeba").describe()
    assert info.default_batch_sizes == (32, 128, 256) and info.input_size == (224, 224)
    assert info.tasks["attr_young"].name == "attribute"


def test_celeba_augments_only_when_asked(celeba):
    root = celeba[0]
    plain = DATASETS.get("celeba")(str(root), "train", ["attr_male"], **SMALL)
    assert torch.equal(plain[0]["image"], plain[0]["image"])
    aug = DATASETS.get("celeba")(str(root), "train", ["attr_male"], augment=True, **SMALL)
    torch.manual_seed(0)
    assert any(not torch.equal(aug[0]["image"], plain[0]["image"]) for _ in range(3))
    assert aug[0]["targets"]["attr_male"] == plain[0]["targets"]["attr_male"]


def test_celeba_data_check_cli(celeba, tmp_path, capsys):
    root = celeba[0]
    assert main(["data", "check", "--dataset", "celeba", "--root", str(root)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": 6, "val": 2, "test": 2} and summary["checked"]["decoded"] == 10
    assert summary["tasks"]["attr_smiling"]["shape"] == [] and summary["tasks"]["image"]["shape"] == [3, 224, 224]
    make_celeba(tmp_path)
    corrupt = tmp_path / "celeba" / "img_align_celeba" / "000009.jpg"
    corrupt.write_bytes(b"\xff\xd8 truncated")
    assert main(["data", "check", "--dataset", "celeba", "--root", str(tmp_path)]) != 0
    assert "img_align_celeba/000009.jpg" in capsys.readouterr().err


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace(" 1", " 0", 1), r"list_attr_celeba.txt: line 3"),
    (lambda t: t.replace("Smiling", "Smile"), r"list_attr_celeba.txt: line 2"),
    (lambda t: "11" + t[2:], r"list_attr_celeba.txt: 11 images"),
])
def test_celeba_bad_attribute_file_names_it(tmp_path, edit, message):
    make_celeba(tmp_path)
    path = tmp_path / "celeba" / "list_attr_celeba.txt"
    path.write_text(edit(path.read_text()))
    with pytest.raises(DataCheckError, match=message):
        DATASETS.get("celeba").prepare(str(tmp_path))


def test_celeba_trains_one_epoch(celeba):
    cfg = TrialConfig(experiment="t", tasks=("attr_smiling", "attr_male"),
                      dataset={"name": "celeba", "params": SMALL}, data_root=str(celeba[0]),
                      model={"architecture": "mtl_baseline", "backbone": "tiny_cnn", "head": "conv"}, epochs=1,
                      batch_size=2, eval_batch_size=2)
    last = fit(cfg, Session(device=torch.device("cpu")))
    for key in ("val/attr_smiling/accuracy", "test/attr_male/accuracy", "train/attr_male/loss"):
        assert math.isfinite(last[key]), key


def test_survey_celeba_preset_validates():
    spec = load_spec(preset("survey_celeba"))
    info = validate(spec)
    assert len(spec.tasks) == 40 and spec.search.batch_sizes in (None, (32, 128, 256))
    assert info.default_batch_sizes == (32, 128, 256) and spec.backbone.name == "resnet18"
    pascal = load_spec(preset("survey_pascal"))
    validate(pascal)
    weights = pascal.experiments[0].balancer.params["weights"]
    assert weights == {"semseg": 1.0, "human_parts": 2.0, "saliency": 5.0, "edge": 50.0, "normals": 10.0}


# ========================================================================= Multi-task CIFAR-100
COARSE = RNG.permutation(100) // 5  # a valid (random) fine -> superclass assignment for the fixture


def write_cifar(root, n_extra=100, fine_ids=range(100)):
    """Official pickles; each data file holds ``n_extra`` images of superclasses 0 and 1 first
    (so small splits have labels for task_00 / task_01), then every fine class once."""
    base = root / "cifar-100-python"
    os.makedirs(base, exist_ok=True)
    first_two = [f for f in range(100) if COARSE[f] in (0, 1)]
    for name in ("train", "test"):
        fine = np.array([first_two[i % 10] for i in range(n_extra)] + list(fine_ids))
        data = {b"batch_label": b"x", b"filenames": [b"f"] * len(fine),
                b"data": RNG.integers(0, 255, (len(fine), 3072), dtype=np.uint8),
                b"fine_labels": fine.tolist(), b"coarse_labels": COARSE[fine].tolist()}
        with open(base / name, "wb") as fh:
            pickle.dump(data, fh)
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    with open(base / "meta", "wb") as fh:
        pickle.dump(meta, fh)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar_root")
    write_cifar(root)
    return root


def test_cifar_task_class_mapping_and_masks(cifar):
    ds = DATASETS.get("multi_cifar100")(str(cifar), "test", list(mc.TASK_NAMES))
    assert len(ds) == 200
    for i in range(100):  # item 100 + i has fine label i
        item = ds[100 + i]
        task = int(COARSE[i])
        members = sorted(np.flatnonzero(COARSE == task).tolist())
        assert [k for k, t in enumerate(mc.TASK_NAMES) if item["mask"][t]] == [task]
        assert item["targets"][mc.TASK_NAMES[task]].item() == members.index(i)
        assert all(item["targets"][t].item() == 0 for t in mc.TASK_NAMES if t != mc.TASK_NAMES[task])
    assert ds[0]["image"].shape == (3, 32, 32)
    info = DATASETS.get("multi_cifar100").describe()
    assert info.tasks["task_07"].name == "scene" and info.tasks["task_07"].params == {"num_classes": 5}


def test_cifar_splits_and_augmentation(cifar):
    make = lambda split, aug=False: DATASETS.get("multi_cifar100")(str(cifar), split, ["task_00"], augment=aug)  # noqa: E731
    train, val = make("train"), make("val")
    assert len(train) == 180 and len(val) == 20 and not set(train.source_indices) & set(val.source_indices)
    raw = torch.from_numpy(mc.load(str(cifar), "train")["images"][train.source_indices[0]].copy())
    expected = (raw.permute(2, 0, 1).float() / 255 - torch.tensor(mc.CIFAR100_MEAN).view(3, 1, 1)) / torch.tensor(
        mc.CIFAR100_STD).view(3, 1, 1)
    assert torch.allclose(train[0]["image"], expected)  # no augmentation unless asked
    torch.manual_seed(0)
    aug = make("train", True)
    assert any(not torch.allclose(aug[0]["image"], expected) for _ in range(3))


def test_cifar_check_cli_and_bad_files(cifar, tmp_path, capsys):
    assert main(["data", "check", "--dataset", "multi_cifar100", "--root", str(cifar)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": 180, "val": 20, "test": 200} and summary["superclasses"]["task_03"] == "super3"
    write_cifar(tmp_path, fine_ids=range(99))  # fine class 99 missing: its superclass has 4
    assert main(["data", "check", "--dataset", "multi_cifar100", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cifar-100-python/train" in err and "5 fine labels per superclass" in err
    write_cifar(tmp_path)
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataCheckError, match=r"cifar-100-python/test: not a readable CIFAR-100 pickle"):
        DATASETS.get("multi_cifar100").prepare(str(tmp_path))


def test_cifar_trains_one_epoch(cifar):
    cfg = TrialConfig(experiment="t", tasks=("task_00", "task_01"),
                      dataset={"name": "multi_cifar100", "params": {"max_samples": 16}}, data_root=str(cifar),
                      model={"architecture": "mtl_baseline", "backbone": "tiny_cnn", "head": "conv"}, epochs=1,
                      batch_size=2, eval_batch_size=8)
    last = fit(cfg, Session(device=torch.device("cpu")))
    for key in ("val/task_00/top1", "val/task_01/top1", "test/task_00/top1", "train/task_00/loss"):
        assert math.isfinite(last[key]), key

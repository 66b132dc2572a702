"""``mtl data check``: exit 0 and a JSON summary on a good tree; non-zero and the bad file
named on stderr when one file is missing, corrupt or out of range."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from orchestrator.cli import main

# The fixture-tree writers (exact on-disk formats) live beside the loader tests.
from tests.trainables import test_datasets_nyud_cityscapes as fixtures
from tests.trainables.test_datasets_mtan import write_mtan


def run_check(capsys, dataset, root, *params):
    argv = ["data", "check", "--dataset", dataset, "--root", str(root)]
    for p in params:
        argv += ["--param", p]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def nyud_root(tmp_path):
    fixtures.write_nyud(tmp_path, train=fixtures.TRAIN_IDS[:3], val=fixtures.VAL_IDS)
    return tmp_path


def test_good_nyud_tree_prints_json_summary(capsys, nyud_root):
    code, out, err = run_check(capsys, "nyud", nyud_root)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["dataset"] == "nyud" and summary["root"] == str(nyud_root)
    assert summary["splits"] == {"train": 2, "val": 1, "test": 2}
    assert set(summary["tasks"]) == {"image", "semseg", "depth", "normals", "edge"}
    semseg = summary["tasks"]["semseg"]
    assert semseg["shape"] == [48, 64] and semseg["dtype"] == "int64" and 0 <= semseg["min"] <= semseg["max"] <= 39
    assert summary["tasks"]["depth"]["ignored_fraction"] > 0 and summary["tasks"]["depth"]["min"] > 0
    assert summary["checked"] == {"files": 25, "decoded": 5}
    code, _, _ = run_check(capsys, "nyud", nyud_root, "image_size=[48, 64]")
    assert code == 0


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _not_png(path):
    open(path, "wb").write(b"this is not a png")


def _seg_41(path):
    seg = np.array(Image.open(path))
    seg[3, 3] = 41
    Image.fromarray(seg).save(path)


def _normals_out_of_range(path):
    n = np.load(path)
    n[0, 0] = [1.5, 0, 0]
    np.save(path, n)


def _edge_half(path):
    e = np.load(path)
    e[0, 0] = 0.5
    np.save(path, e)


def _negative_depth(path):
    d = np.load(path)
    d[..., 0, 0] = -1
    np.save(path, d)


@pytest.mark.parametrize("rel, corrupt, expected", [
    ("depth/0002.npy", _truncate, "not a readable .npy"),
    ("segmentation/0100.png", _not_png, "not a readable image"),
    ("segmentation/0003.png", _seg_41, "values must be in 0..40"),
    ("normals/0101.npy", _normals_out_of_range, "in [-1, 1]"),
    ("edge/0001.npy", _edge_half, "0 or 1"),
    ("depth/0001.npy", _negative_depth, ">= 0"),
    ("images/0003.jpg", os.remove, "missing file"),
])
def test_corrupt_nyud_file_is_named(capsys, nyud_root, rel, corrupt, expected):
    path = os.path.join(str(nyud_root), rel)
    corrupt(path)
    code, out, err = run_check(capsys, "nyud", nyud_root)
    assert code != 0 and out == ""
    assert path in err and expected in err


def test_wrong_size_and_bad_params(capsys, nyud_root):
    code, _, err = run_check(capsys, "nyud", nyud_root, "image_size=[480, 640]")
    assert code != 0 and "image of 480x640 expected" in err and "0001.jpg" in err
    code, _, err = run_check(capsys, "nyud", nyud_root, "colour=1")
    assert code != 0 and "dataset 'nyud'.colour: unknown key" in err
    code, _, err = run_check(capsys, "nyud", nyud_root / "absent")
    assert code != 0 and "missing folder" in err


def test_mtan_sets(capsys, tmp_path):
    write_mtan(tmp_path / "nyu", "nyuv2_mtan")
    code, out, err = run_check(capsys, "nyuv2_mtan", tmp_path / "nyu")
    assert code == 0, err
    assert json.loads(out)["splits"] == {"train": 4, "val": 1, "test": 2}
    path = str(tmp_path / "nyu" / "train" / "label" / "2.npy")
    label = np.load(path)
    label[0, 0] = 13
    np.save(path, label)
    code, _, err = run_check(capsys, "nyuv2_mtan", tmp_path / "nyu")
    assert code != 0 and path in err and "integers in -1..12" in err
    write_mtan(tmp_path / "cs", "cityscapes_mtan")
    code, out, err = run_check(capsys, "cityscapes_mtan", tmp_path / "cs", "num_classes=19")
    assert code == 0, err
    assert json.loads(out)["tasks"]["semseg"]["max"] <= 18


def test_cityscapes(capsys, tmp_path):
    fixtures.write_cityscapes(tmp_path)
    code, out, err = run_check(capsys, "cityscapes", tmp_path, "size=[8, 16]")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["tasks"]["instance_center"]["shape"] == [2, 8, 16]
    assert summary["tasks"]["semseg"]["max"] <= 18
    path = str(tmp_path / "disparity" / "val" / "frankfurt" / "frankfurt_000001_000019_disparity.png")
    _not_png(path)
    code, _, err = run_check(capsys, "cityscapes", tmp_path)
    assert code != 0 and path in err and "not a readable image" in err


def test_synthetic(capsys, tmp_path):
    code, out, err = run_check(capsys, "synthetic", tmp_path, "image_size=32", "num_train=4", "num_val=2",
                               "num_test=2")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["splits"] == {"train": 4, "val": 2, "test": 2}
    assert set(summary["tasks"]) == {"image", "semseg", "depth", "normals", "edge", "scene"}

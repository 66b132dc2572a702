"""Partially labelled MTL: the JTR / MTPSL label settings, the label-mask file, the MTPSL
.pth reader, materialize (one file per study) and LabelMasked."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from trainables.datasets import partial


# ---------------------------------------------------------------- settings


def test_onelabel_exactly_one_and_balanced():
    m = partial.make_label_mask("onelabel", 100, 3, seed=1)
    assert m.shape == (100, 3) and m.dtype == bool
    assert (m.sum(1) == 1).all()
    counts = m.sum(0)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 100


def test_randomlabels_between_one_and_k_minus_one():
    m = partial.make_label_mask("randomlabels", 2000, 4, seed=0)
    per_row = m.sum(1)
    assert per_row.min() == 1 and per_row.max() == 3
    assert set(np.unique(per_row)) == {1, 2, 3}
    assert abs(per_row.mean() - 2.0) < 0.1  # uniform on 1..K-1: mean K/2
    assert (m.mean(0) > 0.4).all() and (m.mean(0) < 0.6).all()  # every task equally likely
    with pytest.raises(ValueError, match="at least 2 tasks"):
        partial.make_label_mask("randomlabels", 10, 1)


@pytest.mark.parametrize("k, allowed", [(7, {3, 4}), (4, {2}), (3, {1, 2})])
def test_halflabels_floor_or_ceil_half(k, allowed):
    m = partial.make_label_mask("halflabels", 101, k, seed=3)
    per_row = m.sum(1)
    assert set(np.unique(per_row)) == allowed
    if len(allowed) == 2:  # each count on half of the images: mean K / 2
        lo, hi = sorted(allowed)
        assert abs(int((per_row == lo).sum()) - int((per_row == hi).sum())) <= 1


@pytest.mark.parametrize("setting", partial.SETTINGS)
def test_unlabelled_rows_and_fraction(setting):
    m = partial.make_label_mask(setting, 50, 3, seed=2, unlabelled_fraction=0.3)
    empty = ~m.any(1)
    assert empty.sum() == 15  # round(0.3 * 50)
    labelled = m[~empty]
    if setting == "full":
        assert labelled.all()
    if setting == "onelabel":
        assert (labelled.sum(1) == 1).all() and np.ptp(labelled.sum(0)) <= 1


def test_determinism_by_seed():
    a = partial.make_label_mask("randomlabels", 64, 5, seed=7, unlabelled_fraction=0.2)
    b = partial.make_label_mask("randomlabels", 64, 5, seed=7, unlabelled_fraction=0.2)
    c = partial.make_label_mask("randomlabels", 64, 5, seed=8, unlabelled_fraction=0.2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("kwargs, match", [
    (dict(setting="twolabels"), "valid settings: full, onelabel, randomlabels, halflabels"),
    (dict(unlabelled_fraction=1.0), "unlabelled_fraction"),
    (dict(seed=-1), "seed"),
    (dict(num_samples=0), "num_samples"),
])
def test_bad_arguments(kwargs, match):
    args = {"setting": "onelabel", "num_samples": 10, "num_tasks": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        partial.make_label_mask(**args)


# ---------------------------------------------------------------- files


def test_save_load_round_trip_is_atomic(tmp_path):
    mask = partial.make_label_mask("randomlabels", 13, 3, seed=4)  # 39 bits: not a whole byte
    path = str(tmp_path / "sub" / "m.npz")
    assert partial.save_label_mask(path, mask, ["semseg", "depth", "normals"], {"setting": "x"}) == path
    loaded, names, meta = partial.load_label_mask(path)
    assert np.array_equal(loaded, mask) and names == ["semseg", "depth", "normals"]
    assert meta["setting"] == "x"
    assert os.listdir(tmp_path / "sub") == ["m.npz"]  # no temporary left behind
    with pytest.raises(ValueError, match="not a readable label-mask file"):
        partial.load_label_mask(str(tmp_path / "missing.npz"))


def test_load_label_weights_pth(tmp_path):
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    path = str(tmp_path / "onelabel.pth")
    torch.save({"labels_weights": weights}, path)
    mask = partial.load_label_weights(path, ["semseg", "depth", "normals"])
    assert mask.dtype == bool and mask.tolist() == [[True, False, False], [False, True, True], [False, False, False]]
    with pytest.raises(ValueError, match=r"onelabel\.pth: labels_weights of shape \[N, 2\]"):
        partial.load_label_weights(path, ["semseg", "depth"])
    torch.save({"weights": weights}, str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match=r"bad\.pth: a dict with key 'labels_weights'"):
        partial.load_label_weights(str(tmp_path / "bad.pth"), ["semseg", "depth", "normals"])
    (tmp_path / "junk.pth").write_bytes(b"not torch")
    with pytest.raises(ValueError, match=r"junk\.pth: not a readable \.pth"):
        partial.load_label_weights(str(tmp_path / "junk.pth"), ["semseg"])


def test_materialize_writes_once_and_reuses(tmp_path):
    spec = {"setting": "onelabel", "seed": 0}
    path = partial.materialize(str(tmp_path), 20, ["semseg", "depth"], spec)
    assert os.path.dirname(path) == str(tmp_path / "labels")
    assert os.path.basename(path).startswith("onelabel-") and path.endswith(".npz")
    stamp = os.stat(path).st_mtime_ns
    assert partial.materialize(str(tmp_path), 20, ["semseg", "depth"], dict(spec)) == path
    assert os.stat(path).st_mtime_ns == stamp  # reused, not rewritten
    other = partial.materialize(str(tmp_path), 20, ["semseg", "depth"], {"setting": "onelabel", "seed": 1})
    assert other != path
    mask, names, meta = partial.load_label_mask(path)
    assert mask.shape == (20, 2) and names == ["semseg", "depth"] and meta["rows"] == "items"
    with pytest.raises(ValueError, match="labels.seeds: unknown key; valid keys: setting, seed, unlabelled_fraction"):
        partial.materialize(str(tmp_path), 20, ["semseg"], {"setting": "onelabel", "seeds": 1})
    with pytest.raises(ValueError, match="valid settings"):
        partial.materialize(str(tmp_path), 20, ["semseg"], {"setting": "most"})


def test_materialize_from_weights_file(tmp_path):
    weights = (torch.rand(10, 3) > 0.5).float()
    src = str(tmp_path / "randomlabels.pth")
    torch.save({"labels_weights": weights}, src)
    tasks = ["semseg", "depth", "normals"]
    same = partial.materialize(str(tmp_path / "study"), 10, tasks, {"weights_file": src})
    mask, names, meta = partial.load_label_mask(same)
    assert np.array_equal(mask, weights.numpy() > 0) and names == tasks and meta["rows"] == "items"
    assert os.path.basename(same).startswith("randomlabels-")
    held_out = partial.materialize(str(tmp_path / "study"), 8, ["depth"], {"weights_file": src, "tasks": tasks})
    assert partial.load_label_mask(held_out)[2]["rows"] == "source"
    with pytest.raises(ValueError, match="fewer than the 11 training samples"):
        partial.materialize(str(tmp_path / "study"), 11, tasks, {"weights_file": src})


# ---------------------------------------------------------------- LabelMasked


class Toy(torch.utils.data.Dataset):
    def __init__(self, n, tasks=("semseg", "depth", "normals"), source_indices=None):
        self.n, self.tasks = n, tasks
        if source_indices is not None:
            self.source_indices = source_indices

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.full((3, 2, 2), float(i)), "targets": {t: torch.zeros(1) for t in self.tasks},
                "mask": {t: torch.tensor(t != "normals" or i != 0) for t in self.tasks}}


def test_label_masked_ands_masks_by_task_name(tmp_path):
    mask = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 0]], dtype=bool)
    path = partial.save_label_mask(str(tmp_path / "m.npz"), mask, ["semseg", "depth", "normals"], {})
    ds = partial.LabelMasked.from_file(Toy(3), path, ["normals", "semseg"])  # a subset, reordered
    assert len(ds) == 3
    masks = [{t: bool(v) for t, v in ds[i]["mask"].items()} for i in range(3)]
    assert masks[0] == {"semseg": True, "depth": True, "normals": False}  # the item's own False stays
    assert masks[1] == {"semseg": False, "depth": True, "normals": True}  # depth not masked: not in tasks
    assert masks[2] == {"semseg": False, "depth": True, "normals": False}
    assert torch.equal(ds[2]["image"], Toy(3)[2]["image"])
    with pytest.raises(ValueError, match=r"m\.npz: 3 rows for a dataset of 4 samples"):
        partial.LabelMasked.from_file(Toy(4), path, ["semseg"])
    with pytest.raises(ValueError, match=r"no labels for task\(s\) \['edge'\]"):
        partial.LabelMasked.from_file(Toy(3), path, ["edge"])


def test_label_masked_source_rows(tmp_path):
    mask = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=bool)
    path = partial.save_label_mask(str(tmp_path / "w.npz"), mask, ["semseg", "depth"], {"rows": "source"})
    ds = partial.LabelMasked.from_file(Toy(2, ("semseg", "depth"), source_indices=[3, 1]), path, ["semseg", "depth"])
    assert [bool(ds[0]["mask"][t]) for t in ("semseg", "depth")] == [False, False]
    assert [bool(ds[1]["mask"][t]) for t in ("semseg", "depth")] == [False, True]
    with pytest.raises(ValueError, match="no source_indices"):
        partial.LabelMasked.from_file(Toy(2, ("semseg", "depth")), path, ["semseg"])


def test_label_file_through_the_train_loop(tmp_path):
    from trainables.config import TrialConfig
    from trainables.datasets.synthetic import SyntheticScenes
    from trainables.session import Session
    from trainables.train_loop import fit

    params = dict(image_size=32, num_train=8, num_val=4, num_test=4)
    SyntheticScenes.prepare(str(tmp_path), **params)
    label_file = partial.materialize(str(tmp_path / "study"), 8, ["semseg", "depth"], {"setting": "onelabel"})
    cfg = TrialConfig(experiment="t", tasks=("semseg", "depth"), data_root=str(tmp_path),
                      dataset={"name": "synthetic", "params": params}, epochs=1, batch_size=2, eval_batch_size=4,
                      label_file=label_file)
    report = fit(cfg, Session(device=torch.device("cpu")))
    assert math.isfinite(report["val/semseg/miou"]) and math.isfinite(report["test/depth/rmse"])

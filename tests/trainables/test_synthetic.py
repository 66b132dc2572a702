"""The embedded synthetic dataset: determinism, cache behaviour, cross-task consistency and
the dataset item contract."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from trainables.datasets import render
from trainables.datasets import synthetic as syn
from trainables.datasets.base import DatasetInfo
from trainables.registry import DATASETS

SMALL = dict(image_size=32, num_train=12, num_val=4, num_test=4, seed=3)
ALL_TASKS = list(syn.TASK_NAMES)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    syn.SyntheticScenes.prepare(root, **SMALL)
    return root


@pytest.fixture(scope="module")
def rendered():
    """A few dozen 64 px scenes straight from the renderer (with instance maps)."""
    return [render.render_index(0, 0, i, 64, 0.0) for i in range(36)]


# ---------------------------------------------------------------- determinism and the cache


def test_registered_and_described():
    assert DATASETS.get("synthetic") is syn.SyntheticScenes
    info = syn.SyntheticScenes.describe(image_size=96)
    assert isinstance(info, DatasetInfo) and info.name == "synthetic"
    assert set(info.tasks) == set(syn.TASK_NAMES)
    assert info.tasks["semseg"].params == {"num_classes": syn.N_CLASSES} and syn.N_CLASSES >= 6
    assert info.tasks["scene"].params == {"num_classes": syn.N_SCENES} and syn.N_SCENES >= 5
    assert info.input_size == (96, 96) and info.default_batch_sizes == (8, 16, 32)


def test_image_is_a_function_of_seed_split_index():
    batch = render.render_batch(7, 1, [0, 1, 2, 3], 32, 0.02)
    alone = render.render_index(7, 1, 2, 32, 0.02)
    for key, value in alone.items():
        np.testing.assert_array_equal(batch[key][2], value)
    other_seed = render.render_index(8, 1, 2, 32, 0.02)
    other_split = render.render_index(7, 2, 2, 32, 0.02)
    assert not np.array_equal(other_seed["image"], alone["image"])
    assert not np.array_equal(other_split["image"], alone["image"])


def test_cache_matches_renderer_whatever_the_split_sizes(small_root, tmp_path):
    ds = syn.SyntheticScenes(small_root, "train", ALL_TASKS, **SMALL)
    bigger = dict(SMALL, num_train=15)  # another cache, other shard contents
    ds2 = syn.SyntheticScenes(str(tmp_path), "train", ALL_TASKS, **bigger)
    for i in (0, 5, 11):
        ref = render.render_index(SMALL["seed"], syn.SPLIT_IDS["train"], i, 32, 0.02)
        for key in ("image", "semseg", "edge"):
            np.testing.assert_array_equal(ds._arrays[key][i], ref[key])
            np.testing.assert_array_equal(ds2._arrays[key][i], ref[key])
        np.testing.assert_array_equal(ds._arrays["depth"][i], ref["depth"])
        np.testing.assert_allclose(ds._arrays["normals"][i], ref["normals"], atol=1e-3)
        assert ds._arrays["scene"][i] == ref["scene"]


def test_a_row_of_the_wrong_size_is_refused_naming_the_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = syn.SyntheticScenes.prepare(str(tmp_path), **SMALL)
    shard = os.path.join(path, "val-00000.parquet")
    table = pq.read_table(shard)
    depth = table.column("depth").to_pylist()
    depth[2] = depth[2][:-4]  # one float short
    pq.write_table(table.set_column(table.schema.get_field_index("depth"), "depth", pa.array(depth, pa.binary())),
                   shard)
    with pytest.raises(RuntimeError, match=r"column 'depth' has rows of another size than \d+ bytes"):
        syn.SyntheticScenes(str(tmp_path), "val", ["depth"], **SMALL)
    assert len(syn.SyntheticScenes(str(tmp_path), "val", ["semseg"], **SMALL)) == SMALL["num_val"]  # other columns load


def test_cache_layout_and_reuse(small_root, monkeypatch):
    params = syn.SyntheticParams(**SMALL)
    path = syn.SyntheticScenes.prepare(small_root, **SMALL)
    assert os.path.basename(path) == f"synthetic-{params.cache_key()}"
    assert len(params.cache_key()) == 12
    files = sorted(os.listdir(path))
    assert files == ["meta.json", "test-00000.parquet", "train-00000.parquet", "val-00000.parquet"]
    meta = json.load(open(os.path.join(path, "meta.json")))
    assert meta["version"] == syn.GENERATOR_VERSION and meta["counts"]["train"] == 12

    def boom(*a, **k):
        raise AssertionError("regenerated a complete cache")

    monkeypatch.setattr(syn, "_write_cache", boom)
    assert syn.SyntheticScenes.prepare(small_root, **SMALL) == path
    syn.SyntheticScenes(small_root, "val", ["depth"], **SMALL)  # loading does not render either


def test_incomplete_cache_is_regenerated(tmp_path):
    params = syn.SyntheticParams(**SMALL)
    path = syn.cache_dir(str(tmp_path), params)
    os.makedirs(path)
    with open(os.path.join(path, "train-00000.parquet"), "wb") as f:
        f.write(b"half a file")  # a crashed writer, no meta.json
    assert not syn.is_complete(path, params)
    assert syn.SyntheticScenes.prepare(str(tmp_path), **SMALL) == path
    assert syn.is_complete(path, params)
    ds = syn.SyntheticScenes(str(tmp_path), "train", ["scene"], **SMALL)
    assert len(ds) == 12
    leftovers = [n for n in os.listdir(tmp_path) if n != os.path.basename(path)]
    assert leftovers == []  # no temporary or stale directories left behind


def test_publish_keeps_the_first_complete_cache(small_root, tmp_path):
    params = syn.SyntheticParams(**SMALL)
    final = syn.cache_dir(small_root, params)
    before = os.stat(os.path.join(final, "meta.json")).st_mtime_ns
    tmp = tmp_path / "mine"
    tmp.mkdir()
    (tmp / "meta.json").write_text("{}")
    syn._publish(str(tmp), final, params)  # a concurrent writer finishing second
    assert not tmp.exists()
    assert os.stat(os.path.join(final, "meta.json")).st_mtime_ns == before


# ---------------------------------------------------------------- rendering in several processes

# Computed with the single-process writer before rendering was parallel: the key's meaning and
# the cached values must not change with it.
GOLDEN_KEYS = {"default": "d3bf1a9f7a87", "small": "aaac206fb107", "golden": "c54efe5b9fa4"}
GOLDEN = dict(image_size=32, num_train=9, num_val=3, num_test=2, seed=5)
GOLDEN_CONTENT_SHA256 = "ae173f3ea8ee6041e0e65f5de92724221db06be032d6d39fe8e5933f91552601"


def _files(path: str) -> dict:
    return {name: open(os.path.join(path, name), "rb").read() for name in sorted(os.listdir(path))}


def _content_sha256(path: str) -> str:
    """sha256 over every stored value, split by split and column by column (independent of
    Parquet's encoding and of the shard size)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    h = hashlib.sha256()
    for split in ("test", "train", "val"):
        names = sorted(n for n in os.listdir(path) if n.startswith(split + "-"))
        table = pa.concat_tables([pq.read_table(os.path.join(path, n)) for n in names])
        for col in table.column_names:
            for value in table.column(col).to_pylist():
                h.update(value if isinstance(value, bytes) else str(value).encode())
    return h.hexdigest()


def test_cache_key_is_unchanged():
    assert syn.SyntheticParams().cache_key() == GOLDEN_KEYS["default"]
    assert syn.SyntheticParams(**SMALL).cache_key() == GOLDEN_KEYS["small"]
    assert syn.SyntheticParams(**GOLDEN).cache_key() == GOLDEN_KEYS["golden"]


def test_two_processes_write_the_bytes_one_process_writes(tmp_path, monkeypatch):
    # Shards of 4 rows from jobs of 3: a shard is assembled from jobs and jobs cross no shard.
    monkeypatch.setattr(syn, "ROWS_PER_SHARD", 4)
    monkeypatch.setattr(syn, "ROWS_PER_JOB", 3)
    one = syn.SyntheticScenes.prepare(str(tmp_path / "one"), workers=1, **GOLDEN)
    two = syn.SyntheticScenes.prepare(str(tmp_path / "two"), workers=2, **GOLDEN)
    assert os.path.basename(one) == os.path.basename(two) == f"synthetic-{GOLDEN_KEYS['golden']}"
    files = _files(one)
    assert sorted(files) == ["meta.json", "test-00000.parquet", "train-00000.parquet", "train-00001.parquet",
                             "train-00002.parquet", "val-00000.parquet"]
    assert _files(two) == files
    assert _content_sha256(two) == GOLDEN_CONTENT_SHA256  # the rows, whatever the shard size


def test_default_worker_count_keeps_the_golden_cache(tmp_path):
    path = syn.SyntheticScenes.prepare(str(tmp_path), **GOLDEN)  # one process per CPU, at most one per job
    assert _content_sha256(path) == GOLDEN_CONTENT_SHA256
    ds = syn.SyntheticScenes(str(tmp_path), "val", ALL_TASKS, **GOLDEN)
    ref = render.render_index(GOLDEN["seed"], syn.SPLIT_IDS["val"], 2, 32, 0.02)
    np.testing.assert_array_equal(ds._arrays["image"][2], ref["image"])


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_bad_worker_count_is_refused(tmp_path, workers):
    with pytest.raises(ValueError, match=f"synthetic: workers must be a positive int .*got {workers!r}"):
        syn.SyntheticScenes.prepare(str(tmp_path), workers=workers, **GOLDEN)
    assert os.listdir(tmp_path) == []  # the temporary folder is removed


# ---------------------------------------------------------------- cross-task consistency


def _normals_from_depth(depth: np.ndarray) -> np.ndarray:
    """Back-project with the intrinsics, cross the forward differences, face the camera."""
    size = depth.shape[0]
    f, _, cx, cy = render.intrinsics(size)
    u = np.arange(size) + 0.5
    x = (u[None, :] - cx) / f * depth
    y = (u[:, None] - cy) / f * depth
    pts = np.stack([x, y, depth], axis=-1).astype(np.float64)
    du = pts[:-1, 1:] - pts[:-1, :-1]
    dv = pts[1:, :-1] - pts[:-1, :-1]
    n = np.cross(du, dv)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    flip = (n * pts[:-1, :-1]).sum(-1) > 0
    n[flip] *= -1
    return n


def test_normals_agree_with_depth_geometry(rendered):
    errors = []
    for r in rendered:
        est = _normals_from_depth(r["depth"])
        inst = r["instance"]
        # pixels whose forward-difference stencil stays on one surface instance
        same = (inst[:-1, :-1] == inst[:-1, 1:]) & (inst[:-1, :-1] == inst[1:, :-1])
        ok = same & (r["edge"][:-1, :-1] == 0)
        cos = np.clip((est * r["normals"][:-1, :-1]).sum(-1), -1, 1)
        errors.append(np.degrees(np.arccos(cos[ok])))
    assert np.median(np.concatenate(errors)) < 5.0


def test_edges_lie_on_label_or_depth_discontinuities(rendered):
    for r in rendered:
        sem, inst, depth, edge = r["semseg"], r["instance"], r["depth"], r["edge"].astype(bool)
        assert edge.any() and not edge.all()
        disc = np.zeros_like(edge)
        for a, b in (((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
                     ((slice(None), slice(None, -1)), (slice(None), slice(1, None)))):
            jump = np.abs(depth[a] - depth[b]) > render.EDGE_DEPTH_REL_JUMP * np.minimum(
                depth[a], depth[b])
            label_change = sem[a] != sem[b]
            d = label_change | (inst[a] != inst[b]) | jump
            disc[a] |= d
            disc[b] |= d
            # every semantic change is marked on both of its pixels
            assert edge[a][label_change].all() and edge[b][label_change].all()
        np.testing.assert_array_equal(edge, disc)


def test_geometry_outputs_are_valid(rendered):
    for r in rendered:
        assert r["depth"].dtype == np.float32 and (r["depth"] > 0).all()
        norms = np.linalg.norm(r["normals"], axis=-1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-4)
        rays = render.pixel_rays(64).reshape(64, 64, 3)
        assert ((r["normals"] * rays).sum(-1) < 1e-6).all()  # facing the camera
        assert r["image"].dtype == np.uint8 and r["image"].shape == (64, 64, 3)
        assert set(np.unique(r["edge"])) <= {0, 1}
    classes = np.unique(np.concatenate([r["semseg"].ravel() for r in rendered]))
    assert len(classes) >= 6 and classes.max() < syn.N_CLASSES
    scenes = {int(r["scene"]) for r in rendered}
    assert len(scenes) >= 5


def test_scene_label_is_the_majority_of_visible_objects(rendered):
    """The scene label must be predictable from the image: its class is a strict majority of
    the objects that cover at least 0.2% of the pixels."""
    for r in rendered:
        sizes = np.bincount(r["instance"].ravel())
        seen = [int(r["semseg"][r["instance"] == i][0]) for i in range(2, len(sizes))
                if sizes[i] >= 0.002 * sizes.sum()]
        major = render.OBJECT_KINDS[int(r["scene"])]
        assert 2 * seen.count(major) > len(seen)


# ---------------------------------------------------------------- the Dataset item contract


def test_item_contract(small_root):
    ds = syn.SyntheticScenes(small_root, "test", ALL_TASKS, **SMALL)
    assert len(ds) == 4
    item = ds[1]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    t = item["targets"]
    assert t["semseg"].shape == (32, 32) and t["semseg"].dtype == torch.long
    assert t["depth"].shape == (1, 32, 32) and t["depth"].dtype == torch.float32
    assert t["normals"].shape == (3, 32, 32) and t["normals"].dtype == torch.float32
    assert t["edge"].shape == (1, 32, 32) and set(t["edge"].unique().tolist()) <= {0.0, 1.0}
    assert t["scene"].shape == () and t["scene"].dtype == torch.long
    torch.testing.assert_close(t["normals"].norm(dim=0), torch.ones(32, 32))
    assert set(item["mask"]) == set(ALL_TASKS)
    assert all(m.dtype == torch.bool and m.shape == () and bool(m) for m in item["mask"].values())
    only = syn.SyntheticScenes(small_root, "test", ["depth"], **SMALL)[1]
    assert set(only["targets"]) == {"depth"} and set(only["mask"]) == {"depth"}
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["targets"]["scene"].shape == (4,) and batch["mask"]["edge"].shape == (4,)


def test_flip_augmentation_is_consistent(small_root):
    plain = syn.SyntheticScenes(small_root, "train", ALL_TASKS, **SMALL)
    aug = syn.SyntheticScenes(small_root, "train", ALL_TASKS, augment=True, **SMALL)
    torch.manual_seed(0)
    flipped = 0
    for i in range(len(plain)):
        a, b = plain[i], aug[i]
        if torch.equal(a["image"], b["image"]):
            continue
        flipped += 1
        torch.testing.assert_close(b["image"], a["image"].flip(-1))
        for task in ("semseg", "depth", "edge"):
            torch.testing.assert_close(b["targets"][task], a["targets"][task].flip(-1))
        n = a["targets"]["normals"].flip(-1)
        torch.testing.assert_close(b["targets"]["normals"][0], -n[0])
        torch.testing.assert_close(b["targets"]["normals"][1:], n[1:])
        assert b["targets"]["scene"] == a["targets"]["scene"]
    assert 0 < flipped < len(plain)
    torch.manual_seed(0)
    again = [aug[i]["image"] for i in range(len(aug))]
    torch.manual_seed(0)
    assert all(torch.equal(x, aug[i]["image"]) for i, x in enumerate(again))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("field,value", [
    ("image_size", 48), ("image_size", 16), ("image_size", 64.0), ("num_train", 0),
    ("num_val", -1), ("num_test", True), ("seed", -1), ("noise_std", 1.5), ("noise_std", "x"),
])
def test_bad_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        syn.SyntheticParams(**{field: value})
    with pytest.raises(ValueError, match=field):
        syn.SyntheticScenes.describe(**{field: value})


def test_unknown_param_split_and_task(small_root):
    with pytest.raises(ValueError, match="image_size"):
        syn.SyntheticScenes.describe(img_size=32)
    with pytest.raises(ValueError, match="train, val, test"):
        syn.SyntheticScenes(small_root, "validation", ["depth"], **SMALL)
    with pytest.raises(ValueError, match="semseg, depth, normals, edge, scene"):
        syn.SyntheticScenes(small_root, "train", ["depth", "saliency"], **SMALL)


def test_task_copies_serve_their_source_and_share_the_cache(small_root):
    """A planted relation for task-grouping tests: a copy is its source task under another name."""
    plain = syn.SyntheticScenes(small_root, "train", ["depth", "semseg"], **SMALL)
    copied = syn.SyntheticScenes(small_root, "train", ["depth", "depth_copy", "semseg_copy"],
                                 copies={"depth_copy": "depth", "semseg_copy": "semseg"}, **SMALL)
    assert copied.path == plain.path  # copies are served, not rendered: the same cache
    a, b = plain[3], copied[3]
    assert torch.equal(b["targets"]["depth_copy"], a["targets"]["depth"])
    assert torch.equal(b["targets"]["semseg_copy"], a["targets"]["semseg"])
    info = syn.SyntheticScenes.describe(copies={"depth_copy": "depth"}, **SMALL)
    assert info.tasks["depth_copy"] == info.tasks["depth"]
    with pytest.raises(ValueError, match="copies.depth: a copy needs a new task name"):
        syn.SyntheticParams(copies={"depth": "semseg"})
    with pytest.raises(ValueError, match="copies.x: .* got 'flow'"):
        syn.SyntheticParams(copies={"x": "flow"})

"""The embedded synthetic multi-task dataset: the product's default dataset.

Procedurally ray-cast scenes (see ``render.py``) with six consistent outputs per image: RGB,
semantic segmentation (7 classes), metric depth, surface normals, semantic edges and a scene
label (5 classes). It needs no download, so every preset can run in miniature on a laptop,
and its tasks share one geometry, so sharing a network between them can help or hurt
measurably.

Images are pure functions of (seed, split, index). They are rendered once by ``prepare`` and
cached as Parquet shards in ``<root>/synthetic-<key>/``, where ``key`` hashes the parameters
and ``GENERATOR_VERSION`` (bump it whenever the renderer's output changes). A cache directory
is complete only when its ``meta.json`` (written last) exists and matches; it is written
into a temporary directory and renamed into place, so a crash or a concurrent writer never
leaves a half cache that is taken for a whole one. ``prepare`` renders jobs of
``ROWS_PER_JOB`` images across processes (one per CPU by default) and writes the shards in
order: the same bytes as one process makes, so the number of processes is not in the key.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from trainables.datasets import render
from trainables.datasets.base import SPLITS, DatasetInfo, make_tasks
from trainables.datasets.summary import summarize
from trainables.datasets.transforms import normalize_image, random_hflip, unit_normals
from trainables.plugins import Configurable, Plugin
from trainables.registry import register_dataset

GENERATOR_VERSION = 1
N_CLASSES = render.N_CLASSES
N_SCENES = render.N_SCENES
CLASS_NAMES = render.CLASS_NAMES
SCENE_NAMES = render.SCENE_NAMES
TASK_NAMES = ("semseg", "depth", "normals", "edge", "scene")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
ROWS_PER_SHARD = 512
ROWS_PER_JOB = 64  # images per rendering job: 8 per full shard, so 400 images keep 2 processes busy
# Per-channel statistics of the default parameters' training images (measured, rounded).
IMAGE_MEAN = (0.36, 0.34, 0.32)
IMAGE_STD = (0.13, 0.12, 0.14)

# Parquet column -> (numpy dtype stored, per-image shape as a function of the image size).
_DENSE_COLUMNS = {
    "image": (np.uint8, lambda s: (s, s, 3)),
    "semseg": (np.uint8, lambda s: (s, s)),
    "depth": (np.float32, lambda s: (s, s)),  # float16 would cost ~4 mm at 8 m: too coarse
    "normals": (np.float16, lambda s: (s, s, 3)),  # renormalised when served
    "edge": (np.uint8, lambda s: (s, s)),
}


@dataclass(frozen=True)
class SyntheticParams:
    """Generator parameters; all of them but ``copies`` key the cache.

    Attributes:
        image_size: side of the square images, a multiple of 32 in [32, 256] so that every
            backbone's stride-32 feature map tiles the image exactly.
        num_train, num_val, num_test: images per split (>= 1 each).
        seed: generator seed (>= 0); image i of a split is the same for any split sizes.
        noise_std: std of the Gaussian pixel noise, in [0, 1] intensity units.
        copies: extra task name -> the task it copies (same targets, same task type), e.g.
            {"depth_copy": "depth"}: a planted relation between tasks whose answer is known
            (task-grouping searches must put a task and its copy together). Served only.
    """

    image_size: int = 64
    num_train: int = 2000
    num_val: int = 300
    num_test: int = 300
    seed: int = 0
    noise_std: float = 0.02
    copies: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.image_size
        if not _is_int(s) or not 32 <= s <= 256 or s % 32:
            raise ValueError(f"synthetic: image_size must be a multiple of 32 in [32, 256] "
                             f"(32, 64, 96, ..., 256), got {s!r}")
        for name in ("num_train", "num_val", "num_test"):
            v = getattr(self, name)
            if not _is_int(v) or not 1 <= v <= 10_000_000:
                raise ValueError(f"synthetic: {name} must be an int in [1, 10000000], got {v!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise ValueError(f"synthetic: seed must be a non-negative int, got {self.seed!r}")
        v = self.noise_std
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ValueError(f"synthetic: noise_std must be a float in [0, 1], got {v!r}")
        object.__setattr__(self, "noise_std", float(v))  # 0 and 0.0 must key the same cache
        for name, source in self.copies.items():
            if source not in TASK_NAMES or name in TASK_NAMES or not name.replace("_", "").isalnum():
                raise ValueError(f"synthetic: copies.{name}: a copy needs a new task name (letters, digits, '_') "
                                 f"and one of {', '.join(TASK_NAMES)} as its source, got {source!r}")

    def rendering(self) -> Dict[str, object]:
        """The parameters that decide the rendered images (what keys the cache)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "copies"}

    def count(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]

    def cache_key(self) -> str:
        """First 12 hex digits of the sha256 of the canonical JSON of params + version."""
        blob = json.dumps({"params": self.rendering(), "version": GENERATOR_VERSION},
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def default_root() -> str:
    return os.path.join(os.path.expanduser(os.environ.get("MTL_CACHE_DIR", "~/.cache/mtl")),
                        "synthetic")


def cache_dir(root: Optional[str], params: SyntheticParams) -> str:
    root = default_root() if root is None else os.path.expanduser(str(root))
    return os.path.join(root, f"synthetic-{params.cache_key()}")


def _shard_names(params: SyntheticParams, split: str) -> list[str]:
    n_shards = -(-params.count(split) // ROWS_PER_SHARD)
    return [f"{split}-{k:05d}.parquet" for k in range(n_shards)]


def is_complete(path: str, params: SyntheticParams) -> bool:
    """Whether ``path`` holds a finished cache made with ``params`` by this generator."""
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    if meta.get("version") != GENERATOR_VERSION or meta.get("params") != params.rendering():
        return False
    return all(os.path.isfile(os.path.join(path, name))
               for split in SPLITS for name in _shard_names(params, split))


def _write_cache(out: str, params: SyntheticParams, workers: Optional[int] = None) -> None:
    """Render every split into ``out`` (shards first, meta.json last), in ``workers`` processes
    (``render.render_jobs``); the files are the same bytes whatever their number."""
    s = params.image_size
    shards = [(split, name, np.arange(k * ROWS_PER_SHARD, min(params.count(split), (k + 1) * ROWS_PER_SHARD)))
              for split in SPLITS for k, name in enumerate(_shard_names(params, split))]
    jobs = [(SPLIT_IDS[split], idx[i:i + ROWS_PER_JOB]) for split, _, idx in shards
            for i in range(0, len(idx), ROWS_PER_JOB)]
    with contextlib.closing(render.render_jobs(params.seed, jobs, s, params.noise_std, workers)) as batches:
        for split, name, idx in shards:
            parts = [next(batches) for _ in range(0, len(idx), ROWS_PER_JOB)]
            arrays = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
            columns = {"index": pa.array(idx.astype(np.int32), pa.int32())}
            for col, (dtype, _) in _DENSE_COLUMNS.items():
                data = arrays[col].astype(dtype, copy=False)
                columns[col] = pa.array([row.tobytes() for row in data], pa.binary())
            columns["scene"] = pa.array(arrays["scene"].astype(np.int16), pa.int16())
            pq.write_table(pa.table(columns), os.path.join(out, name))
    meta = {
        "version": GENERATOR_VERSION,
        "params": params.rendering(),
        "counts": {split: params.count(split) for split in SPLITS},
        "rows_per_shard": ROWS_PER_SHARD,
        "shapes": {c: list(shape(s)) for c, (_, shape) in _DENSE_COLUMNS.items()},
        "dtypes": {c: np.dtype(dt).name for c, (dt, _) in _DENSE_COLUMNS.items()},
        "class_names": list(CLASS_NAMES),
        "scene_names": list(SCENE_NAMES),
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _publish(tmp: str, final: str, params: SyntheticParams) -> None:
    """Rename the finished ``tmp`` to ``final``; if another writer got there first, drop ours.

    ``os.rename`` of a directory is atomic and refuses a non-empty target, so readers see
    either no cache or a whole one. An incomplete ``final`` (left by hand or an older tool) is
    moved aside and deleted first.
    """
    try:
        os.rename(tmp, final)
        return
    except OSError:
        pass
    if not is_complete(final, params):
        stale = f"{final}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(final, stale)
        except FileNotFoundError:
            pass
        shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
            return
        except OSError:
            if not is_complete(final, params):
                raise
    shutil.rmtree(tmp, ignore_errors=True)


@register_dataset("synthetic")
class SyntheticScenes(torch.utils.data.Dataset, Configurable):
    """Embedded ray-cast scenes: semseg, depth, normals, edge and scene labels, no download.

    Args:
        root: cache root (None: ``$MTL_CACHE_DIR/synthetic``, default ``~/.cache/mtl``).
        split: "train", "val" or "test".
        tasks: the subset of TASK_NAMES to serve.
        augment: random horizontal flip (image and targets, each as its task mirrors it: the
            normals' x negated), drawn from torch's global generator so it follows
            ``torch.manual_seed`` and the per-worker seeds of a DataLoader.
        **params: SyntheticParams fields.
    """

    Params = SyntheticParams
    # What ``mtl run --smoke`` overrides: a few hundred 32x32 images.
    SMOKE_PARAMS = {"image_size": 32, "num_train": 256, "num_val": 64, "num_test": 64}

    @classmethod
    def describe(cls, **params) -> DatasetInfo:
        p = cls.params_of(params)
        tasks = {
            "semseg": Plugin("semseg", {"num_classes": N_CLASSES}),
            "depth": Plugin("depth"),
            "normals": Plugin("normals"),
            "edge": Plugin("edge"),
            "scene": Plugin("scene", {"num_classes": N_SCENES}),
        }
        return DatasetInfo(
            name="synthetic",
            tasks={**tasks, **{name: tasks[source] for name, source in p.copies.items()}},
            input_size=(p.image_size, p.image_size),
            default_batch_sizes=(8, 16, 32),
            notes=f"{N_CLASSES} classes ({', '.join(CLASS_NAMES)}); {N_SCENES} scene types "
                  f"({', '.join(SCENE_NAMES)}); generator v{GENERATOR_VERSION}",
        )

    @classmethod
    def prepare(cls, root: Optional[str] = None, *, workers: Optional[int] = None, **params) -> str:
        """Render the cache unless a complete one exists; return its directory.

        Args:
            workers: processes to render in (None: one per available CPU, at most one per job of
                ``ROWS_PER_JOB`` images; 1: in this process). Not a generator parameter: the
                cache is the same bytes whatever it is.
        """
        p = cls.params_of(params)
        final = cache_dir(root, p)
        if is_complete(final, p):
            return final
        parent = os.path.dirname(final)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=parent)
        try:
            os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
            t0 = time.perf_counter()
            _write_cache(tmp, p, workers)
            _publish(tmp, final, p)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # Kept quiet on purpose beyond one line: prepare runs once per study on the driver.
        print(f"synthetic: rendered {p.num_train + p.num_val + p.num_test} images into "
              f"{final} in {time.perf_counter() - t0:.1f}s")
        return final

    @classmethod
    def check(cls, root: Optional[str] = None, **params) -> Dict:
        """``mtl data check``: render the cache unless complete, then summarise its splits.

        ``prepare``'s one progress line goes to stderr here, so stdout stays pure JSON.
        """
        import sys

        with contextlib.redirect_stdout(sys.stderr):
            path = cls.prepare(root, **params)
        summary = summarize(lambda split: cls(root, split, list(TASK_NAMES), **params), SPLITS,
                            make_tasks(cls.describe(**params), TASK_NAMES))
        return {**summary, "cache": path}

    def __init__(self, root: Optional[str], split: str, tasks: Sequence[str],
                 augment: bool = False, **params):
        if split not in SPLITS:
            raise ValueError(f"synthetic: unknown split {split!r}; "
                             f"valid splits: {', '.join(SPLITS)}")
        if isinstance(tasks, str):
            tasks = [tasks]
        self.params = self.params_of(params)
        self.source = {**{t: t for t in TASK_NAMES}, **self.params.copies}  # served task -> stored column
        bad = [t for t in tasks if t not in self.source]
        if bad:
            raise ValueError(f"synthetic: unknown task(s) {', '.join(map(repr, bad))}; "
                             f"valid tasks: {', '.join(self.source)}")
        self.split, self.tasks, self.augment = split, list(dict.fromkeys(tasks)), bool(augment)
        self.task_objects = make_tasks(self.describe(**params), self.tasks)
        # In this process: a dataset is built inside Ray workers (threaded, CPUs counted), where the
        # driver's prepare has normally rendered the cache already.
        self.path = self.prepare(root, workers=1, **params)
        self._arrays = self._load(["image"] + list(dict.fromkeys(self.source[t] for t in self.tasks)))

    def _load(self, columns: Sequence[str]) -> Dict[str, np.ndarray]:
        """This split's requested columns as compact numpy arrays, in index order.

        One column at a time, each dense column's rows (equal-size binary values) are copied
        straight from Arrow's data buffers into one preallocated array - no Python bytes per row -
        and Arrow's memory is handed back to the system after each: loading a split costs about
        its arrays plus one column."""
        s = self.params.image_size
        paths = [os.path.join(self.path, n) for n in _shard_names(self.params, self.split)]

        def column(name: str) -> pa.ChunkedArray:
            return pa.concat_tables([pq.read_table(path, columns=[name]) for path in paths]).column(name)

        count = self.params.count(self.split)
        if not np.array_equal(column("index").to_numpy(), np.arange(count)):
            raise RuntimeError(f"synthetic: cache {self.path} is corrupt (bad index column); "
                               f"delete it to regenerate")
        out: Dict[str, np.ndarray] = {}
        for col in columns:
            if col == "scene":
                out[col] = column(col).to_numpy().astype(np.int64)
                continue
            dtype, shape = _DENSE_COLUMNS[col]
            out[col] = np.empty((count,) + shape(s), dtype=dtype)
            rows = out[col].reshape(count, -1).view(np.uint8)  # the same memory, as bytes per row
            start = 0
            for chunk in column(col).chunks:
                offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
                if len(chunk) and np.any(np.diff(offsets) != rows.shape[1]):
                    raise RuntimeError(f"synthetic: cache {self.path} is corrupt (column {col!r} has rows of "
                                       f"another size than {rows.shape[1]} bytes); delete it to regenerate")
                data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
                rows[start:start + len(chunk)] = data.reshape(len(chunk), rows.shape[1])
                start += len(chunk)
            pa.default_memory_pool().release_unused()
        return out

    def __len__(self) -> int:
        return self.params.count(self.split)

    def __getitem__(self, i: int) -> Dict[str, object]:
        a = self._arrays
        image = normalize_image(a["image"][i], IMAGE_MEAN, IMAGE_STD)
        targets: Dict[str, torch.Tensor] = {}
        for task in self.tasks:
            column = self.source[task]  # the stored column (a copy serves its source's)
            if column == "scene":
                targets[task] = torch.tensor(a["scene"][i], dtype=torch.long)
            elif column == "semseg":
                targets[task] = torch.from_numpy(a["semseg"][i].astype(np.int64))
            elif column == "normals":  # stored as float16
                targets[task] = unit_normals(torch.from_numpy(a["normals"][i].astype(np.float32)).permute(2, 0, 1))
            else:  # depth, edge: [1, H, W] float
                targets[task] = torch.from_numpy(a[column][i].astype(np.float32))[None]
        if self.augment:
            image, targets = random_hflip(image, targets, self.task_objects)
        return {"image": image.contiguous(),
                "targets": {k: v.contiguous() for k, v in targets.items()},
                "mask": {task: torch.tensor(True) for task in self.tasks}}

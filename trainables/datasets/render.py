"""Numpy ray caster behind the embedded ``synthetic`` dataset.

A scene is a floor (z = 0), a back wall (y = const) and 2-6 primitives standing on the floor
(boxes, spheres, vertical cylinders, thin panels, upright ellipsoids). Every pixel ray is
intersected analytically with every primitive and the nearest hit is kept, so all six outputs
come from the same geometry: depth is the hit's camera z, normals are the hit surface's
normals, edges are where the label, the instance or the depth jumps, the image is shaded
from those normals, and the scene label is the class of most of the visible objects. That
shared geometry is the point: it makes the tasks genuinely related.

Frames: world x right, y forward, z up (right-handed). Camera: OpenCV convention (x right,
y down, z forward); pixel (row i, col j) looks along ((j + .5 - cx) / f, (i + .5 - cy) / f, 1),
so the ray parameter of a hit *is* its z-depth. The floor and the infinite wall close the
scene: with |pitch| + vfov/2 < 90 deg every ray moves forward and hits the wall if nothing
else, so every depth is valid.

Everything here is a pure function of a ``numpy.random.Generator``; the dataset seeds it with
``[seed, split_id, index]`` so an image does not depend on which other images were made. That is
also what lets ``render_jobs`` spread the images over processes: any split of the work into jobs,
run by any number of processes, gives the same bytes.
"""
from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

CLASS_NAMES = ("floor", "wall", "box", "sphere", "cylinder", "panel", "ellipsoid")
N_CLASSES = len(CLASS_NAMES)
OBJECT_KINDS = tuple(range(2, N_CLASSES))  # semantic class ids of the primitives
# The scene label is the kind that holds a strict majority of the objects (see _sample_scene).
SCENE_NAMES = tuple(f"mostly_{CLASS_NAMES[k]}" for k in OBJECT_KINDS)
N_SCENES = len(SCENE_NAMES)
IGNORE_INDEX = 255  # unused: the scene is closed, every pixel has a class
HFOV_DEG = 60.0  # square images, so also the vertical field of view
EDGE_DEPTH_REL_JUMP = 0.4  # no smooth surface jumps this much between neighbours (>= 64 px)
MIN_OBJECTS, MAX_OBJECTS = 2, 6

# Per-class base albedo (RGB in [0, 1]); each object jitters it slightly.
_ALBEDO = np.array([
    [0.55, 0.50, 0.44],  # floor: warm grey
    [0.72, 0.74, 0.78],  # wall: cool light grey
    [0.82, 0.25, 0.20],  # box: red
    [0.20, 0.36, 0.86],  # sphere: blue
    [0.24, 0.70, 0.30],  # cylinder: green
    [0.88, 0.76, 0.18],  # panel: yellow
    [0.62, 0.30, 0.72],  # ellipsoid: purple
])
_TEXTURE_AMPLITUDE = 0.35  # dark texture cells are this much darker
_AMBIENT = 0.3
_EPS = 1e-6
_MAX_SCENE_TRIES = 20  # redraws until the scene label is visible (see _label_is_visible)
_MIN_VISIBLE = 0.002  # fraction of the pixels an object needs to count as seen


@dataclass(frozen=True)
class _Prim:
    """One primitive; ``half`` holds half extents (box, panel), radii (sphere, ellipsoid) or
    (r, r, half height) (cylinder), all in the primitive's yaw-rotated local frame."""

    cls: int
    center: np.ndarray
    half: np.ndarray
    yaw: float
    albedo: np.ndarray


@dataclass(frozen=True)
class _Scene:
    origin: np.ndarray  # camera centre, world
    rot: np.ndarray  # camera-to-world rotation, columns = camera axes in world
    wall_y: float
    light: np.ndarray  # unit vector towards the light, world
    floor_albedo: np.ndarray
    wall_albedo: np.ndarray
    objects: Tuple[_Prim, ...]
    scene: int
    brightness: float


def intrinsics(image_size: int) -> Tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of the pinhole camera; pixel centres sit at integer + 0.5."""
    f = (image_size / 2.0) / math.tan(math.radians(HFOV_DEG) / 2.0)
    return f, f, image_size / 2.0, image_size / 2.0


def pixel_rays(image_size: int) -> np.ndarray:
    """Camera-frame ray of every pixel, shape [H*W, 3], z component 1 (row-major)."""
    f, _, cx, cy = intrinsics(image_size)
    c = (np.arange(image_size) + 0.5 - cx) / f
    r = (np.arange(image_size) + 0.5 - cy) / f
    rr, cc = np.meshgrid(r, c, indexing="ij")
    return np.stack([cc.ravel(), rr.ravel(), np.ones(cc.size)], axis=1)


def _rot_z(v: np.ndarray, yaw: float) -> np.ndarray:
    """Rotate row vectors [N, 3] about the world z axis by ``yaw``."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1], v[:, 2]], axis=1)


def _sample_scene(rng: np.random.Generator) -> _Scene:
    height = rng.uniform(1.4, 1.8)
    pitch = math.radians(rng.uniform(10.0, 20.0))  # downwards
    yaw = math.radians(rng.uniform(-5.0, 5.0))
    cam_x = rng.uniform(-0.3, 0.3)
    wall_y = rng.uniform(5.5, 7.5)
    sp, cp = math.sin(pitch), math.cos(pitch)
    axes = np.array([[1.0, 0.0, 0.0], [0.0, -sp, -cp], [0.0, cp, -sp]])  # x, y(down), z(fwd)
    rot = _rot_z(axes, yaw).T
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.9, -0.2), rng.uniform(0.6, 1.2)])
    light /= np.linalg.norm(light)

    # Composition rule behind the scene label: its kind holds a strict majority of objects.
    scene = int(rng.integers(N_SCENES))
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    n_major = n // 2 + 1
    others = [k for k in OBJECT_KINDS if k != OBJECT_KINDS[scene]]
    kinds = [OBJECT_KINDS[scene]] * n_major + [int(k) for k in rng.choice(others, n - n_major)]
    kinds = [kinds[i] for i in rng.permutation(n)]

    tan_half = math.tan(math.radians(HFOV_DEG) / 2.0)
    objects: List[_Prim] = []
    placed: List[Tuple[float, float, float]] = []  # footprint circles (x, y, radius)
    for cls in kinds:
        half, radius = _sample_size(rng, cls)
        obj_yaw = rng.uniform(-0.6, 0.6) if cls == 5 else rng.uniform(0.0, math.pi)
        for _ in range(30):  # rejection sampling keeps footprints apart; else keep the last
            y = rng.uniform(2.3, wall_y - 1.0)
            x = cam_x + rng.uniform(-1.0, 1.0) * 0.7 * tan_half * y
            if all(math.hypot(x - px, y - py) > radius + pr + 0.1 for px, py, pr in placed):
                break
        placed.append((x, y, radius))
        albedo = np.clip(_ALBEDO[cls] + rng.uniform(-0.06, 0.06, 3), 0.0, 1.0)
        objects.append(_Prim(cls, np.array([x, y, half[2]]), half, obj_yaw, albedo))
    return _Scene(
        origin=np.array([cam_x, 0.0, height]), rot=rot, wall_y=wall_y, light=light,
        floor_albedo=np.clip(_ALBEDO[0] + rng.uniform(-0.05, 0.05, 3), 0, 1),
        wall_albedo=np.clip(_ALBEDO[1] + rng.uniform(-0.05, 0.05, 3), 0, 1),
        objects=tuple(objects), scene=scene, brightness=rng.uniform(0.85, 1.1),
    )


def _sample_size(rng: np.random.Generator, cls: int) -> Tuple[np.ndarray, float]:
    """Local half extents of a primitive of class ``cls`` and its footprint radius."""
    name = CLASS_NAMES[cls]
    if name == "box":
        h = rng.uniform([0.3, 0.3, 0.3], [0.65, 0.65, 0.7])
        return h, math.hypot(h[0], h[1])
    if name == "sphere":
        r = rng.uniform(0.35, 0.7)
        return np.array([r, r, r]), r
    if name == "cylinder":
        r = rng.uniform(0.25, 0.45)
        return np.array([r, r, rng.uniform(0.4, 0.9)]), r
    if name == "panel":  # a thin standing slab facing the camera: the "plane" primitive
        h = np.array([rng.uniform(0.45, 0.9), 0.03, rng.uniform(0.4, 0.9)])
        return h, h[0]
    r = rng.uniform(0.25, 0.4, 2)  # ellipsoid: upright, clearly taller than wide
    return np.array([r[0], r[1], rng.uniform(0.65, 1.0)]), float(r.max())


def _hit(o: np.ndarray, d: np.ndarray, p: _Prim) -> np.ndarray:
    """Ray parameter of the first hit of rays o + t d (d: [N, 3], world) with ``p``; inf if
    none. The camera is always outside every primitive, so the entry point is the hit."""
    ol = _rot_z((o - p.center)[None], -p.yaw)[0]
    dl = _rot_z(d, -p.yaw)
    inf = np.full(len(d), np.inf)
    name = CLASS_NAMES[p.cls]
    with np.errstate(divide="ignore", invalid="ignore"):
        if name in ("box", "panel"):  # slab method
            t1, t2 = (-p.half - ol) / dl, (p.half - ol) / dl
            tmin = np.minimum(t1, t2).max(axis=1)
            tmax = np.maximum(t1, t2).min(axis=1)
            return np.where((tmax >= tmin) & (tmin > _EPS), tmin, inf)
        if name in ("sphere", "ellipsoid"):  # unit sphere after scaling the axes
            os_, ds = ol / p.half, dl / p.half
            a = (ds * ds).sum(1)
            b = 2.0 * (ds @ os_)
            c = os_ @ os_ - 1.0
            disc = b * b - 4 * a * c
            t = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2 * a)
            return np.where((disc >= 0) & (t > _EPS), t, inf)
        # cylinder: side surface, then the top cap (the bottom lies on the floor)
        r, hz = p.half[0], p.half[2]
        a = dl[:, 0] ** 2 + dl[:, 1] ** 2
        b = 2.0 * (ol[0] * dl[:, 0] + ol[1] * dl[:, 1])
        c = ol[0] ** 2 + ol[1] ** 2 - r * r
        disc = b * b - 4 * a * c
        ts = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2 * a)
        zs = ol[2] + ts * dl[:, 2]
        ts = np.where((disc >= 0) & (ts > _EPS) & (np.abs(zs) <= hz), ts, inf)
        tc = (hz - ol[2]) / dl[:, 2]
        xc, yc = ol[0] + tc * dl[:, 0], ol[1] + tc * dl[:, 1]
        tc = np.where((tc > _EPS) & (xc * xc + yc * yc <= r * r), tc, inf)
        return np.minimum(ts, tc)


def _normal_and_texture(p: _Prim, pts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """World unit normals and texture mask {0, 1} of hit points ``pts`` [N, 3] on ``p``.

    Each class has its own pattern (in the primitive's local frame, so it moves with it):
    a cue for segmentation beyond colour and shape.
    """
    q = _rot_z(pts - p.center, -p.yaw)
    name = CLASS_NAMES[p.cls]
    if name in ("box", "panel"):
        u = q / p.half
        axis = np.abs(u).argmax(axis=1)
        n = np.zeros_like(q)
        n[np.arange(len(q)), axis] = np.sign(u[np.arange(len(q)), axis])
        if name == "box":
            tex = np.floor(q / 0.25).sum(axis=1) % 2  # 3-D checker
        else:
            tex = np.floor((q[:, 0] + q[:, 2]) / 0.15) % 2  # diagonal stripes
    elif name in ("sphere", "ellipsoid"):
        n = q / p.half**2
        ang = np.arctan2(q[:, 1], q[:, 0]) / (2 * math.pi)
        if name == "sphere":
            tex = np.floor(q[:, 2] / 0.15) % 2  # latitude bands
        else:
            tex = np.floor(ang * 6 + q[:, 2] / 0.3) % 2  # spiral
    else:  # cylinder
        cap = q[:, 2] > p.half[2] - 1e-5
        n = np.where(cap[:, None], [0.0, 0.0, 1.0], q * [1.0, 1.0, 0.0])
        tex = np.floor(np.arctan2(q[:, 1], q[:, 0]) / (2 * math.pi) * 10) % 2  # vertical
    n = _rot_z(n, p.yaw)
    return n / np.linalg.norm(n, axis=1, keepdims=True), tex


def semantic_edges(semseg: np.ndarray, instance: np.ndarray, depth: np.ndarray,
                   rel_jump: float = EDGE_DEPTH_REL_JUMP) -> np.ndarray:
    """uint8 {0, 1} map: 1 on both pixels of every 4-neighbour pair whose semantic label or
    instance differs, or whose depths (both valid) differ by more than ``rel_jump`` of the
    nearer one. Marking both sides keeps the map symmetric, so a horizontal flip of an edge
    map is the edge map of the flipped scene."""
    edge = np.zeros(semseg.shape, dtype=bool)
    for ax in (0, 1):
        n = semseg.shape[ax]
        a, b = (slice(0, n - 1), slice(1, n))
        sl = (lambda s: (s, slice(None))) if ax == 0 else (lambda s: (slice(None), s))
        da, db = depth[sl(a)], depth[sl(b)]
        jump = (da > 0) & (db > 0) & (np.abs(da - db) > rel_jump * np.minimum(da, db))
        diff = (semseg[sl(a)] != semseg[sl(b)]) | (instance[sl(a)] != instance[sl(b)]) | jump
        edge[sl(a)] |= diff
        edge[sl(b)] |= diff
    return edge.astype(np.uint8)


def _cast(sc: _Scene, d: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Nearest hit of every ray: (ray parameter = z-depth, instance: 0 floor, 1 wall, 2+)."""
    o = sc.origin
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(d[:, 2] < 0, -o[2] / d[:, 2], np.inf)
        t_wall = np.where(d[:, 1] > 0, (sc.wall_y - o[1]) / d[:, 1], np.inf)
    ts = np.stack([t_floor, t_wall] + [_hit(o, d, p) for p in sc.objects])
    inst = ts.argmin(axis=0)
    t = ts[inst, np.arange(len(d))]
    assert np.isfinite(t).all(), "scene not closed: a ray escaped"
    return t, inst


def _label_is_visible(sc: _Scene, inst: np.ndarray) -> bool:
    """Whether the scene label is still the strict majority among the objects one can see
    (>= 0.2% of the pixels each), so occlusion or the frame edge cannot make it unpredictable
    from the image."""
    counts = np.bincount(inst, minlength=len(sc.objects) + 2)[2:]
    seen = [p.cls for p, c in zip(sc.objects, counts) if c >= max(2, _MIN_VISIBLE * len(inst))]
    major = OBJECT_KINDS[sc.scene]
    return 2 * sum(c == major for c in seen) > len(seen)


def render(rng: np.random.Generator, image_size: int, noise_std: float) -> Dict[str, np.ndarray]:
    """Render one scene drawn from ``rng``.

    Returns image uint8 [H, W, 3], semseg uint8 [H, W], instance uint8 [H, W] (0 floor,
    1 wall, 2+ objects), depth float32 [H, W] (metres, camera z), normals float32 [H, W, 3]
    (unit, camera frame, facing the camera), edge uint8 [H, W] and scene int64 [].
    """
    d_cam = pixel_rays(image_size)
    for _ in range(_MAX_SCENE_TRIES):
        sc = _sample_scene(rng)
        d = d_cam @ sc.rot.T  # world directions; t stays the camera z-depth
        t, inst = _cast(sc, d)
        if _label_is_visible(sc, inst):
            break  # else redraw (from the same rng: still a pure function of it)
    o = sc.origin
    pts = o + t[:, None] * d

    normal = np.zeros_like(d)
    albedo = np.zeros_like(d)
    tex = np.zeros(len(d))
    cls = np.zeros(len(d), dtype=np.uint8)
    m = inst == 0
    normal[m] = [0.0, 0.0, 1.0]
    albedo[m] = sc.floor_albedo
    tex[m] = (np.floor(pts[m, 0] / 0.7) + np.floor(pts[m, 1] / 0.7)) % 2  # checker
    m = inst == 1
    normal[m] = [0.0, -1.0, 0.0]
    albedo[m] = sc.wall_albedo
    tex[m] = np.floor(pts[m, 0] / 0.5) % 2  # vertical stripes
    cls[m] = 1
    for k, p in enumerate(sc.objects):
        m = inst == k + 2
        if m.any():
            normal[m], tex[m] = _normal_and_texture(p, pts[m])
            albedo[m] = p.albedo
            cls[m] = p.cls

    n_cam = normal @ sc.rot  # world -> camera: R^T n, as row vectors
    facing = (n_cam * d_cam).sum(1) > 0  # safety net: closed convex shapes never trigger it
    n_cam[facing] *= -1
    shade = _AMBIENT + (1 - _AMBIENT) * np.clip(normal @ sc.light, 0.0, None)
    rgb = albedo * ((1 - _TEXTURE_AMPLITUDE * tex) * shade * sc.brightness)[:, None]
    hw = (image_size, image_size)
    rgb = rgb.reshape(hw + (3,)) + rng.normal(0.0, noise_std, hw + (3,))
    semseg = cls.reshape(hw)
    instance = inst.astype(np.uint8).reshape(hw)
    depth = t.astype(np.float32).reshape(hw)
    return {
        "image": np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8),
        "semseg": semseg,
        "instance": instance,
        "depth": depth,
        "normals": n_cam.astype(np.float32).reshape(hw + (3,)),
        "edge": semantic_edges(semseg, instance, depth),
        "scene": np.int64(sc.scene),
    }


def render_index(seed: int, split_id: int, index: int, image_size: int,
                 noise_std: float) -> Dict[str, np.ndarray]:
    """The image (seed, split_id, index): a pure function of these, whatever else is made."""
    rng = np.random.default_rng([seed, split_id, index])
    return render(rng, image_size, noise_std)


def render_batch(seed: int, split_id: int, indices: Sequence[int], image_size: int,
                 noise_std: float) -> Dict[str, np.ndarray]:
    """``render_index`` for each index, stacked along a new first axis."""
    items = [render_index(seed, split_id, int(i), image_size, noise_std) for i in indices]
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def render_jobs(seed: int, jobs: Sequence[Tuple[int, Sequence[int]]], image_size: int, noise_std: float,
                workers: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
    """``render_batch`` of each ``(split_id, indices)`` job, yielded in the order of ``jobs``.

    Args:
        workers: processes to render in (None: one per available CPU, at most one per job; 1:
            in this process). At most two jobs per process run ahead of the consumer, so the
            memory held stays bounded whatever the number of jobs.
    """
    if workers is None:
        workers = max(1, min(available_cpus(), len(jobs)))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"synthetic: workers must be a positive int (or None: one per CPU), got {workers!r}")
    if workers == 1 or len(jobs) <= 1:
        for split_id, indices in jobs:
            yield render_batch(seed, split_id, indices, image_size, noise_std)
        return
    # fork on Linux: a started worker needs no import (spawn would import torch again, ~2 s each)
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        todo = iter(jobs)
        pending: Deque[Future] = deque(pool.submit(render_batch, seed, split_id, indices, image_size, noise_std)
                                       for split_id, indices in itertools.islice(todo, 2 * workers))
        try:
            while pending:
                batch = pending.popleft().result()
                job = next(todo, None)
                if job is not None:
                    pending.append(pool.submit(render_batch, seed, job[0], job[1], image_size, noise_std))
                yield batch
        finally:  # the consumer stopped early (an error while writing): do not render the rest
            for future in pending:
                future.cancel()

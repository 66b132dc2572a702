"""Task plug-ins: hand-computed losses and metrics, plus contract checks over the registry."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import trainables.tasks  # noqa: F401  (registers the task types)
from trainables.registry import TASKS
from trainables.schema import ConfigError
from trainables.tasks import Task
from trainables.tasks.depth import DepthParams


def _state(task: Task, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    s = task.metric_state(pred.device)
    task.update_metric(s, pred, target)
    return s


# ----------------------------------------------------------------------------- semseg
# 2x3 image, C = 3, one ignored pixel (255 at row 1, col 1).
SEG_TARGET = torch.tensor([[[0, 0, 1], [2, 255, 1]]])
SEG_LABELS = torch.tensor([[[0, 1, 1], [2, 0, 0]]])


def _seg_logits(labels: torch.Tensor, c: int = 3) -> torch.Tensor:
    return 5.0 * F.one_hot(labels, c).permute(0, 3, 1, 2).float()


def test_semseg_confusion_and_miou_by_hand():
    task = TASKS.get("semseg")(num_classes=3)
    s = _state(task, _seg_logits(SEG_LABELS), SEG_TARGET)
    # cm[gt, pred] over the 5 valid pixels: (0,0) (0,1) (1,1) (2,2) (1,0)
    expected = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float64)
    assert torch.equal(s, expected)
    m = task.compute_metric(s)
    # IoU_0 = 1 / (2 + 2 - 1) = 1/3, IoU_1 = 1/3, IoU_2 = 1/1 -> mIoU = 5/9; acc = 3/5
    assert m["miou"] == pytest.approx(100 * 5 / 9)
    assert m["pixel_acc"] == pytest.approx(60.0)


def test_semseg_miou_skips_classes_with_empty_union():
    task = TASKS.get("semseg")(num_classes=4)  # class 3 never occurs nor is predicted
    m = task.compute_metric(_state(task, _seg_logits(SEG_LABELS, 4), SEG_TARGET))
    assert m["miou"] == pytest.approx(100 * 5 / 9)


def test_semseg_loss_matches_torch_ce_with_ignore():
    torch.manual_seed(0)
    task = TASKS.get("semseg")(num_classes=3)
    logits = torch.randn(1, 3, 2, 3)
    ref = F.cross_entropy(logits, SEG_TARGET, ignore_index=255)
    assert task.loss(logits, SEG_TARGET).item() == pytest.approx(ref.item(), rel=1e-6)
    valid = SEG_TARGET != 255  # same as CE over the non-ignored pixels only
    manual = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], SEG_TARGET[valid])
    assert task.loss(logits, SEG_TARGET).item() == pytest.approx(manual.item(), rel=1e-6)
    w = [1.0, 2.0, 0.5]
    weighted = TASKS.get("semseg")(num_classes=3, class_weights=w)
    ref_w = F.cross_entropy(logits, SEG_TARGET, weight=torch.tensor(w), ignore_index=255)
    assert weighted.loss(logits, SEG_TARGET).item() == pytest.approx(ref_w.item(), rel=1e-6)
    # all pixels ignored: 0, not NaN
    assert task.loss(logits, torch.full_like(SEG_TARGET, 255)).item() == 0.0


def test_semseg_split_level_miou_is_not_mean_of_batches():
    task = TASKS.get("semseg")(num_classes=3)
    pa, ta = _seg_logits(SEG_LABELS), SEG_TARGET
    tb = torch.full((1, 2, 3), 2)
    pb = _seg_logits(tb)  # batch b: all class 2, all correct -> per-batch mIoU 100
    summed = _state(task, pa, ta) + _state(task, pb, tb)
    concat = _state(task, torch.cat([pa, pb]), torch.cat([ta, tb]))
    assert torch.equal(summed, concat)
    split = task.compute_metric(summed)["miou"]
    assert split == pytest.approx(100 * 5 / 9)  # cm[2,2] = 7 -> IoUs 1/3, 1/3, 1
    mean_of_batches = (task.compute_metric(_state(task, pa, ta))["miou"] + 100.0) / 2
    assert mean_of_batches == pytest.approx(100 * 7 / 9)
    assert split != pytest.approx(mean_of_batches)


# ----------------------------------------------------------------------------- depth
def test_depth_pooled_rmse_over_batches_with_different_valid_counts():
    task = TASKS.get("depth")()
    pa = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    ta = torch.tensor([1.0, 0.0, 2.0, 4.0]).view(1, 1, 2, 2)  # 3 valid, errors 0, 1, 0
    pb = torch.tensor([5.0, 1.0]).view(1, 1, 1, 2)
    tb = torch.tensor([3.0, float("nan")]).view(1, 1, 1, 2)  # 1 valid, error 2
    m = task.compute_metric(_state(task, pa, ta) + _state(task, pb, tb))
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 4) / 4))  # not (sqrt(1/3) + 2) / 2
    assert m["l1"] == pytest.approx((1 + 2) / 4)
    assert m["abs_rel"] == pytest.approx((1 / 2 + 2 / 3) / 4)
    # loss: mean |err| over valid pixels only; no gradient (and no NaN) at invalid pixels
    pa = pa.clone().requires_grad_(True)
    pb = pb.clone().requires_grad_(True)
    assert task.loss(pa, ta).item() == pytest.approx(1 / 3)
    task.loss(pa, ta).backward()
    assert pa.grad.view(-1).tolist() == pytest.approx([0.0, 0.0, 1 / 3, 0.0])
    lb = task.loss(pb, tb)
    lb.backward()
    assert lb.item() == pytest.approx(2.0) and pb.grad.view(-1).tolist() == [1.0, 0.0]


def test_depth_min_depth_masks_targets():
    task = TASKS.get("depth")(min_depth=1.5)
    p = torch.tensor([2.0, 2.0]).view(1, 1, 1, 2)
    t = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)  # 1.0 <= min_depth -> invalid
    assert task.compute_metric(_state(task, p, t))["rmse"] == pytest.approx(1.0)


def test_depth_metrics_clamp_non_positive_predictions_as_the_survey():
    # gt (2, 3), pred (-1, 4): the survey's evaluation sets pred <= 0 to 1e-9 before the metrics.
    p = torch.tensor([-1.0, 4.0], dtype=torch.float64).view(1, 1, 1, 2)
    t = torch.tensor([2.0, 3.0], dtype=torch.float64).view(1, 1, 1, 2)
    survey = TASKS.get("depth")()  # eval_clamp 1e-9 by default
    m = survey.compute_metric(_state(survey, p, t))
    assert m["rmse"] == pytest.approx(math.sqrt(((2 - 1e-9) ** 2 + 1) / 2), rel=1e-12)
    assert m["l1"] == pytest.approx((2 - 1e-9 + 1) / 2, rel=1e-12)
    assert m["abs_rel"] == pytest.approx(((2 - 1e-9) / 2 + 1 / 3) / 2, rel=1e-12)
    raw = TASKS.get("depth")(eval_clamp=None)
    assert raw.compute_metric(_state(raw, p, t))["rmse"] == pytest.approx(math.sqrt((9 + 1) / 2))
    other = TASKS.get("depth")(eval_clamp=0.5)  # 2 - 0.5 = 1.5
    assert other.compute_metric(_state(other, p, t))["rmse"] == pytest.approx(math.sqrt((1.5 ** 2 + 1) / 2))
    # the loss never sees the clamp: L1 of the raw prediction, (3 + 1) / 2
    assert survey.loss(p, t).item() == pytest.approx(2.0)


# ----------------------------------------------------------------------------- parameters
def test_params_as_keywords_or_a_params_instance():
    by_kwargs = TASKS.get("depth")("d", min_depth=0.5)
    by_params = TASKS.get("depth")("d", params=DepthParams(min_depth=0.5))
    assert by_kwargs.params == by_params.params == DepthParams(min_depth=0.5)
    assert by_kwargs.name == "d" and TASKS.get("depth")().name == "depth"
    with pytest.raises(TypeError, match="not both"):
        TASKS.get("depth")("d", params=DepthParams(), min_depth=0.5)
    with pytest.raises(ConfigError, match=r"task 'depth'\.min_dept: unknown key; accepted here: min_depth, "):
        TASKS.get("depth")(min_dept=0.5)
    with pytest.raises(ConfigError, match=r"task 'scene'\.num_classes: required"):
        TASKS.get("scene")()


@pytest.mark.parametrize("type_", TASKS.names())
def test_every_task_declares_frozen_params(type_):
    cls = TASKS.get(type_)
    task = _sample(type_, 1, seed=0)[0]
    assert isinstance(task.params, cls.Params)
    assert cls.Params.__dataclass_params__.frozen


# ----------------------------------------------------------------------------- normals
def _normals_case():
    """Target (0,0,1); pred = target rotated about x by 0, 10, 20, 45, 90 degrees (scaled by
    3.7), plus one invalid pixel with an all-zero target."""
    angles = [0.0, 10.0, 20.0, 45.0, 90.0]
    pred = [[0.0, math.sin(math.radians(a)), math.cos(math.radians(a))] for a in angles]
    pred = 3.7 * torch.tensor(pred + [[1.0, 0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0, 1.0]] * 5 + [[0.0, 0.0, 0.0]])
    return pred.T.reshape(1, 3, 1, 6), target.T.reshape(1, 3, 1, 6)


def test_normals_angles_by_hand():
    task = TASKS.get("normals")()
    pred, target = _normals_case()
    m = task.compute_metric(_state(task, pred, target))
    assert m["mean_angle"] == pytest.approx((0 + 10 + 20 + 45 + 90) / 5, abs=1e-6)
    assert m["rmse_angle"] == pytest.approx(math.sqrt((100 + 400 + 2025 + 8100) / 5), abs=1e-6)
    assert m["median_angle"] == pytest.approx(20.0, abs=0.05)  # the bound below the 0.05-deg bins
    assert m["within_11.25"] == pytest.approx(40.0)
    assert m["within_22.5"] == pytest.approx(60.0)
    assert m["within_30"] == pytest.approx(60.0)


def _normals_at(angles_deg) -> tuple:
    """(pred, target) [1, 3, 1, n] with angular errors ``angles_deg`` (target z, pred in y-z)."""
    a = torch.deg2rad(torch.as_tensor(angles_deg, dtype=torch.float64))
    pred = torch.stack([torch.zeros_like(a), torch.sin(a), torch.cos(a)])
    target = torch.zeros_like(pred)
    target[2] = 1.0
    return pred.view(1, 3, 1, -1), target.view(1, 3, 1, -1)


def test_normals_median_of_two_sparse_pixels():
    # 10 and 50 degrees: the median is 30 (numpy's mean of the two middle values); a 50 %
    # quantile interpolated in the histogram would give ~10.05.
    task = TASKS.get("normals")()
    m = task.compute_metric(_state(task, *_normals_at([10.0, 50.0])))
    assert m["median_angle"] == pytest.approx(30.0, abs=0.05)
    assert m["mean_angle"] == pytest.approx(30.0, abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_normals_median_within_a_bin_of_numpy(seed):
    rng = np.random.default_rng(seed)
    task = TASKS.get("normals")()
    sizes = list(range(1, 12)) + [50, 101, 1000, 4001]
    for n in sizes:
        for spread in (180.0, 5.0, 0.2):  # spread out, and crowded into a few bins
            angles = rng.uniform(0, spread, n)
            pred, target = _normals_at(angles)
            cos = (F.normalize(pred, dim=1) * target).sum(1).clamp(-1, 1)
            served = torch.rad2deg(torch.acos(cos)).view(-1).numpy()  # the angles the task sees
            m = task.compute_metric(_state(task, pred, target))
            assert abs(m["median_angle"] - np.median(served)) <= 0.05, (n, spread)
            assert m["mean_angle"] == pytest.approx(served.mean(), abs=1e-9)


def test_normals_loss_by_hand_and_scale_invariant():
    pred, target = _normals_case()
    pred, target = pred[..., [0, 4, 5]], target[..., [0, 4, 5]]  # 0 deg, 90 deg, invalid
    l1 = TASKS.get("normals")()
    cos = TASKS.get("normals")(loss="cosine")
    # l1: |(0,0,1)-(0,0,1)| = 0 and |(0,1,0)-(0,0,1)| = 2, over 3 * 2 valid elements
    assert l1.loss(pred, target).item() == pytest.approx(2 / 6)
    assert cos.loss(pred, target).item() == pytest.approx((0 + 1) / 2)
    for task in (l1, cos):
        assert task.loss(0.01 * pred, target).item() == pytest.approx(
            task.loss(pred, target).item(), rel=1e-6
        )
    unit = l1.predict(pred)
    assert torch.allclose(unit.norm(dim=1), torch.ones(1, 1, 3))


# ----------------------------------------------------------------------------- edge
def _logit(p):
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


def test_edge_perfect_separation():
    task = TASKS.get("edge")()
    target = torch.tensor([1.0, 0.0, 1.0, 0.0, 255.0, 0.0]).view(1, 1, 2, 3)
    pred = torch.where(target == 1, 10.0, -10.0)
    m = task.compute_metric(_state(task, pred, target))
    assert m["odsf"] == pytest.approx(100.0) and m["ap"] == pytest.approx(100.0)


def test_edge_odsf_and_ap_match_brute_force():
    pos, neg = [0.9, 0.6, 0.3], [0.8, 0.4, 0.2, 0.1]
    probs = pos + neg + [0.95]  # the last pixel is ignored (target 255)
    target = torch.tensor([1.0] * 3 + [0.0] * 4 + [255.0]).view(1, 1, 1, 8)
    task = TASKS.get("edge")()
    m = task.compute_metric(_state(task, _logit(probs).view(1, 1, 1, 8), target))
    best_f, ap, prev_r = 0.0, 0.0, 0.0
    for t in sorted(pos + neg, reverse=True):  # predict edge iff p >= t
        tp = sum(p >= t for p in pos)
        fp = sum(p >= t for p in neg)
        prec, rec = tp / (tp + fp), tp / len(pos)
        if tp:
            best_f = max(best_f, 2 * prec * rec / (prec + rec))
        ap += (rec - prev_r) * prec
        prev_r = rec
    assert best_f == pytest.approx(0.75)  # at t = 0.3: P = 3/5, R = 1
    assert ap == pytest.approx(1 / 3 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5)
    assert m["odsf"] == pytest.approx(100 * best_f)
    assert m["ap"] == pytest.approx(100 * ap)


def test_edge_balanced_bce_by_hand():
    task = TASKS.get("edge")()  # pos_weight 0.95
    pred = torch.tensor([0.0, math.log(3.0), 50.0]).view(1, 1, 1, 3)  # p = 0.5, 0.75, ~1
    target = torch.tensor([1.0, 0.0, 255.0]).view(1, 1, 1, 3)
    expected = (0.95 * -math.log(0.5) + 0.05 * -math.log(1 - 0.75)) / 2
    assert task.loss(pred, target).item() == pytest.approx(expected, rel=1e-6)
    assert TASKS.get("edge")(pos_weight=0.5).loss(pred, target).item() == pytest.approx(
        0.5 * (math.log(2) + math.log(4)) / 2, rel=1e-6
    )


# ----------------------------------------------------------------------------- scene
def test_scene_top1_top5_by_hand():
    task = TASKS.get("scene")(num_classes=6)
    ranking = torch.arange(6, 0, -1).float()  # class 0 best ... class 5 worst
    pred = ranking.repeat(4, 1)
    target = torch.tensor([0, 2, 5, 4])  # ranks 1, 3, 6, 5 -> top1 1/4, top5 3/4
    m = task.compute_metric(_state(task, pred, target))
    assert m["top1"] == pytest.approx(25.0) and m["top5"] == pytest.approx(75.0)
    small = TASKS.get("scene")(num_classes=3)  # k = min(5, 3) = 3
    m = small.compute_metric(_state(small, torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([2])))
    assert m["top1"] == 0.0 and m["top5"] == 100.0


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "type_, kwargs, arg",
    [
        ("semseg", {"num_classes": 1}, "num_classes"),
        ("semseg", {"num_classes": 3, "ignore_index": 1}, "ignore_index"),
        ("semseg", {"num_classes": 2, "class_weights": [1.0]}, "class_weights"),
        ("depth", {"min_depth": -1.0}, "min_depth"),
        ("normals", {"loss": "l2"}, "loss"),
        ("edge", {"pos_weight": 1.0}, "pos_weight"),
        ("edge", {"num_bins": 1}, "num_bins"),
        ("scene", {"num_classes": 1}, "num_classes"),
        ("scene", {"num_classes": 5, "label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_invalid_kwargs_raise(type_, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        TASKS.get(type_)(**kwargs)


# ----------------------------------------------------------------------------- every task
def _sample(type_: str, b: int, seed: int):
    """(task, pred, target) with random data in the task's format, including invalid pixels."""
    g = torch.Generator().manual_seed(seed)
    h, w = 4, 5
    if type_ == "semseg":
        t = torch.randint(0, 4, (b, h, w), generator=g)
        t[:, 0, 0] = 255
        return TASKS.get(type_)(num_classes=4), torch.randn(b, 4, h, w, generator=g), t
    if type_ == "depth":
        t = torch.rand(b, 1, h, w, generator=g) * 5
        t[:, :, 0] = 0.0
        return TASKS.get(type_)(), torch.rand(b, 1, h, w, generator=g) * 5, t
    if type_ == "normals":
        t = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
        t[:, :, 0] = 0.0
        return TASKS.get(type_)(), torch.randn(b, 3, h, w, generator=g), t
    if type_ == "edge":
        t = (torch.rand(b, 1, h, w, generator=g) < 0.3).float()
        t[:, :, 0, 0] = 1.0
        t[:, :, 0, 1] = 255.0
        return TASKS.get(type_)(), torch.randn(b, 1, h, w, generator=g), t
    if type_ == "scene":
        t = torch.randint(0, 7, (b,), generator=g)
        return TASKS.get(type_)(num_classes=7), torch.randn(b, 7, generator=g), t
    if type_ == "saliency":
        t = (torch.rand(b, 1, h, w, generator=g) < 0.4).float()
        t[:, :, 0, 0], t[:, :, 0, 1] = 1.0, 255.0
        return TASKS.get(type_)(), torch.randn(b, 1, h, w, generator=g), t
    if type_ == "human_parts":
        t = torch.randint(0, 7, (b, h, w), generator=g)
        t[:, 0, 0] = 255
        return TASKS.get(type_)(), torch.randn(b, 7, h, w, generator=g), t
    if type_ in ("dense_l1", "keypoints"):
        t = torch.rand(b, 2, h, w, generator=g)
        t[:, :, 0, 0] = float("nan")
        return TASKS.get(type_)(channels=2), torch.randn(b, 2, h, w, generator=g), t
    if type_ == "attribute":
        t = (torch.arange(b) % 2).float()  # both classes present
        return TASKS.get(type_)(), torch.randn(b, 1, generator=g), t
    if type_ == "instance_center":
        t = torch.randn(b, 2, h, w, generator=g) * 3
        t[:, :, 0, 0] = float("nan")
        return TASKS.get(type_)(), torch.randn(b, 2, h, w, generator=g), t
    raise AssertionError(f"add a sample factory for registered task type {type_!r}")


@pytest.mark.parametrize("type_", TASKS.names())
def test_every_task_contract(type_):
    task, pred, target = _sample(type_, 3, seed=1)
    assert task.kind in ("dense", "image")
    assert isinstance(task.higher_is_better, bool) and task.primary_metric
    assert pred.shape[1] == task.out_channels
    assert task.name == type_  # default name is the type
    # loss: scalar with finite, non-zero gradients
    pred.requires_grad_(True)
    loss = task.loss(pred, target)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    pred = pred.detach()
    # sum-reducibility: state(a) + state(b) == state(a u b)
    _, pred_b, target_b = _sample(type_, 2, seed=2)
    summed = _state(task, pred, target) + _state(task, pred_b, target_b)
    joint = _state(task, torch.cat([pred, pred_b]), torch.cat([target, target_b]))
    assert summed.dtype == torch.float64
    assert torch.allclose(summed, joint, rtol=1e-12, atol=1e-9)
    metrics = task.compute_metric(summed)
    assert task.primary_metric in metrics
    assert all(math.isfinite(v) for v in metrics.values())
    for k, v in task.compute_metric(joint).items():
        assert v == pytest.approx(metrics[k], rel=1e-9, abs=1e-9)
    # an empty state does not crash; every value is NaN
    empty = task.compute_metric(task.metric_state())
    assert set(empty) == set(metrics) and all(math.isnan(v) for v in empty.values())
    # update_metric never builds a graph, even for a pred that requires grad
    state = _state(task, pred.clone().requires_grad_(True), target)
    assert not state.requires_grad
    assert task.predict(pred).shape[0] == pred.shape[0]


@pytest.mark.parametrize("type_", TASKS.names())
def test_every_task_target_geometry_contract(type_):
    """On one sample: ``ignored`` is a bool mask of the target's shape, ``hflip`` keeps shape and
    dtype and undoes itself, a zoom by 1 and a rotation by 0 change nothing."""
    task, _, target = _sample(type_, 2, seed=4)
    x = target[0]
    ignored = task.ignored(x)
    assert ignored.dtype == torch.bool and ignored.shape == x.shape
    flipped = task.hflip(x)
    assert flipped.shape == x.shape and flipped.dtype == x.dtype
    assert torch.equal(torch.nan_to_num(task.hflip(flipped)), torch.nan_to_num(x))
    assert torch.equal(torch.nan_to_num(task.zoom(x, 1.0, (1.0, 1.0))), torch.nan_to_num(x))
    assert torch.allclose(torch.nan_to_num(task.rotate(x, 0.0)), torch.nan_to_num(x))
    if task.kind == "image":
        assert torch.equal(flipped, x) and not ignored.any()


def test_every_builtin_type_is_registered():
    assert {"semseg", "depth", "normals", "edge", "scene"} <= set(TASKS.names())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("type_", TASKS.names())
def test_every_task_on_cuda_matches_cpu(type_):
    task, pred, target = _sample(type_, 3, seed=3)
    cpu = _state(task, pred, target)
    gpu = _state(task, pred.cuda(), target.cuda())
    assert gpu.device.type == "cuda"
    assert torch.allclose(cpu, gpu.cpu(), rtol=1e-6, atol=1e-6)
    assert task.loss(pred.cuda(), target.cuda()).item() == pytest.approx(
        task.loss(pred, target).item(), rel=1e-5
    )

"""The task types of the PASCAL / Taskonomy / CelebA studies: losses and metrics by hand; and
every task's target geometry (``hflip`` / ``zoom`` / ``rotate`` / ``resample``) and ``ignored``
rule on hand-computed samples."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import trainables.tasks  # noqa: F401  (registers the task types)
from trainables.datasets.transforms import resize_map
from trainables.registry import TASKS


def _state(task, pred, target):
    s = task.metric_state()
    task.update_metric(s, pred, target)
    return s


def _logit(p):
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


# ----------------------------------------------------------------------------- saliency
def test_saliency_balanced_bce_by_hand():
    task = TASKS.get("saliency")()
    pred = torch.tensor([0.0, math.log(3.0), -1.0, 9.0]).view(1, 1, 1, 4)  # p = .5, .75, sigmoid(-1), ~1
    target = torch.tensor([1.0, 0.0, 0.0, 255.0]).view(1, 1, 1, 4)  # 1 positive, 2 negatives, 1 ignored
    w = 2 / 3  # share of negatives among the 3 valid pixels weighs the positives
    p3 = 1 / (1 + math.exp(1.0))
    expected = (w * -math.log(0.5) + (1 - w) * (-math.log(0.25) - math.log(1 - p3))) / 3
    assert task.loss(pred, target).item() == pytest.approx(expected, rel=1e-6)
    plain = TASKS.get("saliency")(loss="bce")
    ref = F.binary_cross_entropy_with_logits(pred[..., :3], target[..., :3])
    assert plain.loss(pred, target).item() == pytest.approx(ref.item(), rel=1e-6)
    assert task.loss(pred, torch.full_like(target, 255.0)).item() == 0.0


def test_saliency_pooled_maxf_matches_brute_force():
    pos, neg = [0.9, 0.6, 0.3], [0.8, 0.4, 0.2, 0.1]
    target = torch.tensor([1.0] * 3 + [0.0] * 4 + [255.0]).view(1, 1, 1, 8)
    pred = _logit(pos + neg + [0.99]).view(1, 1, 1, 8)
    m = TASKS.get("saliency")().compute_metric(_state(TASKS.get("saliency")(), pred, target))
    best = 0.0
    for t in pos + neg:  # salient iff p >= t
        tp, fp = sum(p >= t for p in pos), sum(p >= t for p in neg)
        best = max(best, 2 * tp / (2 * tp + fp + (len(pos) - tp)))
    assert m["maxf"] == pytest.approx(100 * best) and best == pytest.approx(0.75)


def test_saliency_survey_per_image_miou_and_maxf():
    # Two images, 4 pixels each, thresholds 0.3 and 0.7 only.
    task = TASKS.get("saliency")(thresholds=[0.3, 0.7])
    probs = torch.tensor([[0.8, 0.5, 0.2, 0.1], [0.9, 0.9, 0.1, 0.1]])
    gt = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    s = _state(task, _logit(probs).view(2, 1, 1, 4), gt.view(2, 1, 1, 4))
    # t = .3: image 0 pred {0,1} = gt -> IoU 1, P 1, R 1; image 1 pred {0,1}, gt {0} -> IoU .5, P .5, R 1
    # t = .7: image 0 pred {0} -> IoU .5, P 1, R .5; image 1 pred {0,1} -> IoU .5, P .5, R 1
    m = task.compute_metric(s)
    assert m["miou"] == pytest.approx(100 * 0.75)  # max(mean(1, .5), mean(.5, .5))
    f_03 = 2 * 0.75 * 1.0 / 1.75  # mean P .75, mean R 1
    f_07 = 2 * 0.75 * 0.75 / 1.5
    assert m["maxf_img"] == pytest.approx(100 * max(f_03, f_07))


def test_saliency_empty_image_counts_iou_one_and_primary_is_selectable():
    task = TASKS.get("saliency")(thresholds=[0.5], primary="miou")
    assert task.primary_metric == "miou" and TASKS.get("saliency")().primary_metric == "maxf"
    pred = _logit([0.1, 0.2]).view(1, 1, 1, 2)  # nothing predicted, nothing salient
    m = task.compute_metric(_state(task, pred, torch.zeros(1, 1, 1, 2)))
    assert m["miou"] == pytest.approx(100.0) and math.isnan(m["maxf"])  # no positive pixel pooled
    ignored = _state(task, pred, torch.full((1, 1, 1, 2), 255.0))
    assert float(ignored.sum()) == 0.0  # a fully ignored image is not counted at all


# ----------------------------------------------------------------------------- human parts
def test_human_parts_is_semseg_with_seven_classes():
    task = TASKS.get("human_parts")()
    semseg = TASKS.get("semseg")(num_classes=7)
    assert task.name == "human_parts" and task.out_channels == 7 and task.primary_metric == "miou"
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 7, 3, 4, generator=g), torch.randint(0, 7, (2, 3, 4), generator=g)
    target[0, 0, 0] = 255
    assert torch.equal(_state(task, pred, target), _state(semseg, pred, target))
    assert task.loss(pred, target).item() == pytest.approx(F.cross_entropy(pred, target, ignore_index=255).item())
    with pytest.raises(ValueError, match="human_parts: num_classes"):
        TASKS.get("human_parts")(num_classes=1)


# ----------------------------------------------------------------------------- dense L1 / keypoints
def test_dense_l1_masks_nan_and_invalid_value_by_hand():
    task = TASKS.get("dense_l1")(channels=1, invalid_value=0.0)
    target = torch.tensor([1.0, 0.0, float("nan"), 3.0]).view(1, 1, 1, 4)
    pred = torch.tensor([2.0, 5.0, 7.0, 1.0]).view(1, 1, 1, 4).requires_grad_(True)
    loss = task.loss(pred, target)
    assert loss.item() == pytest.approx((1 + 2) / 2)
    loss.backward()
    assert pred.grad.view(-1).tolist() == pytest.approx([0.5, 0.0, 0.0, -0.5])  # no NaN leaks
    m = task.compute_metric(_state(task, pred.detach(), target))
    assert m["l1"] == pytest.approx(1.5) and m["rmse"] == pytest.approx(math.sqrt((1 + 4) / 2))
    assert TASKS.get("dense_l1")().loss(pred, target).item() == pytest.approx((1 + 5 + 2) / 3)


def test_keypoints_is_a_named_dense_l1():
    task = TASKS.get("keypoints")()
    assert task.name == "keypoints" and task.out_channels == 1
    assert task.primary_metric == "l1" and task.higher_is_better is False
    with pytest.raises(ValueError, match="keypoints: channels"):
        TASKS.get("keypoints")(channels=0)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        task.loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))


# ----------------------------------------------------------------------------- attribute
def test_attribute_bce_and_accuracy_by_hand():
    task = TASKS.get("attribute")()
    pred = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    target = torch.tensor([1.0, 1.0, 0.0, 0.0])
    ref = F.binary_cross_entropy_with_logits(pred, target.view(4, 1))
    assert task.loss(pred, target).item() == pytest.approx(ref.item())
    assert task.loss(pred, target.view(4, 1)).item() == pytest.approx(ref.item())  # [B, 1] too
    m = task.compute_metric(_state(task, pred, target))
    assert m == pytest.approx({"accuracy": 50.0, "error": 50.0, "recall": 50.0})  # rows 0 and 3 right
    weighted = TASKS.get("attribute")(pos_weight=3.0)
    ref_w = F.binary_cross_entropy_with_logits(pred, target.view(4, 1), pos_weight=torch.tensor([3.0]))
    assert weighted.loss(pred, target).item() == pytest.approx(ref_w.item())


@pytest.mark.parametrize("type_, kwargs, field", [
    ("saliency", {"loss": "l2"}, "loss"),
    ("saliency", {"thresholds": [0.0]}, "thresholds"),
    ("saliency", {"primary": "odsf"}, "primary"),
    ("saliency", {"ignore_index": 1}, "ignore_index"),
    ("dense_l1", {"invalid_value": float("nan")}, "invalid_value"),
    ("attribute", {"pos_weight": 0.0}, "pos_weight"),
])
def test_invalid_kwargs_name_the_field(type_, kwargs, field):
    with pytest.raises(ValueError, match=f"{type_}: {field}"):
        TASKS.get(type_)(**kwargs)


# ----------------------------------------------------------------------------- target geometry
NAN = float("nan")


def test_normals_hflip_negates_x_and_rotate_turns_in_plane():
    task = TASKS.get("normals")()
    n = torch.tensor([[[0.5, 0.0]], [[0.0, 0.5]], [[0.75, 0.75]]])  # [3, 1, 2]
    assert task.hflip(n).tolist() == [[[-0.0, -0.5]], [[0.5, 0.0]], [[0.75, 0.75]]]
    right = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    # image rotated 90 deg counter-clockwise: a normal pointing right now points up (y down)
    assert task.rotate(right, 90.0).view(3).tolist() == pytest.approx([0.0, -1.0, 0.0], abs=1e-7)
    assert torch.equal(task.zoom(n, 1.5, (1.5, 1.5)), n)  # a zoom keeps directions


def test_normals_ignored_and_resample():
    task = TASKS.get("normals")()
    n = torch.tensor([[[0.0, 3.0]], [[0.0, 4.0]], [[0.0, 0.0]]])  # pixel 0 invalid (zero vector)
    assert task.ignored(n).tolist() == [[[True, False]]] * 3
    up = task.resample(n, lambda x, mode: resize_map(x, (1, 4), mode))  # nearest validity, bilinear values
    assert up[:, 0, :2].abs().sum() == 0
    assert up[:, 0, 2:].flatten().tolist() == pytest.approx([0.6, 0.6, 0.8, 0.8, 0.0, 0.0])
    inside = torch.tensor([[True, True, True, False]])
    assert task.resample(n, lambda x, mode: resize_map(x, (1, 4), mode), inside)[:, 0, 3].abs().sum() == 0


def test_depth_zoom_divides_metric_depth_and_multiplies_disparity():
    d = torch.tensor([[[2.0, 0.0, 6.0]]])
    metric, disparity = TASKS.get("depth")(), TASKS.get("depth")(disparity=True)
    assert metric.zoom(d, 2.0, (2.0, 2.0)).tolist() == [[[1.0, 0.0, 3.0]]]  # the scene comes 2x closer
    assert disparity.zoom(d, 2.0, (2.0, 2.0)).tolist() == [[[4.0, 0.0, 12.0]]]  # nearer = larger disparity
    assert metric.hflip(d).tolist() == [[[6.0, 0.0, 2.0]]]
    assert metric.ignored(torch.tensor([[[2.0, 0.0, -1.0, NAN]]])).tolist() == [[[False, True, True, True]]]
    assert TASKS.get("depth")(min_depth=2.0).ignored(d).tolist() == [[[True, True, False]]]


def test_label_maps_ignore_their_ignore_index_and_resample_nearest():
    seg = TASKS.get("semseg")(num_classes=3)
    labels = torch.tensor([[0, 255, 2]])
    assert seg.ignored(labels).tolist() == [[False, True, False]]
    assert seg.hflip(labels).tolist() == [[2, 255, 0]] and torch.equal(seg.zoom(labels, 2.0, (2.0, 2.0)), labels)
    own = TASKS.get("semseg")(num_classes=3, ignore_index=-1)  # the parameter drives the rule
    assert own.ignored(torch.tensor([[0, -1, 255]])).tolist() == [[False, True, False]]
    inside = torch.tensor([[True] * 5 + [False]])
    out = seg.resample(labels, lambda x, mode: resize_map(x, (1, 6), mode), inside)
    assert out.dtype == torch.long and out.tolist() == [[0, 0, 255, 255, 2, 255]]
    assert TASKS.get("human_parts")().ignored(labels).tolist() == [[False, True, False]]
    for type_ in ("edge", "saliency"):
        binary = torch.tensor([[[1.0, 255.0, 0.0]]])
        assert TASKS.get(type_)().ignored(binary).tolist() == [[[False, True, False]]]


def test_dense_l1_ignores_non_finite_and_its_invalid_value():
    t = torch.tensor([[[0.0, NAN, 0.5, float("inf")]]])
    assert TASKS.get("dense_l1")().ignored(t).tolist() == [[[False, True, False, True]]]
    assert TASKS.get("keypoints")(invalid_value=0.0).ignored(t).tolist() == [[[True, True, False, True]]]


def test_image_level_targets_ignore_geometry():
    samples = ((TASKS.get("scene")(num_classes=5), torch.tensor(3)), (TASKS.get("attribute")(), torch.tensor(1.0)))
    for task, y in samples:
        assert task.hflip(y) is y and task.zoom(y, 2.0, (2.0, 2.0)) is y and task.resample(y, None) is y
        assert not task.ignored(y).any()

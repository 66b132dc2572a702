"""The instance_center task: NaN-ignore convention, masked L1 loss, hand-computed metrics and
the geometry of its offsets (mirror, zoom)."""
import math

import pytest
import torch

from trainables.registry import TASKS

NAN = float("nan")


def _pair():
    """Two valid pixels and two ignored ones; errors (3, 4) -> 5 px and (0, 1) -> 1 px."""
    target = torch.tensor([[[[1.0, NAN], [0.0, NAN]], [[2.0, NAN], [-1.0, NAN]]]])  # [1, 2, 2, 2]
    pred = torch.tensor([[[[4.0, 9.0], [0.0, -7.0]], [[6.0, 9.0], [0.0, 3.0]]]])
    return pred, target


def test_registered_and_shaped():
    task = TASKS.get("instance_center")()
    assert task.name == "instance_center" and task.out_channels == 2 and task.kind == "dense"
    assert task.primary_metric == "mean_error" and task.higher_is_better is False
    with pytest.raises(ValueError, match=r"\[B, 2, H, W\]"):
        task.loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def test_loss_is_l1_over_valid_elements_and_nan_free():
    task = TASKS.get("instance_center")()
    pred, target = _pair()
    pred.requires_grad_(True)
    loss = task.loss(pred, target)
    assert loss.item() == pytest.approx((3 + 4 + 0 + 1) / 4)  # 2 valid pixels x 2 components
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[0, :, :, 1].abs().sum() == 0  # ignored pixels get no gradient
    empty = task.loss(pred, torch.full_like(target, NAN))
    assert empty.item() == 0.0 and empty.requires_grad


def test_metric_hand_computed_and_sum_reducible():
    task = TASKS.get("instance_center")()
    pred, target = _pair()
    state = task.metric_state()
    task.update_metric(state, pred, target)
    m = task.compute_metric(state)
    assert m["mean_error"] == pytest.approx((5 + 1) / 2)
    assert m["rmse"] == pytest.approx(math.sqrt((25 + 1) / 2))
    assert m["l1"] == pytest.approx((7 + 1) / 2)
    # two workers' states summed == one state over both batches
    a, b = task.metric_state(), task.metric_state()
    task.update_metric(a, pred, target)
    task.update_metric(b, pred + 1, target)
    both = task.metric_state()
    task.update_metric(both, torch.cat([pred, pred + 1]), torch.cat([target, target]))
    assert torch.allclose(a + b, both)
    assert all(math.isnan(v) for v in task.compute_metric(task.metric_state()).values())


def test_instance_center_hflip_negates_dx_and_zoom_scales_offsets():
    task = TASKS.get("instance_center")()
    t = torch.tensor([[[1.0, NAN, 3.0]], [[-2.0, NAN, 4.0]]])  # (dy, dx) of 3 pixels, the middle unlabelled
    flipped = task.hflip(t)
    assert flipped[0, 0].tolist()[::2] == [3.0, 1.0] and flipped[1, 0].tolist()[::2] == [-4.0, 2.0]
    zoomed = task.zoom(t, 1.5, (2.0, 1.25))  # (dy, dx) * (fy, fx)
    assert zoomed[0, 0].tolist()[::2] == [2.0, 6.0] and zoomed[1, 0].tolist()[::2] == [-2.5, 5.0]
    assert task.ignored(t).tolist() == [[[False, True, False]]] * 2

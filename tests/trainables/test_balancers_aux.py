"""Balancers for auxiliary-task learning: GCS and OL-AUX (hand-made gradient matrices, the update
rules pinned exactly, OL-AUX's windows over several steps, one training step on the toy model
each) and RLW's normal draw pinned against a hand computation."""
from __future__ import annotations

import math

import pytest
import torch

import trainables  # noqa: F401  (registers every plug-in)
from tests.trainables.test_steps import TOY_TASKS, ToyNoRep, close, step_grads, toy, toy_batch
from trainables.balancers.gcs import GCS
from trainables.balancers.ol_aux import OLAux
from trainables.balancers.rlw import RLW
from trainables.build import build_balancer
from trainables.plugins import Plugin, RunContext

NAMES = ["p", "x", "y"]


def losses_of(names):
    return {t: torch.tensor(1.0) for t in names}


def hand_cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


@pytest.mark.parametrize("cls", [GCS, OLAux])
def test_primary_task_is_required_and_known(cls):
    with pytest.raises(ValueError, match="primary_task is required .* set the study's primary_task"):
        cls(NAMES)
    with pytest.raises(ValueError, match=r"primary_task 'z' is not one of the tasks"):
        cls(NAMES, primary_task="z")
    reg = "gcs" if cls is GCS else "ol_aux"
    assert build_balancer(reg, NAMES, RunContext(primary_task="y")).primary_task == "y"
    assert build_balancer(Plugin(reg, {"primary_task": "x"}), NAMES, RunContext(primary_task="y")).primary_task == "x"
    assert cls.INFO.needs_primary_task and cls.INFO.grad_target == "params"


# -- GCS -----------------------------------------------------------------------------------------
# primary g_p = (1, 0, 0); x = (-2, 1, 0): cos = -2/sqrt(5) < 0; y = (3, 4, 0): cos = 3/5 > 0
G = torch.tensor([[1.0, 0.0, 0.0], [-2.0, 1.0, 0.0], [3.0, 4.0, 0.0]], dtype=torch.float64)


def test_gcs_unweighted_drops_exactly_the_conflicting_auxiliary_gradient():
    bal = GCS(NAMES, primary_task="p")
    d = bal.combine_grads(G, losses_of(NAMES))
    torch.testing.assert_close(d, G[0] + G[2], rtol=0, atol=0)  # x (cos < 0) dropped, y kept whole
    assert bal.current_weights() == {"p": 1.0, "x": 0.0, "y": 1.0}
    # the primary need not be the first row: y as the primary, cos(y, p) = 3/5, cos(y, x) = -2/(5 sqrt 5)
    assert hand_cos(G[2].tolist(), G[1].tolist()) == pytest.approx(-2 / (5 * math.sqrt(5)))
    d = GCS(NAMES, primary_task="y").combine_grads(G, losses_of(NAMES))
    torch.testing.assert_close(d, G[0] + G[2], rtol=0, atol=0)


def test_gcs_weighted_scale_is_the_cosine():
    cos_x, cos_y = hand_cos(G[0].tolist(), G[1].tolist()), hand_cos(G[0].tolist(), G[2].tolist())
    assert cos_x == pytest.approx(-2 / math.sqrt(5)) and cos_y == pytest.approx(0.6)
    bal = GCS(NAMES, primary_task="p", variant="weighted")
    d = bal.combine_grads(G, losses_of(NAMES))
    torch.testing.assert_close(d, G[0] + 0.6 * G[2], rtol=1e-12, atol=1e-12)
    w = bal.current_weights()
    assert w["p"] == 1.0 and w["x"] == 0.0 and w["y"] == pytest.approx(0.6, rel=1e-6)
    # the coefficients come from the Gram matrix alone (what makes the method DDP-exact)
    coef = bal.grad_weights(G @ G.T, losses_of(NAMES))
    torch.testing.assert_close(coef, torch.tensor([1.0, 0.0, 0.6], dtype=torch.float64))


def test_gcs_missing_primary_or_auxiliary():
    bal = GCS(NAMES, primary_task="p")
    # no primary: every cosine is 0 -> no shared update; heads still train (combine sums the losses)
    d = bal.combine_grads(G[1:], losses_of(["x", "y"]))
    assert torch.equal(d, torch.zeros(3, dtype=torch.float64))
    assert float(bal.combine({"x": torch.tensor(2.0), "y": torch.tensor(3.0)})) == 5.0
    # an absent auxiliary task: rows are the present tasks (p, y)
    d = bal.combine_grads(G[[0, 2]], losses_of(["p", "y"]))
    torch.testing.assert_close(d, G[0] + G[2], rtol=0, atol=0)
    assert bal.current_weights() == {"p": 1.0, "x": 0.0, "y": 1.0}
    # a zero auxiliary gradient has cosine 0 and is dropped; zero primary likewise
    z = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], dtype=torch.float64)
    assert bal.grad_weights(z @ z.T, losses_of(NAMES)).tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("cls_model", [None, ToyNoRep])
@pytest.mark.parametrize("variant", ["unweighted", "weighted"])
def test_gcs_training_step_writes_the_gated_gradient(variant, cls_model):
    model, tasks = toy() if cls_model is None else toy(cls_model)
    batch = toy_batch()
    bal = GCS(TOY_TASKS, primary_task="b", variant=variant)
    step_grads(model, bal, tasks, batch)
    shared = model.shared_parameters()
    out = model.decode(model.encode(batch["image"]), None)
    losses = {t: tasks[t].loss(out[t], batch["targets"][t]) for t in TOY_TASKS}
    grads = {t: torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], shared, retain_graph=True)])
             for t in TOY_TASKS}
    expected = grads["b"].clone()
    for t in ("a", "c"):
        cos = float(grads["b"] @ grads[t] / (grads["b"].norm() * grads[t].norm()))
        expected += (float(cos > 0) if variant == "unweighted" else max(0.0, cos)) * grads[t]
    close(torch.cat([p.grad.flatten() for p in shared]), expected)
    for t in TOY_TASKS:  # every head follows its own loss, weight 1
        head = model.task_specific_parameters(t)
        for p, g in zip(head, torch.autograd.grad(losses[t], head, retain_graph=True)):
            close(p.grad, g)


# -- OL-AUX --------------------------------------------------------------------------------------
# three steps per window is enough to see the window; the primary is the middle row ("x")
STEPS = [
    torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]),    # <x, p> = 1, <x, y> = 2
    torch.tensor([[-1.0, 0.0], [2.0, 0.0], [1.0, 1.0]]),   # -2, 2
    torch.tensor([[0.0, 3.0], [0.0, 1.0], [4.0, -1.0]]),   # 3, -1
    torch.tensor([[2.0, 2.0], [1.0, -1.0], [1.0, 1.0]]),   # 0, 0
    torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, -3.0]]),   # 0, -6
    torch.tensor([[4.0, 0.0], [1.0, 0.0], [-2.0, 0.0]]),   # 4, -2
    torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]),    # a step of the third window
]


def test_ol_aux_weight_update_over_two_windows_by_hand():
    bal = OLAux(NAMES, primary_task="x", beta=0.25, window=3, init_weight=1.0)
    w_p, w_y = 1.0, 1.0
    # window 1 sums: p: 1 - 2 + 3 = 2, y: 2 + 2 - 1 = 3 -> w = 1 + 0.25 * (2, 3) = (1.5, 1.75)
    # window 2 sums: p: 0 + 0 + 4 = 4, y: 0 - 6 - 2 = -8 -> w = (1.5 + 1, 1.75 - 2) = (2.5, -0.25)
    expected_w = [(1.0, 1.0)] * 3 + [(1.5, 1.75)] * 3 + [(2.5, -0.25)]
    for g, (w_p, w_y) in zip(STEPS, expected_w):
        d = bal.combine_grads(g, losses_of(NAMES))
        torch.testing.assert_close(d, w_p * g[0] + g[1] + w_y * g[2], rtol=0, atol=0)  # g_main + sum_k w_k g_k
        assert bal.current_weights() == {"p": w_p, "x": 1.0, "y": w_y}
        assert float(bal.combine({"p": torch.tensor(2.0), "x": torch.tensor(3.0), "y": torch.tensor(4.0)})) == \
            2 * w_p + 3 + 4 * w_y  # the heads use the weights of the same step
    # the pending sum of the third window: p: 1, y: 1
    assert bal.window_sum.tolist() == [1.0, 0.0, 1.0] and int(bal.window_steps) == 1


def test_ol_aux_cosine_variant_clamp_and_missing_tasks():
    bal = OLAux(NAMES, primary_task="x", beta=0.5, window=2, similarity="cosine", clamp_at_zero=True, init_weight=0.5)
    g1 = torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, -2.0]])     # cos(x, p) = 3/5, cos(x, y) = -4/5
    g2 = torch.tensor([[0.0, 5.0], [0.0, 1.0]])                  # y absent: rows (p, x): cos = 1
    bal.combine_grads(g1, losses_of(NAMES))
    bal.combine_grads(g2, losses_of(["p", "x"]))
    d = bal.combine_grads(torch.tensor([[1.0, 1.0], [2.0, 2.0]]), losses_of(["p", "y"]))  # primary absent
    # window: p: 0.6 + 1 = 1.6 -> 0.5 + 0.8 = 1.3;  y: -0.8 -> 0.5 - 0.4 = 0.1 (>= 0, not clamped)
    w = bal.current_weights()
    assert w["x"] == 1.0 and w["p"] == pytest.approx(1.3) and w["y"] == pytest.approx(0.1)
    # no primary in the batch: the literal L gives sum_k w_k g_k; nothing accumulated, the step counted
    torch.testing.assert_close(d, 1.3 * torch.tensor([1.0, 1.0]) + 0.1 * torch.tensor([2.0, 2.0]))
    assert bal.window_sum.tolist() == [0.0, 0.0, 0.0] and int(bal.window_steps) == 1
    bal.combine_grads(torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]), losses_of(NAMES))  # y: cos -1
    bal.combine_grads(g2, losses_of(["p", "x"]))
    # the window of steps 3-4 closed when step 5 began: p: 1.3 + 0.5 * 1 = 1.8; y: 0.1 - 0.5 < 0 -> 0
    w = bal.current_weights()
    assert w["y"] == 0.0 and w["p"] == pytest.approx(1.8)


def test_ol_aux_params_are_checked():
    for bad in ({"beta": 0}, {"window": 0}, {"window": 2.5}, {"similarity": "l2"}, {"clamp_at_zero": "yes"}):
        with pytest.raises(ValueError, match="balancer 'ol_aux'"):
            OLAux(NAMES, primary_task="p", **bad)


def test_ol_aux_training_steps_on_the_toy_model():
    model, tasks = toy()
    batch = toy_batch()
    bal = OLAux(TOY_TASKS, primary_task="b", beta=0.1, window=2, init_weight=0.5)
    shared = model.shared_parameters()

    def grads_by_hand():
        out = model.decode(model.encode(batch["image"]), None)
        losses = {t: tasks[t].loss(out[t], batch["targets"][t]) for t in TOY_TASKS}
        per_task = {t: torch.autograd.grad(losses[t], shared + model.task_specific_parameters(t), retain_graph=True)
                    for t in TOY_TASKS}
        return {t: (torch.cat([g.flatten() for g in gs[:len(shared)]]), gs[len(shared):]) for t, gs in per_task.items()}

    w = {"a": 0.5, "b": 1.0, "c": 0.5}
    window = {"a": 0.0, "c": 0.0}
    for step in range(3):  # lr 0: the same gradients every step, the weights change after step 2
        g = grads_by_hand()
        if step == 2:
            w = {t: (1.0 if t == "b" else w[t] + 0.1 * window[t]) for t in TOY_TASKS}
        for p in list(model.parameters()):
            p.grad = None
        step_grads(model, bal, tasks, batch)
        close(torch.cat([p.grad.flatten() for p in shared]), sum(w[t] * g[t][0] for t in TOY_TASKS))
        for t in TOY_TASKS:  # heads: w_t grad L_t
            for p, gt in zip(model.task_specific_parameters(t), g[t][1]):
                close(p.grad, w[t] * gt)
        for t in ("a", "c"):
            window[t] += float(g["b"][0] @ g[t][0])
    assert bal.current_weights()["a"] == pytest.approx(w["a"], rel=1e-5)


# -- RLW-Normal ----------------------------------------------------------------------------------
def test_rlw_normal_draw_pinned_by_hand():
    bal = RLW(["a", "b", "c"], seed=11)  # distribution="normal" is the default (IAL's RLW-Normal)
    assert bal.params.distribution == "normal"
    ref = torch.Generator().manual_seed(11)
    for _ in range(3):  # the same stream, step after step
        raw = torch.randn(3, generator=ref, dtype=torch.float64).tolist()
        e = [math.exp(v) for v in raw]
        hand = [v / sum(e) for v in e]  # softmax of N(0, I) draws (LibMTL's RLW)
        total = bal.combine(losses_of(["a", "b", "c"]))
        w = bal.current_weights()
        assert [w["a"], w["b"], w["c"]] == pytest.approx(hand, rel=1e-6)
        assert float(total) == pytest.approx(1.0)
    # a task absent: the next draw, renormalised over the present tasks
    raw = torch.randn(3, generator=ref, dtype=torch.float64).tolist()
    e = [math.exp(v) for v in raw]
    bal.combine(losses_of(["a", "c"]))
    w = bal.current_weights()
    assert w["b"] == 0.0 and [w["a"], w["c"]] == pytest.approx([e[0] / (e[0] + e[2]), e[2] / (e[0] + e[2])], rel=1e-6)

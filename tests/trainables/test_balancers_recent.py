"""IAL's three recent task-weighting baselines (its Table I, references [23]-[25]): Miraliev et al.,
ATW (UMT-Net) and PUW (particle filter), each update rule against numbers worked out by hand over
several steps or epochs, state round trips, and one training step on a toy model.

The registry-wide contract (determinism, checkpoint round trip inside the train step) runs for
them in test_steps.py::test_balancer_contract.
"""
import io
import math

import numpy as np
import pytest
import torch

from tests.trainables.test_steps import TOY_TASKS, ToyNoRep, by_hand, close, step_grads, toy, toy_batch
from trainables.balancers.atw import ATW
from trainables.balancers.miraliev import Miraliev
from trainables.balancers.puw import PUW, measurement, pf_update, project, systematic_resample
from trainables.build import build_balancer
from trainables.plugins import Plugin, RunContext


def losses_of(values, names=("a", "b", "c")):
    return {n: torch.tensor(float(v), dtype=torch.float64) for n, v in zip(names, values) if v is not None}


def round_trip(bal, fresh):
    buffer = io.BytesIO()
    torch.save(bal.state_dict(), buffer)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    return fresh


# -- Miraliev et al. -----------------------------------------------------------------------------
def test_miraliev_objective_and_sgd_steps_by_hand():
    bal = Miraliev(["a", "b"])
    assert bal.current_weights() == {"a": 1.0, "b": 1.0}  # s = 0: the weights start at 1
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(0.5)}
    assert float(bal.combine(losses).detach()) == pytest.approx(2.5)
    # SGD on s with the losses held fixed: dL/ds = 1 - exp(-s) L, so s <- s - lr (1 - exp(-s) L)
    opt = torch.optim.SGD(bal.parameters(), lr=0.1)
    s = [0.0, 0.0]
    for _ in range(3):
        opt.zero_grad()
        bal.combine(losses).backward()
        opt.step()
        s = [si - 0.1 * (1 - math.exp(-si) * li) for si, li in zip(s, (2.0, 0.5))]
    # by hand: a: 0 -> 0.1 -> 0.1 + 0.1 (2 exp(-0.1) - 1) = 0.180967 -> 0.247860;
    #          b: 0 -> -0.05 -> -0.05 + 0.1 (0.5 exp(0.05) - 1) = -0.097436 -> -0.142319
    np.testing.assert_allclose(s, [0.247860, -0.142319], atol=1e-6)
    np.testing.assert_allclose(bal.log_weights.detach().numpy(), s, rtol=1e-6)
    assert bal.current_weights()["a"] == pytest.approx(math.exp(-s[0]), rel=1e-6)


def test_miraliev_converges_to_inverse_loss_and_skips_missing_tasks():
    bal = Miraliev(["a", "b", "c"])
    opt = torch.optim.Adam(bal.parameters(), lr=0.05)
    for _ in range(1500):
        opt.zero_grad()
        bal.combine(losses_of([0.25, 1.0, 4.0])).backward()
        opt.step()
    np.testing.assert_allclose(list(bal.current_weights().values()), [4.0, 1.0, 0.25], rtol=1e-3)  # w = 1 / L
    fresh = Miraliev(["a", "b", "c"], init_log_weight=0.0)
    assert float(fresh.combine(losses_of([2.0, None, 3.0])).detach()) == pytest.approx(5.0)  # "b" absent: no s_b term
    restored = round_trip(bal, fresh)
    assert restored.current_weights() == bal.current_weights()


def test_miraliev_is_twice_uncertainty_regression_form_with_one_objective_per_task():
    from trainables.balancers.uncertainty import Uncertainty

    mir, unc = Miraliev(["a", "b"]), Uncertainty(["a", "b"], init_log_var=0.0)
    with torch.no_grad():
        mir.log_weights.copy_(torch.tensor([0.4, -0.7]))
        unc.log_vars.copy_(torch.tensor([0.4, -0.7]))
    losses = losses_of([1.5, 0.3], "ab")
    assert float(mir.combine(losses).detach()) == pytest.approx(2 * float(unc.combine(losses).detach()), rel=1e-6)


# -- ATW -----------------------------------------------------------------------------------------
def lam(rates, temperature=2.0):
    e = np.exp(np.asarray(rates) / temperature)
    return len(rates) * e / e.sum()


def test_atw_rate_weights_over_epochs_by_hand():
    bal = ATW(["a", "b", "c"])
    assert [bal.current_weights()[f"rate/{t}"] for t in "abc"] == [1.0, 1.0, 1.0]
    bal.on_epoch_end(0, {"a": 1.0, "b": 2.0, "c": 4.0})
    assert [bal.current_weights()[f"rate/{t}"] for t in "abc"] == [1.0, 1.0, 1.0]  # first two epochs: 1
    bal.on_epoch_end(1, {"a": 0.5, "b": 1.8, "c": 2.0})
    # short = long = (0.5, 0.9, 0.5): lambda = 3 softmax(r / 2) = (0.93127, 1.13746, 0.93127)
    expected = [0.9312713203590168, 1.1374573592819666, 0.9312713203590168]
    np.testing.assert_allclose([bal.current_weights()[f"rate/{t}"] for t in "abc"], expected, rtol=1e-6)
    bal.on_epoch_end(2, {"a": 0.4, "b": 0.9, "c": 1.8})
    # short = (0.8, 0.5, 0.9), long = (0.4, 0.45, 0.45): r = (0.6, 0.475, 0.675)
    np.testing.assert_allclose([bal.current_weights()[f"rate/{t}"] for t in "abc"], lam([0.6, 0.475, 0.675]), rtol=1e-6)
    bal.on_epoch_end(3, {"a": 0.3, "b": 0.9})  # "c" unlabelled all epoch: its rates are 1
    # short = (0.75, 1, 1), long = (0.3, 0.45, 1): r = (0.525, 0.725, 1.0)
    lam3 = lam([0.525, 0.725, 1.0])
    np.testing.assert_allclose([bal.current_weights()[f"rate/{t}"] for t in "abc"], lam3, rtol=1e-6)
    # the loss: lambda_t (L_t / (2 exp(s)) + s / 2) with s = -0.5; "b" absent from this batch
    losses = {"a": torch.tensor(2.0, requires_grad=True), "c": torch.tensor(3.0, requires_grad=True)}
    total = bal.combine(losses)
    half_exp = 0.5 * math.exp(0.5)
    assert float(total.detach()) == pytest.approx(lam3[0] * (half_exp * 2 - 0.25) + lam3[2] * (half_exp * 3 - 0.25), rel=1e-6)
    total.backward()
    assert float(losses["a"].grad) == pytest.approx(lam3[0] * half_exp, rel=1e-6)  # the head's weight
    assert bal.current_weights()["c"] == pytest.approx(lam3[2] * half_exp, rel=1e-6)
    # d/ds_a = lambda_a (1 - exp(-s) L_a) / 2; s_b gets nothing
    assert float(bal.log_vars.grad[0]) == pytest.approx(lam3[0] * 0.5 * (1 - math.exp(0.5) * 2), rel=1e-6)
    assert float(bal.log_vars.grad[1]) == 0.0


def test_atw_first_loss_of_a_late_task_and_state_round_trip():
    bal = ATW(["a", "b"], temperature=1.0)
    bal.on_epoch_end(0, {"a": 2.0})  # "b" has no labels yet: its L(0) is its first labelled epoch
    bal.on_epoch_end(1, {"a": 1.0, "b": 3.0})
    # a: short = long = 0.5; b: short = 1 (no L(e-2)), long = 3 / 3 = 1
    np.testing.assert_allclose([bal.current_weights()["rate/a"], bal.current_weights()["rate/b"]], lam([0.5, 1.0], 1.0), rtol=1e-6)
    with torch.no_grad():
        bal.log_vars.copy_(torch.tensor([0.3, -0.2]))
    restored = round_trip(bal, ATW(["a", "b"], temperature=1.0))
    for later in ({"a": 0.8, "b": 1.5}, {"a": 0.7, "b": 1.4}):
        bal.on_epoch_end(2, later)
        restored.on_epoch_end(2, later)
        assert restored.current_weights() == bal.current_weights()
    # epoch 3: a: short = 0.7/0.8, long = 0.7/2; b: short = 1.4/1.5, long = 1.4/3
    expected = lam([0.5 * (0.7 / 0.8 + 0.35), 0.5 * (1.4 / 1.5 + 1.4 / 3)], 1.0)
    np.testing.assert_allclose([bal.current_weights()["rate/a"], bal.current_weights()["rate/b"]], expected, rtol=1e-6)


# -- PUW: the filter's pieces by hand -------------------------------------------------------------
def test_puw_projection_measurement_update_and_resampling_by_hand():
    # P: clip at w_min, rescale to sum T
    np.testing.assert_allclose(project(torch.tensor([[-1.0, 1.0, 4.0]], dtype=torch.float64), 0.01).numpy(),
                               [[0.03 / 5.01, 3 / 5.01, 12 / 5.01]], rtol=1e-12)
    # z from the long-term rates, u from the change of pace
    first = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    history = torch.tensor([[1.0, 2.0, 4.0], [0.5, 1.8, 2.0], [0.4, 0.9, 1.8]], dtype=torch.float64)
    z, u = measurement(first, history, seen=3)
    np.testing.assert_allclose(z.numpy(), np.array([0.4, 0.45, 0.45]) * 3 / 1.3, rtol=1e-12)
    np.testing.assert_allclose(u.numpy(), [math.log(0.8 / 0.5), math.log(0.9 / 0.5), math.log(0.9 / 0.5)], rtol=1e-12)
    assert measurement(first, history, seen=2)[1].abs().sum() == 0  # no pace change before 3 epochs
    # Bayes' rule: two particles, equal prior, z = (1, 1), sigma = (0.5, 1)
    particles = torch.tensor([[1.2, 0.8], [0.6, 1.4]], dtype=torch.float64)
    log_pi, estimate = pf_update(particles, torch.full((2,), math.log(0.5), dtype=torch.float64),
                                 torch.ones(2, dtype=torch.float64), torch.tensor([0.5, 1.0], dtype=torch.float64))
    # log-likelihoods: -(0.4^2 + 0.2^2) / 2 = -0.1 and -(0.8^2 + 0.4^2) / 2 = -0.4
    pi1 = 1 / (1 + math.exp(-0.3))
    np.testing.assert_allclose(log_pi.exp().numpy(), [pi1, 1 - pi1], rtol=1e-12)
    np.testing.assert_allclose(estimate.numpy(), [1.2 * pi1 + 0.6 * (1 - pi1), 0.8 * pi1 + 1.4 * (1 - pi1)], rtol=1e-12)
    # systematic resampling: positions (0.5 + k) / 3 = 1/6, 1/2, 5/6 on the CDF (0.1, 0.7, 1.0)
    idx = systematic_resample(torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64), 0.5)
    assert idx.tolist() == [1, 1, 2]


def reference_puw(epochs, n, seed, warmup, q=0.05, tau=0.2, kappa=10.0, w_min=0.01):
    """PUW over a sequence of epoch losses, written out step by step with the same random draws."""
    g = torch.Generator().manual_seed(seed)
    e = -np.log1p(-torch.rand(n, 3, generator=g, dtype=torch.float64).numpy())
    particles = 3 * e / e.sum(axis=1, keepdims=True)
    log_pi = np.full(n, -math.log(n))
    weights, hist = [], []
    w = np.ones(3)
    for losses in epochs:
        hist.append(np.array(losses, dtype=float))
        if len(hist) >= max(warmup, 2):
            r = hist[-1] / hist[0]
            z = 3 * r / r.sum()
            u = np.abs(np.log(hist[-1] / hist[-2]) - np.log(hist[-2] / hist[-3])) if len(hist) >= 3 else np.zeros(3)
            sigma = tau * np.exp(kappa * u)
            noise = torch.randn(n, 3, generator=g, dtype=torch.float64).numpy()
            particles = np.maximum(particles + q * noise, w_min)
            particles = 3 * particles / particles.sum(axis=1, keepdims=True)
            log_pi = log_pi - 0.5 * (((particles - z) / sigma) ** 2).sum(axis=1)
            log_pi = log_pi - np.log(np.exp(log_pi - log_pi.max()).sum()) - log_pi.max()
            pi = np.exp(log_pi)
            w = pi @ particles
            if 1 / (pi ** 2).sum() < n / 2:
                u0 = float(torch.rand(1, generator=g, dtype=torch.float64))
                idx = np.minimum(np.searchsorted(np.cumsum(pi)[:-1], (u0 + np.arange(n)) / n, side="right"), n - 1)
                particles, log_pi = particles[idx], np.full(n, -math.log(n))
        weights.append(w.copy())
    return weights, particles


EPOCHS = [(1.0, 2.0, 4.0), (0.8, 1.9, 2.5), (0.7, 1.8, 1.6), (0.6, 1.75, 1.2), (0.55, 1.7, 1.0), (0.5, 1.68, 0.9)]


def test_puw_warm_up_then_filter_over_epochs():
    bal = PUW(["a", "b", "c"], particles=6, warmup_epochs=3, seed=5)
    expected, particles = reference_puw(EPOCHS, n=6, seed=5, warmup=3)
    for epoch, (losses, w) in enumerate(zip(EPOCHS, expected)):
        bal.on_epoch_end(epoch, dict(zip("abc", losses)))
        got = np.array(list(bal.current_weights().values()))
        if epoch < 2:  # warm-up: equal weights
            assert got.tolist() == [1.0, 1.0, 1.0]
        np.testing.assert_allclose(got, w, rtol=1e-6)
        assert got.sum() == pytest.approx(3.0, rel=1e-6) and got.min() > 0
    np.testing.assert_allclose(bal.particles.numpy(), particles, rtol=1e-12)
    # the step's loss is the weighted sum over the tasks present
    total = bal.combine({"a": torch.tensor(2.0), "c": torch.tensor(1.0)})
    assert float(total) == pytest.approx(2 * expected[-1][0] + expected[-1][2], rel=1e-6)


def test_puw_estimate_follows_a_steady_measurement():
    # every task's loss decays geometrically (u = 0) at its own pace: z is fixed once the rates
    # settle; the posterior mean of many particles tracks it
    bal = PUW(["a", "b", "c"], particles=400, warmup_epochs=0, seed=1)
    for epoch in range(40):
        bal.on_epoch_end(epoch, {"a": 0.9 ** epoch, "b": 0.97 ** epoch, "c": 0.99 ** epoch})
    r = np.array([0.9, 0.97, 0.99]) ** 39
    np.testing.assert_allclose(list(bal.current_weights().values()), 3 * r / r.sum(), atol=0.1)


def test_puw_state_round_trip_continues_identically():
    bal = PUW(["a", "b", "c"], particles=8, warmup_epochs=2, seed=3)
    for epoch, losses in enumerate(EPOCHS[:4]):
        bal.on_epoch_end(epoch, dict(zip("abc", losses)))
    restored = round_trip(bal, PUW(["a", "b", "c"], particles=8, warmup_epochs=2, seed=99))
    for epoch, losses in enumerate(EPOCHS[4:], start=4):
        bal.on_epoch_end(epoch, dict(zip("abc", losses)))
        restored.on_epoch_end(epoch, dict(zip("abc", losses)))
        assert restored.current_weights() == bal.current_weights()
    assert torch.equal(restored.particles, bal.particles) and torch.equal(restored.log_pi, bal.log_pi)


def test_puw_seed_from_context_and_checks():
    a = build_balancer(Plugin("puw", {}), ["a", "b"], RunContext(seed=4))
    b = build_balancer(Plugin("puw", {"seed": 4}), ["a", "b"], RunContext(seed=0))
    assert torch.equal(a.particles, b.particles)
    with pytest.raises(ValueError, match="particles"):
        PUW(["a", "b"], particles=1)
    with pytest.raises(ValueError, match="min_weight"):
        PUW(["a", "b"], min_weight=1.0)


# -- one training step on a toy model ------------------------------------------------------------
@pytest.mark.parametrize("name", ["miraliev", "atw", "puw"])
def test_training_step_trains_each_head_with_its_weight(name):
    model, tasks = toy(ToyNoRep)
    batch = toy_batch(unlabelled={"c": list(range(6))})  # "c" has no label in this batch
    bal = build_balancer(Plugin(name, {}), TOY_TASKS, RunContext(seed=0))
    if name != "miraliev":  # move the epoch state off its initial value
        for epoch, losses in enumerate(EPOCHS):
            bal.on_epoch_end(epoch, dict(zip(TOY_TASKS, losses)))
    if name != "puw":
        with torch.no_grad():
            next(bal.parameters()).copy_(torch.tensor([0.2, -0.3, 0.1]))
    step_grads(model, bal, tasks, batch)
    ref, _ = toy(ToyNoRep)
    _, losses, _ = by_hand(ref, tasks, batch)
    assert set(losses) == {"a", "b"}
    s = torch.tensor([0.2, -0.3, 0.1])
    if name == "miraliev":
        w = torch.exp(-s)
    elif name == "atw":
        w = bal.rate_weights * 0.5 * torch.exp(-s)
    else:
        w = bal.weights
    total = sum(w[i] * losses[t] for i, t in enumerate(TOY_TASKS) if t in losses)
    for p, e in zip(model.parameters(), torch.autograd.grad(total, list(ref.parameters()), allow_unused=True)):
        if e is None:  # the unlabelled head
            assert p.grad is None or not p.grad.any()
        else:
            close(p.grad, e)
    if name != "puw":  # the learnt weights' own gradient: d/ds_t of the objective
        scale = torch.ones(3) if name == "miraliev" else 0.5 * bal.rate_weights
        for i, t in enumerate(TOY_TASKS):
            g = float(next(bal.parameters()).grad[i])
            want = float(scale[i] * (1 - torch.exp(-s[i]) * losses[t].detach())) if t in losses else 0.0
            assert g == pytest.approx(want, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name,params", [("miraliev", {}), ("atw", {}), ("puw", {"warmup_epochs": 0, "particles": 16})])
def test_fit_runs_and_updates_the_epoch_state(name, params, tmp_path):
    from trainables.config import TrialConfig
    from trainables.session import Session
    from trainables.train_loop import fit

    cfg = TrialConfig(experiment="t", tasks=("semseg", "depth", "normals"), balancer=Plugin(name, params),
                      data_root=str(tmp_path), epochs=3, batch_size=8, max_steps_per_epoch=2,
                      dataset=Plugin("synthetic", {"image_size": 32, "num_train": 32, "num_val": 16, "num_test": 16}))
    report = fit(cfg, Session(device=torch.device("cpu")))
    assert report["finished"]
    weights = {k: v for k, v in report.items() if k.startswith("weight/")}
    assert weights and all(math.isfinite(v) for v in weights.values())
    # ATW's rate weights and PUW's filter weights moved off 1 after the second epoch
    moved = {"atw": [f"weight/rate/{t}" for t in cfg.tasks], "puw": [f"weight/{t}" for t in cfg.tasks]}.get(name, [])
    assert all(k in weights for k in moved) and (not moved or any(weights[k] != 1.0 for k in moved))

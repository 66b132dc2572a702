"""Auto-Lambda: the finite-difference hypergradient against a brute-force derivative of the meta
loss, a meta step that leaves the model alone, detached weights in ``combine``, the auxiliary
mode's meta loss, the step and ``fit`` with a meta batch.

Exactness tests run a tiny float64 MLP (MSE tasks) whose meta loss is re-derived here by hand:
    meta(lambda) = sum_{t primary} L_t(meta batch; theta - a (mu m + grad_theta sum_s lambda_s L_s(train) + wd theta))
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import trainables  # noqa: F401  (registers every plug-in)
from trainables.balancers.auto_lambda import AutoLambda
from trainables.build import balancer_info, build_balancer, build_model, build_tasks
from trainables.config import TrialConfig
from trainables.meta import MetaContext
from trainables.plugins import Plugin, RunContext
from trainables.schema import ConfigError
from trainables.session import Session
from trainables.steps import training_step
from trainables.train_loop import fit
from tests.trainables.test_steps import MSETask, Toy

TASKS = ["a", "b", "c"]


class Tiny(Toy):
    """The step tests' toy model, narrower: Linear(3, 5)-Tanh-Linear(5, 4) -> z [B, 4]."""

    def __init__(self, tasks):
        super().__init__(tasks, dims=(3, 5, 4))


def tiny(seed=0):
    torch.manual_seed(seed)
    tasks = {t: MSETask(t) for t in TASKS}
    return Tiny(tasks).double(), tasks


def batch(seed, b=6, unlabelled=()):
    g = torch.Generator().manual_seed(seed)
    mask = {t: torch.ones(b, dtype=torch.bool) for t in TASKS}
    for t in unlabelled:
        mask[t][:] = False
    return {"image": torch.randn(b, 3, generator=g, dtype=torch.float64),
            "targets": {t: torch.randn(b, 1, generator=g, dtype=torch.float64) * (i + 1)
                        for i, t in enumerate(TASKS)},
            "mask": mask}


def balancer(mode="multi_task", weights=(0.3, 0.7, 1.1), **params):
    bal = AutoLambda(TASKS, {"mode": mode, **params}, RunContext(primary_task="a")).double()
    with torch.no_grad():
        bal.weights.copy_(torch.tensor(weights, dtype=torch.float64))
    return bal


def losses_at(model, params, b):
    """Per-task MSE of the model run with ``params``, written out without the seam."""
    out = functional_call(model, params, (b["image"],))
    return {t: F.mse_loss(out[t][b["mask"][t]], b["targets"][t][b["mask"][t]]) for t in TASKS if b["mask"][t].any()}


def brute_force(model, opt, lam, train, meta, primary):
    """d meta / d lambda by central differences in lambda (float64, eps 1e-6)."""
    group = opt.param_groups[0]
    lr, mu, wd = group["lr"], group.get("momentum", 0.0), group["weight_decay"]
    theta = dict(model.named_parameters())

    def meta_loss(lam):
        tr = losses_at(model, theta, train)
        g = torch.autograd.grad(sum(lam[TASKS.index(t)] * l for t, l in tr.items()), list(theta.values()))
        moved = {}
        for (n, p), gi in zip(theta.items(), g):
            buf = opt.state.get(p, {}).get("momentum_buffer")
            moved[n] = (p - lr * ((mu * buf if buf is not None else 0) + gi + wd * p)).detach()
        return float(sum(l for t, l in losses_at(model, moved, meta).items() if t in primary))

    eps = 1e-6
    out = []
    for i in range(len(TASKS)):
        e = torch.zeros_like(lam)
        e[i] = eps
        out.append((meta_loss(lam + e) - meta_loss(lam - e)) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


# -- the hypergradient ---------------------------------------------------------------------------
# The method's Hessian-vector product is itself a central difference along d with step
# R ||d|| = radius: its error is O(radius^2) relative to the largest entry (measured here: 2e-5 at
# the code's 0.01, 2e-7 at 1e-3 - the quadratic law), while the brute-force difference in lambda
# (eps 1e-6, float64) is exact to ~1e-10. Hence a tolerance of 1e-4 x max|hypergradient| at the
# default radius, and 1e-8 once the radius is shrunk to 1e-5 (the gap is the HVP's, nothing else).
@pytest.mark.parametrize("mode,primary", [("multi_task", TASKS), ("auxiliary", ["a"])])
@pytest.mark.parametrize("radius,rtol", [(0.01, 1e-4), (1e-5, 1e-8)])
def test_hypergradient_matches_a_brute_force_derivative_of_the_meta_loss(mode, primary, radius, rtol):
    model, tasks = tiny()
    bal = balancer(mode, radius=radius)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.0, weight_decay=0.0)
    train, meta = batch(1), batch(2)
    got = bal.hypergradient(MetaContext(model, tasks, train, meta, opt))
    expected = brute_force(model, opt, bal.weights.detach(), train, meta, primary)
    assert expected.abs().max() > 1e-3  # a meaningful signal, not 0 ~ 0
    torch.testing.assert_close(got, expected, rtol=0, atol=rtol * float(expected.abs().max()))


def test_virtual_step_carries_momentum_and_weight_decay_like_the_next_sgd_step():
    model, tasks = tiny(3)
    bal = balancer(radius=1e-5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    warm = batch(7)  # one real step fills the momentum buffers
    opt.zero_grad()
    sum(losses_at(model, dict(model.named_parameters()), warm).values()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    train, meta = batch(8), batch(9)
    got = bal.hypergradient(MetaContext(model, tasks, train, meta, opt))
    expected = brute_force(model, opt, bal.weights.detach(), train, meta, TASKS)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))
    # without the momentum term theta' (hence the hypergradient) would differ
    no_mom = brute_force(model, torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.05), bal.weights.detach(),
                         train, meta, TASKS)
    assert (no_mom - expected).abs().max() > 1e-3 * expected.abs().max()


def test_absent_tasks_and_a_meta_batch_without_the_primary_task_give_zero():
    model, tasks = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    got = balancer().hypergradient(MetaContext(model, tasks, batch(1, unlabelled=("b",)), batch(2), opt))
    assert got[1] == 0 and got[0] != 0 and got[2] != 0
    aux = balancer("auxiliary").hypergradient(MetaContext(model, tasks, batch(1), batch(2, unlabelled=("a",)), opt))
    assert torch.equal(aux, torch.zeros(3, dtype=torch.float64))


# -- the auxiliary mode ----------------------------------------------------------------------------
def test_auxiliary_meta_loss_reads_only_the_primary_task():
    model, tasks = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    train, meta = batch(1), batch(2)
    changed = copy.deepcopy(meta)
    for t in ("b", "c"):  # the auxiliary tasks' meta targets move far away
        changed["targets"][t] = changed["targets"][t] * -5 + 3
    aux = [balancer("auxiliary").hypergradient(MetaContext(model, tasks, train, m, opt)) for m in (meta, changed)]
    assert torch.equal(aux[0], aux[1])
    mtl = [balancer("multi_task").hypergradient(MetaContext(model, tasks, train, m, opt)) for m in (meta, changed)]
    assert (mtl[0] - mtl[1]).abs().max() > 1e-3
    assert not torch.allclose(aux[0], mtl[0])


def test_modes_declare_what_they_need():
    assert not balancer_info(Plugin("auto_lambda")).needs_primary_task
    info = balancer_info(Plugin("auto_lambda", {"mode": "auxiliary", "meta_fraction": 0.2}))
    assert info.needs_primary_task and info.needs_meta_batch and info.meta_fraction == 0.2
    with pytest.raises(ValueError, match="primary_task"):
        build_balancer(Plugin("auto_lambda", {"mode": "auxiliary"}), TASKS, RunContext())
    for bad in ({"mode": "both"}, {"lr_mult": 0}, {"meta_fraction": 1.0}, {"radius": -1.0}):
        with pytest.raises((ConfigError, ValueError), match="auto_lambda"):
            build_balancer(Plugin("auto_lambda", bad), TASKS, RunContext())


# -- what the step sees ----------------------------------------------------------------------------
def test_combine_sends_no_gradient_to_lambda():
    bal = balancer()
    losses = {t: torch.tensor(float(i + 2), dtype=torch.float64, requires_grad=True) for i, t in enumerate(TASKS)}
    total = bal.combine(losses)
    total.backward()
    assert bal.weights.grad is None
    assert float(total.detach()) == pytest.approx(0.3 * 2 + 0.7 * 3 + 1.1 * 4)
    assert [float(losses[t].grad) for t in TASKS] == pytest.approx([0.3, 0.7, 1.1])
    assert bal.current_weights() == pytest.approx({"a": 0.3, "b": 0.7, "c": 1.1})
    (group,) = bal.param_groups()
    assert group["weight_decay"] == 0.0 and group["params"] == [bal.weights] and group["lr_mult"] == 1.0


def test_meta_step_leaves_the_model_unchanged():
    torch.manual_seed(0)
    tasks = build_tasks(Plugin("synthetic", {"image_size": 32}), ["semseg", "depth"])
    model = build_model(tasks)  # tiny_cnn: has BatchNorm buffers
    bal = build_balancer(Plugin("auto_lambda"), ["semseg", "depth"], RunContext())
    opt = torch.optim.SGD(list(model.parameters()), lr=0.1, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)

    def real(b=3):
        return {"image": torch.randn(b, 3, 32, 32, generator=g),
                "targets": {"semseg": torch.randint(0, 7, (b, 32, 32), generator=g),
                            "depth": torch.rand(b, 1, 32, 32, generator=g) + 1},
                "mask": {"semseg": torch.ones(b, dtype=torch.bool), "depth": torch.ones(b, dtype=torch.bool)}}

    state = copy.deepcopy(model.state_dict())
    bal.meta_update(MetaContext(model, tasks, real(), real(), opt))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # parameters and BatchNorm running statistics
    assert all(p.grad is None for p in model.parameters())
    assert bal.weights.grad is not None and torch.isfinite(bal.weights.grad).all() and bal.weights.grad.abs().sum() > 0
    assert torch.equal(bal.weights.detach(), torch.full((2,), 0.1))  # written, not applied


def test_training_step_applies_the_hypergradient_through_the_optimiser():
    model, tasks = tiny()
    bal = balancer(lr_mult=10.0)
    lr = 0.05
    opt = torch.optim.SGD([{"params": list(model.parameters())},
                           {"params": [bal.weights], "lr": lr * bal.params.lr_mult, "weight_decay": 0.0}], lr=lr)
    train, meta = batch(1), batch(2)
    lam = bal.weights.detach().clone()
    hyper = bal.hypergradient(MetaContext(copy.deepcopy(model), tasks, train, meta, opt))
    twin = copy.deepcopy(model)
    tr = losses_at(twin, dict(twin.named_parameters()), train)
    grads = torch.autograd.grad(sum(lam[i] * tr[t] for i, t in enumerate(TASKS)), list(twin.parameters()))
    expected = [p - lr * g for p, g in zip(twin.parameters(), grads)]
    training_step(model, bal, tasks, train, opt, meta_batch=meta)
    torch.testing.assert_close(bal.weights.detach(), lam - lr * 10.0 * hyper)  # lambda: its own rate
    for p, e in zip(model.parameters(), expected):  # the network: the pre-step weights, detached
        torch.testing.assert_close(p.detach(), e)
    before = bal.weights.detach().clone()
    training_step(model, bal, tasks, batch(3), opt, meta_batch=batch(4))  # a second step moves it again
    assert not torch.equal(before, bal.weights.detach())
    with pytest.raises(ValueError, match="meta batch"):
        training_step(model, bal, tasks, batch(5), opt)


# -- the train loop ------------------------------------------------------------------------------
def test_fit_end_to_end(tmp_path):
    cfg = TrialConfig(experiment="al", tasks=("semseg", "depth", "normals"), balancer=Plugin("auto_lambda"),
                      data_root=str(tmp_path / "data"), epochs=2, batch_size=4, max_steps_per_epoch=2,
                      dataset=Plugin("synthetic", {"image_size": 32, "num_train": 32, "num_val": 16, "num_test": 16}))
    report = fit(cfg, Session(device=torch.device("cpu")))
    assert report["finished"]
    for key in ("val/semseg/miou", "val/depth/rmse", "test/normals/mean_angle", "train/depth/loss", "val_score"):
        assert math.isfinite(report[key]), key
    weights = {k: v for k, v in report.items() if k.startswith("weight/")}
    assert len(weights) == 3 and all(math.isfinite(v) for v in weights.values())
    assert any(v != pytest.approx(0.1, abs=1e-7) for v in weights.values())  # lambda moved from its init

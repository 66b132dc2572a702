"""Balancers against their definitions: each method's equation checked on small hand-made cases.

Step-level behaviour (what the train step writes into .grad, the registry-wide contract test)
lives in test_steps.py.
"""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from trainables.balancers.cagrad import CAGrad, solve_dual
from trainables.balancers.dtp import DTP
from trainables.balancers.dwa import DWA
from trainables.balancers.gradnorm import GradNorm
from trainables.balancers.ial import IAL
from trainables.balancers.imtl import IMTL
from trainables.balancers.mgda import MGDA
from trainables.balancers.min_norm import min_norm_weights
from trainables.balancers.pcgrad import PCGrad, surgery_coefficients
from trainables.balancers.rlw import RLW
from trainables.balancers.uncertainty import Uncertainty
from trainables.build import build_balancer
from trainables.plugins import Plugin, RunContext

NAMES = ["a", "b", "c", "d", "e"]


def losses_of(values, names=NAMES):
    return {n: torch.tensor(float(v), dtype=torch.float64) for n, v in zip(names, values)}


def slsqp_simplex(objective, t):
    """An independent reference: SciPy SLSQP over the simplex."""
    res = minimize(objective, np.full(t, 1.0 / t), method="SLSQP", bounds=[(0, 1)] * t,
                   constraints={"type": "eq", "fun": lambda w: w.sum() - 1}, options={"ftol": 1e-15, "maxiter": 500})
    return res.x


# -- MGDA ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [2, 3, 4, 5])
def test_min_norm_matches_independent_qp(t):
    rng = np.random.default_rng(t)
    for _ in range(10):
        g = rng.normal(size=(t, 12)) + rng.normal(size=(1, 12)) * rng.uniform(0, 2)
        m = g @ g.T
        ref = slsqp_simplex(lambda w: w @ m @ w, t)
        alpha = min_norm_weights(torch.tensor(m)).numpy()
        assert alpha.min() >= 0 and abs(alpha.sum() - 1) < 1e-9
        np.testing.assert_allclose(alpha, ref, atol=2e-4)
        assert alpha @ m @ alpha <= ref @ m @ ref + 1e-9


def test_min_norm_two_tasks_closed_form_by_hand():
    # g1 = (1, 0), g2 = (0, 2): min ||a g1 + (1-a) g2||^2 = a^2 + 4 (1-a)^2  ->  a = 4/5
    m = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    np.testing.assert_allclose(min_norm_weights(m).numpy(), [0.8, 0.2], atol=1e-12)
    # g2 = 2 g1: the shorter vector alone is the min-norm point
    m = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    np.testing.assert_allclose(min_norm_weights(m).numpy(), [1.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_mgda_direction_is_common_descent(normalization):
    torch.manual_seed(0)
    g = torch.randn(4, 30, dtype=torch.float64)
    losses = losses_of([0.5, 1.0, 2.0, 3.0])
    mgda = MGDA(NAMES[:4], variant="params", normalization=normalization)
    d = mgda.combine_grads(g, losses)
    assert (g @ d >= -1e-9).all()
    # the direction is sum alpha_t g_t with alpha the min-norm weights of the normalised grads
    scale = {"none": torch.ones(4), "l2": g.norm(dim=1), "loss": torch.tensor([0.5, 1, 2, 3]),
             "loss+": torch.tensor([0.5, 1, 2, 3]) * g.norm(dim=1)}[normalization].double()
    gn = g / scale[:, None]
    alpha = slsqp_simplex(lambda w: w @ (gn @ gn.T).numpy() @ w, 4)
    np.testing.assert_allclose(d.numpy(), alpha @ g.numpy(), atol=1e-3)


def test_mgda_variants_declare_their_target():
    assert MGDA(NAMES[:2]).grad_target == "representation"
    assert MGDA(NAMES[:2], variant="params").grad_target == "params"
    with pytest.raises(ValueError, match="variant"):
        MGDA(NAMES[:2], variant="exact")


# -- PCGrad --------------------------------------------------------------------------------------
def test_pcgrad_two_tasks_by_hand():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)  # g1 . g2 = -1 < 0
    # g1_pc = g1 - (-1 / 2) g2 = (0.5, 0.5);  g2_pc = g2 - (-1 / 1) g1 = (0, 1)
    d = PCGrad(NAMES[:2]).combine_grads(g, losses_of([1, 1]))
    np.testing.assert_allclose(d.numpy(), [0.5, 1.5], atol=1e-12)
    d = PCGrad(NAMES[:2], reduction="mean").combine_grads(g, losses_of([1, 1]))
    np.testing.assert_allclose(d.numpy(), [0.25, 0.75], atol=1e-12)
    # no conflict: nothing is projected
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    np.testing.assert_allclose(PCGrad(NAMES[:2]).combine_grads(g, losses_of([1, 1])).numpy(), [2.0, 1.0])


def test_pcgrad_projected_gradients_do_not_conflict():
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = rng.normal(size=(2, 8))
        coef = surgery_coefficients(g @ g.T, [[1], [0]])
        pc = coef @ g
        assert pc[0] @ g[1] >= -1e-10 and pc[1] @ g[0] >= -1e-10
        if g[0] @ g[1] < 0:  # a conflicting pair lands exactly on the normal plane
            assert abs(pc[0] @ g[1]) < 1e-10 and abs(pc[1] @ g[0]) < 1e-10


def test_pcgrad_gram_surgery_equals_algorithm_1_on_vectors():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(4, 10))
    orders = [[j for j in rng.permutation(4) if j != i] for i in range(4)]
    expected = []
    for i in range(4):  # Algorithm 1 of the paper, literally
        v = g[i].copy()
        for j in orders[i]:
            if v @ g[j] < 0:
                v = v - (v @ g[j]) / (g[j] @ g[j]) * g[j]
        expected.append(v)
    np.testing.assert_allclose(surgery_coefficients(g @ g.T, orders) @ g, np.array(expected), atol=1e-12)


# -- uncertainty ---------------------------------------------------------------------------------
def test_uncertainty_reaches_sigma2_equal_loss():
    targets = [0.3, 1.0, 4.0]
    bal = Uncertainty(NAMES[:3], classification_tasks=["c"])
    opt = torch.optim.Adam(bal.parameters(), lr=0.05)
    losses = {n: torch.tensor(v) for n, v in zip(NAMES, targets)}
    for _ in range(1500):
        opt.zero_grad()
        bal.combine(losses).backward()
        opt.step()
    var = torch.exp(bal.log_vars.detach())
    # regression form: exp(s) = L; classification form (task "c"): exp(s) = 2 L
    np.testing.assert_allclose(var.numpy(), [0.3, 1.0, 8.0], rtol=1e-3)
    assert bal.current_weights()["a"] == pytest.approx(1 / (2 * 0.3), rel=1e-3)


def test_uncertainty_skips_missing_tasks_and_checks_names():
    bal = Uncertainty(NAMES[:2], init_log_var=0.0)
    assert float(bal.combine({"a": torch.tensor(2.0)}).detach()) == pytest.approx(1.0)  # 2 / 2 + 0
    with pytest.raises(ValueError, match=r"unknown tasks \['z'\]"):
        Uncertainty(NAMES[:2], classification_tasks=["z"])


# -- GradNorm ------------------------------------------------------------------------------------
def _gradnorm_toy(alpha, optimizer, steps=3000):
    """Constant per-task gradients of very different norms and constant loss ratios."""
    torch.manual_seed(0)
    g = torch.randn(3, 20) * torch.tensor([[0.5], [2.0], [5.0]])
    lr = 0.002 if optimizer == "adam" else 1e-4
    bal = GradNorm(NAMES[:3], alpha=alpha, weight_optimizer=optimizer, weight_lr=lr)
    bal.combine_grads(g, losses_of([1.0, 2.0, 4.0]))  # first step: L(0)
    bal.combine(losses_of([1.0, 2.0, 4.0]))
    later = losses_of([0.5, 1.5, 3.6])  # loss ratios 0.5, 0.75, 0.9
    ratio = torch.tensor([0.5, 0.75, 0.9])
    r = ratio / ratio.mean()
    norms = g.norm(dim=1)

    def l_grad():  # Eq. 7 summed over tasks
        gw = bal.weights * norms
        return float((gw - gw.mean() * r**alpha).abs().sum())

    start = l_grad()
    for _ in range(steps):
        bal.combine_grads(g, later)
        bal.combine(later)
        assert float(bal.weights.sum()) == pytest.approx(3.0, abs=1e-5)
    return bal, norms, r, start, l_grad()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_gradnorm_drives_norms_to_eq7_targets(optimizer):
    # alpha = 1: the targets G_bar r_i sum to T G_bar, so all of them can be met exactly
    bal, norms, r, start, end = _gradnorm_toy(1.0, optimizer)
    gw = bal.weights * norms
    np.testing.assert_allclose(gw.numpy(), (gw.mean() * r).numpy(), rtol=0.02)
    expected = 3 * (r / norms) / (r / norms).sum()  # w_i proportional to r_i / n_i, sum T
    np.testing.assert_allclose(bal.weights.numpy(), expected.numpy(), rtol=0.02)
    assert end < 0.05 * start
    # alpha = 1.5: sum_i r_i^alpha != T, so Eq. 7 cannot reach 0 for every task at once;
    # the weights still go most of the way (two tasks on target, the third close)
    _, _, _, start, end = _gradnorm_toy(1.5, optimizer)
    assert end < 0.1 * start


def test_gradnorm_direction_uses_weights_of_the_step():
    g = torch.diag(torch.tensor([1.0, 3.0]))
    bal = GradNorm(NAMES[:2])
    d = bal.combine_grads(g, losses_of([1.0, 1.0]))
    np.testing.assert_allclose(d.numpy(), [1.0, 3.0])  # w(0) = 1
    assert not torch.equal(bal.weights, torch.ones(2))  # the weights moved ...
    total = bal.combine({"a": torch.tensor(2.0), "b": torch.tensor(3.0)})
    assert float(total) == pytest.approx(5.0)  # ... but this step's loss still uses w(0)


# -- DWA, DTP ------------------------------------------------------------------------------------
def test_dwa_eq8_on_given_history():
    bal = DWA(NAMES[:3], temperature=2.0)
    assert bal.current_weights() == {"a": 1.0, "b": 1.0, "c": 1.0}
    bal.on_epoch_end(0, {"a": 1.0, "b": 2.0, "c": 0.6})
    assert bal.current_weights() == {"a": 1.0, "b": 1.0, "c": 1.0}  # first two epochs: 1
    bal.on_epoch_end(1, {"a": 0.5, "b": 1.8, "c": 0.3})
    # r = (0.5, 0.9, 0.5); w = 3 exp(r/2) / sum exp(r/2), by hand:
    expected = [0.9312713203590168, 1.1374573592819666, 0.9312713203590168]
    np.testing.assert_allclose(list(bal.current_weights().values()), expected, rtol=1e-6)
    total = bal.combine({"a": torch.tensor(1.0), "c": torch.tensor(2.0)})  # "b" unlabelled
    assert float(total) == pytest.approx(expected[0] + 2 * expected[2], rel=1e-6)
    bal.on_epoch_end(2, {"a": 0.5, "b": 0.9, "c": 0.3})  # r = (1, 0.5, 1)
    e = np.exp(np.array([1.0, 0.5, 1.0]) / 2)
    np.testing.assert_allclose(list(bal.current_weights().values()), 3 * e / e.sum(), rtol=1e-6)


def test_dtp_eq9_on_given_kpi_history():
    bal = DTP(["a"], gamma=2.0, kpi="loss", ema_alpha=0.5)
    for loss in [1.0, 0.2]:
        bal.combine({"a": torch.tensor(loss)})
    w = bal.combine({"a": torch.tensor(0.5)})
    # kpi = exp(-L): 0.367879 -> 0.5*0.818731+0.5*0.367879 = 0.593305 -> 0.5*0.606531+0.5*0.593305
    kpi = 0.5999178784186727
    assert float(bal.kpi_avg[0]) == pytest.approx(kpi, rel=1e-6)
    assert float(w) == pytest.approx(-(1 - kpi) ** 2 * math.log(kpi) * 0.5, rel=1e-5)  # w * L
    assert bal.current_weights()["a"] == pytest.approx(0.08178757267457253, rel=1e-5)


def test_dtp_accuracy_kpi_from_outputs():
    bal = DTP(["seg", "depth"], gamma={"seg": 1.0, "depth": 0.0}, kpi="accuracy", ema_alpha=1.0)
    assert bal.needs_outputs
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]]).permute(2, 0, 1)[None].repeat(1, 1, 1, 1)  # [1, 2, 2, 1]
    target = torch.tensor([[[0], [0]]])  # one right, one wrong -> accuracy 0.5
    bal.observe_outputs({"seg": logits}, {"seg": target})
    bal.combine({"seg": torch.tensor(1.0), "depth": torch.tensor(0.1)})
    w = bal.current_weights()
    assert w["seg"] == pytest.approx(-(1 - 0.5) * math.log(0.5))
    assert w["depth"] == pytest.approx(-math.log(math.exp(-0.1)))  # gamma 0: -log kpi = L


# -- IMTL, CAGrad, RLW ---------------------------------------------------------------------------
@pytest.mark.parametrize("t", [2, 3, 5])
def test_imtl_g_equal_projections(t):
    torch.manual_seed(t)
    g = torch.randn(t, 16, dtype=torch.float64) * torch.linspace(0.2, 5, t, dtype=torch.float64)[:, None]
    bal = IMTL(NAMES[:t], mode="g")
    d = bal.combine_grads(g, losses_of([1] * t))
    proj = (g / g.norm(dim=1, keepdim=True)) @ d
    np.testing.assert_allclose(proj.numpy(), np.full(t, float(proj[0])), rtol=1e-8)
    assert float(proj[0]) > 0


def test_imtl_both_balances_scaled_gradients_and_learns_scales():
    torch.manual_seed(0)
    g = torch.randn(3, 10, dtype=torch.float64)
    bal = IMTL(NAMES[:3], mode="both")
    with torch.no_grad():
        bal.log_scales.copy_(torch.tensor([0.0, 1.0, -1.0]))
    d = bal.combine_grads(g, losses_of([1, 1, 1]))
    scaled = g * torch.exp(bal.log_scales.detach()).double()[:, None]
    proj = (scaled / scaled.norm(dim=1, keepdim=True)) @ d
    np.testing.assert_allclose(proj.numpy(), np.full(3, float(proj[0])), rtol=1e-8)
    # IMTL-L: e^s L - s is minimised at e^s L = 1
    lbal = IMTL(NAMES[:2], mode="l")
    assert not lbal.needs_task_grads and lbal.grad_target is None
    opt = torch.optim.Adam(lbal.parameters(), lr=0.05)
    for _ in range(1000):
        opt.zero_grad()
        lbal.combine({"a": torch.tensor(0.25), "b": torch.tensor(4.0)}).backward()
        opt.step()
    np.testing.assert_allclose(torch.exp(lbal.log_scales.detach()).numpy(), [4.0, 0.25], rtol=1e-3)


def test_cagrad_c0_is_mean_gradient():
    torch.manual_seed(0)
    g = torch.randn(3, 7, dtype=torch.float64)
    d = CAGrad(NAMES[:3], c=0.0).combine_grads(g, losses_of([1, 1, 1]))
    np.testing.assert_allclose(d.numpy(), g.mean(0).numpy(), atol=1e-12)


def test_cagrad_dual_optimality_on_hand_case():
    # two strongly conflicting gradients: g1 = (1, 0), g2 = (-0.5, 1); g0 = (0.25, 0.5)
    g = torch.tensor([[1.0, 0.0], [-0.5, 1.0]], dtype=torch.float64)
    c = 0.5
    m = (g @ g.T).numpy()
    w, value = solve_dual(m, c)
    ref = slsqp_simplex(lambda x: x @ m.mean(1) + c * math.sqrt(m.mean()) * math.sqrt(x @ m @ x), 2)
    np.testing.assert_allclose(w, ref, atol=1e-4)
    d = CAGrad(NAMES[:2], c=c).combine_grads(g, losses_of([1, 1])).numpy()
    g0 = g.mean(0).numpy()
    # the primal constraint is active and strong duality holds: min_i <g_i, d> = F(w*)
    assert np.linalg.norm(d - g0) == pytest.approx(c * np.linalg.norm(g0), rel=1e-6)
    assert min(g.numpy() @ d) == pytest.approx(value, rel=1e-6)
    # and d beats the mean gradient on the worst task (the point of CAGrad)
    assert min(g.numpy() @ d) > min(g.numpy() @ g0)
    rescaled = CAGrad(NAMES[:2], c=c, rescale=True).combine_grads(g, losses_of([1, 1])).numpy()
    np.testing.assert_allclose(rescaled, d / (1 + c**2), atol=1e-12)


def test_rlw_weights_on_simplex_and_seeded():
    for dist in ["normal", "uniform", "dirichlet"]:
        a, b = RLW(NAMES[:3], distribution=dist, seed=3), RLW(NAMES[:3], distribution=dist, seed=3)
        seen = []
        for _ in range(5):
            la = a.combine(losses_of([1, 1, 1]))
            lb = b.combine(losses_of([1, 1, 1]))
            w = torch.tensor(list(a.current_weights().values()))
            assert (w >= 0).all() and float(w.sum()) == pytest.approx(1.0) and float(la) == pytest.approx(1.0)
            assert a.current_weights() == b.current_weights() and float(la) == float(lb)
            seen.append(tuple(w.tolist()))
        assert len(set(seen)) == 5  # fresh weights every step
    rlw = RLW(NAMES[:3])
    rlw.combine({"a": torch.tensor(1.0), "c": torch.tensor(1.0)})
    w = rlw.current_weights()
    assert w["b"] == 0 and w["a"] + w["c"] == pytest.approx(1.0)


# -- IAL -----------------------------------------------------------------------------------------
def test_ial_requires_a_known_primary_task():
    with pytest.raises(ValueError, match=r"primary_task 'x' is not one of the tasks"):
        IAL(NAMES[:3], primary_task="x")
    with pytest.raises(ValueError, match="primary_task is required"):
        IAL(NAMES[:3])
    # the run context supplies the study's primary task (and seed) unless given explicitly
    assert build_balancer("ial", NAMES[:3], RunContext(primary_task="b", seed=1)).primary_task == "b"
    assert build_balancer(Plugin("ial", {"primary_task": "c"}), NAMES[:3], RunContext(primary_task="b")).primary_task == "c"


def test_ial_weight_function_eq9():
    bal = IAL(NAMES[:3], primary_task="a")
    sigma = torch.tensor([0.0, 0.3, 0.8, 1.0, 2.0])
    np.testing.assert_allclose(bal.aux_weights(sigma).numpy(), [1.0, 0.7, 0.2, 0.0, 0.0], atol=1e-6)
    for g in ["exp", "sigmoid"]:
        f = IAL(NAMES[:3], primary_task="a", g=g, g_scale=2.0).aux_weights(sigma)
        assert (f >= 0).all() and (f <= 1).all() and float(f[3]) == 0.0 and (f[:-1] >= f[1:]).all()


def test_ial_coefficients_eq7_eq8():
    bal = IAL(NAMES[:3], primary_task="b", init_log_var=math.log(0.25))  # sigma = 0.5 -> f = 0.5
    g = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    d = bal.combine_grads(g, losses_of([1, 1, 1]))
    # grad_pri + f * |grad_pri| / |g_t| * g_t
    expected = g[1] + 0.5 * 2 / 3 * g[0] + 0.5 * 2 / math.sqrt(2) * g[2]
    np.testing.assert_allclose(d.numpy(), expected.numpy(), atol=1e-12)
    # primary unlabelled in the batch: Eq. 8 scales every auxiliary gradient to 0
    d = bal.combine_grads(g[[0, 2]], losses_of([1, 1], ["a", "c"]))
    assert float(d.abs().sum()) == 0.0

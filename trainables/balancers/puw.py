"""PUW: task weights estimated by a particle filter, with a view to performance and uncertainty.

Aghajanzadeh, Bahraini, Mehrizi & Sadoghi Yazdi, "Task weighting based on particle filter in deep
multi-task learning with a view to uncertainty and performance", Pattern Recognition 140, 109587,
2023 (IAL's reference [25], "PUW" in IAL's Tables I-VII). What the sources say: the particle
filter (PF) "considers each state of the tasks' coefficients as a particle and recursively
converges coefficients to an optimum point"; the coefficients are judged by performance and by
uncertainty, "to prevent learning coefficients leading to unstable outcomes"; the mechanism is
"independent of the model's main learning process" (abstract); the motivation is the different
learning pace of the tasks (abstract); IAL warms PUW up with equal weights for the first 3% of the
epochs and tunes nothing else (Sec. IV-B).

Implemented (loss level, L = sum_t w_t L_t; the filter runs at each epoch's end, on the tasks'
mean training losses L_t(e), so every data-parallel worker computes the same weights):
    state      w in R^T, w_t >= w_min, sum_t w_t = T (T tasks; the weights of equal weighting are 1)
    prior      N particles w^(i) = T * Dirichlet(1, ..., 1), particle weights pi_i = 1 / N
    predict    w^(i) <- P(w^(i) + q eps^(i)),  eps ~ N(0, I),  P: clip at w_min, rescale to sum T
    measure    z_t = T r_t / sum_k r_k,  r_t = L_t(e) / L_t(0)   (performance: the tasks that have
               progressed least since the first epoch get the most weight - balanced pace)
    uncertainty  u_t = |log(L_t(e) / L_t(e-1)) - log(L_t(e-1) / L_t(e-2))| (how irregular the
               task's pace is; 0 for a steady geometric decay), measurement noise
               sigma_t = tau exp(kappa u_t): an irregular task's measurement is trusted less
    update     pi_i <- pi_i exp(-1/2 sum_t ((w^(i)_t - z_t) / sigma_t)^2), normalised
    estimate   w = sum_i pi_i w^(i)   (the posterior mean; used for the next epoch)
    resample   systematic, when the effective sample size 1 / sum_i pi_i^2 < N / 2
The filter starts once ``warmup_epochs`` epochs (and at least 2) are done; until then w = 1.

Not found in the available sources (the paper's text and code are not public to us; only its
abstract and IAL's description were): the particles' state space, transition, measurement and
likelihood, how uncertainty is measured (the paper likely measures the model's predictive
uncertainty, which is where its extra training time in IAL's Table II comes from), the number of
particles and the resampling rule. All of the above is therefore our construction from the
abstract's description, and so are every default below. Deviations: no extra forward passes
(uncertainty comes from the loss trajectory, so the method costs nothing per step); the warm-up
is given in epochs, since a balancer does not know the run's epoch count (3 = 3% of 100 epochs).
A task without labelled batches in an epoch has no measurement: r_t = 1, u_t = 0. Auxiliary
setting: IAL lists PUW only in its Normal (multi-task) setting and the method defines no primary
task. Tasks absent from a batch contribute nothing that step. The random draws (prior,
transition, resampling) come from the balancer's own generator (checkpointed), in that order.

Hyper-parameters:
    particles (int >= 2, default 100): N.
    warmup_epochs (int >= 0, default 3): epochs trained with equal weights before the filter runs.
    process_noise (float > 0, default 0.05): q, the random walk's standard deviation per epoch.
    measurement_noise (float > 0, default 0.2): tau.
    uncertainty_scale (float >= 0, default 10.0): kappa; 0 ignores uncertainty.
    min_weight (float in (0, 1), default 0.01): w_min.
    seed (int or None, default None): the generator's seed; None takes the run context's seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from trainables.balancers.base import Balancer, check_number
from trainables.plugins import BalancerInfo
from trainables.registry import register_balancer


@dataclass(frozen=True)
class PUWParams:
    """Hyper-parameters of ``puw`` (see the module docstring)."""

    particles: int = 100
    warmup_epochs: int = 3
    process_noise: float = 0.05
    measurement_noise: float = 0.2
    uncertainty_scale: float = 10.0
    min_weight: float = 0.01
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        check_number("puw", "particles", self.particles, lambda v: v >= 2, "an int >= 2", integer=True)
        check_number("puw", "warmup_epochs", self.warmup_epochs, lambda v: v >= 0, "an int >= 0", integer=True)
        check_number("puw", "process_noise", self.process_noise, lambda v: v > 0, "a number > 0")
        check_number("puw", "measurement_noise", self.measurement_noise, lambda v: v > 0, "a number > 0")
        check_number("puw", "uncertainty_scale", self.uncertainty_scale, lambda v: v >= 0, "a number >= 0")
        check_number("puw", "min_weight", self.min_weight, lambda v: 0 < v < 1, "a number in (0, 1)")
        if self.seed is not None:
            check_number("puw", "seed", self.seed, lambda v: v >= 0, "an int >= 0", integer=True)


def project(w: Tensor, min_weight: float) -> Tensor:
    """P: every row clipped at ``min_weight`` and rescaled to sum to its length T."""
    w = w.clamp_min(min_weight)
    return w * (w.shape[-1] / w.sum(dim=-1, keepdim=True))


def measurement(first: Tensor, history: Tensor, seen: int) -> Tuple[Tensor, Tensor]:
    """(z, u) from L(0) [T] and history [3, T] = L(e-2), L(e-1), L(e); ``seen`` epochs recorded."""
    def ratio(num, den):
        return torch.where((num > 0) & (den > 0), num / den.clamp_min(1e-300), torch.ones_like(num))

    r = ratio(history[2], first)
    z = len(r) * r / r.sum()
    u = torch.zeros_like(r)
    if seen >= 3:
        u = (ratio(history[2], history[1]).log() - ratio(history[1], history[0]).log()).abs()
    return z, u


def pf_update(particles: Tensor, log_pi: Tensor, z: Tensor, sigma: Tensor) -> Tuple[Tensor, Tensor]:
    """Bayes' rule on the particle weights: (normalised log pi [N], posterior mean [T])."""
    log_pi = log_pi - 0.5 * (((particles - z) / sigma) ** 2).sum(dim=1)
    log_pi = log_pi - torch.logsumexp(log_pi, dim=0)
    return log_pi, log_pi.exp() @ particles


def systematic_resample(pi: Tensor, u0: float) -> Tensor:
    """Indices [N] of the particles kept: positions (u0 + k) / N, k = 0..N-1, on the CDF of pi."""
    n = len(pi)
    positions = (u0 + torch.arange(n, dtype=pi.dtype)) / n
    cdf = pi.cumsum(0)
    cdf[-1] = 1.0  # guard against rounding
    return torch.searchsorted(cdf, positions, right=True).clamp_max(n - 1)


@register_balancer("puw")
class PUW(Balancer):
    """Particle-filter task weighting (Aghajanzadeh et al. Pattern Recognition 2023; IAL's [25])."""

    Params = PUWParams
    INFO = BalancerInfo(needs_epoch_losses=True)

    def __init__(self, task_names, params=None, context=None, **kwargs):
        super().__init__(task_names, params, context, **kwargs)
        t, n = len(self.task_names), self.params.particles
        seed = self.params.seed if self.params.seed is not None else self.context.seed
        self.generator = torch.Generator().manual_seed(seed)
        e = -torch.log1p(-torch.rand(n, t, generator=self.generator, dtype=torch.float64))  # Dirichlet(1)
        self.register_buffer("particles", t * e / e.sum(dim=1, keepdim=True))
        self.register_buffer("log_pi", torch.full((n,), -math.log(n), dtype=torch.float64))
        self.register_buffer("first", torch.zeros(t, dtype=torch.float64))        # L(0) per task
        self.register_buffer("history", torch.zeros(3, t, dtype=torch.float64))   # L(e-2), L(e-1), L(e)
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(t))

    def on_epoch_end(self, epoch: int, mean_losses: Dict[str, float]) -> None:
        latest = torch.tensor([float(mean_losses.get(t, 0.0)) for t in self.task_names], dtype=torch.float64)
        first = self.first.cpu()
        self.first.copy_(torch.where(first > 0, first, latest))
        self.history.copy_(torch.cat([self.history[1:].cpu(), latest[None]]))
        self.epochs_seen += 1
        if int(self.epochs_seen) >= max(self.params.warmup_epochs, 2):
            self._filter_step()

    def _filter_step(self) -> None:
        p = self.params
        z, u = measurement(self.first.cpu(), self.history.cpu(), int(self.epochs_seen))
        sigma = p.measurement_noise * torch.exp(p.uncertainty_scale * u)
        noise = torch.randn(self.particles.shape, generator=self.generator, dtype=torch.float64)
        particles = project(self.particles.cpu() + p.process_noise * noise, p.min_weight)
        log_pi, estimate = pf_update(particles, self.log_pi.cpu(), z, sigma)
        pi = log_pi.exp()
        if 1.0 / float((pi ** 2).sum()) < p.particles / 2:
            u0 = float(torch.rand(1, generator=self.generator, dtype=torch.float64))
            particles = particles[systematic_resample(pi, u0)]
            log_pi = torch.full_like(log_pi, -math.log(p.particles))
        self.particles.copy_(particles)
        self.log_pi.copy_(log_pi)
        self.weights.copy_(estimate.to(self.weights))

    def combine(self, losses: Dict[str, Tensor]) -> Tensor:
        return sum(self.weights[i] * losses[t] for i, t in enumerate(self.task_names) if t in losses)

    def current_weights(self) -> Dict[str, float]:
        return self.per_task(self.weights)

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state) -> None:
        self.generator.set_state(state["generator"].cpu())

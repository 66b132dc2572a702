"""The optimisers and learning-rate schedules of the survey's grid - the one place they are named.

Vandenhende et al., TPAMI 2021, supp. A: Adam, or SGD with momentum 0.9; poly learning-rate
decay, or step decay by a factor 10. ``OPTIMIZERS`` and ``SCHEDULERS`` are the vocabulary that
``TrialConfig``, the grid (``search_spaces/survey_grid.py``) and the spec's ``search`` filters
are checked against.
"""
from __future__ import annotations

OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("poly", "step")


# torch is imported inside the functions: TrialConfig imports the vocabulary above, and a Tune
# trial driver that only validates a config should not pay for importing torch.


def make_optimizer(cfg, params):
    """The optimiser of ``cfg`` (a TrialConfig) over ``params`` (tensors or param groups)."""
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg, optimizer, steps_per_epoch: int):
    """Per-step LambdaLR: poly decay, or x0.1 at each milestone (fractions of all epochs)."""
    import torch

    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.scheduler == "poly":
        factor = lambda step: (1.0 - min(step, total - 1) / total) ** cfg.poly_power  # noqa: E731
    else:
        milestones = [int(round(m * cfg.epochs)) * steps_per_epoch for m in cfg.step_milestones]
        factor = lambda step: 0.1 ** sum(step >= m for m in milestones)  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

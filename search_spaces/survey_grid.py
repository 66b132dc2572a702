"""The survey's 48-setting hyper-parameter grid (Vandenhende et al., TPAMI 2021, supp. A).

"We tested batches of three different sizes, poly learning rate decay vs step learning rate
decay with decay factor 10, and Adam (initial learning rates 2e-4, 1e-4, 5e-5, 1e-5) vs
stochastic gradient descent with momentum 0.9 (initial learning rates 5e-2, 1e-2, 5e-3,
1e-3). This results in 48 hyperparameter settings in total." Batch sizes are per dataset
(NYUD 4/6/8, CelebA 32/128/256): each dataset's ``DatasetInfo.default_batch_sizes``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from trainables.optim import OPTIMIZERS, SCHEDULERS

# initial learning rates per optimiser (the vocabulary of optimisers and schedulers is trainables/optim.py's)
LEARNING_RATES: Dict[str, tuple] = {
    "adam": (2e-4, 1e-4, 5e-5, 1e-5),
    "sgd": (5e-2, 1e-2, 5e-3, 1e-3),
}
assert tuple(LEARNING_RATES) == OPTIMIZERS, "every optimiser of the grid has its learning rates"


def survey_grid(batch_sizes: Sequence[int]) -> List[dict]:
    """All 3 x 2 x 8 settings, each {"batch_size", "scheduler", "optimizer", "lr"}.

    The optimiser and its learning rate are one choice (8 pairs), which keeps the conditional
    learning rates right when the grid becomes a Tune ``grid_search``.
    """
    if len(batch_sizes) != 3 or len(set(batch_sizes)) != 3:
        raise ValueError(f"batch_sizes: the survey grid has 3 distinct batch sizes, got {list(batch_sizes)}")
    return [
        {"batch_size": int(bs), "scheduler": sched, "optimizer": opt, "lr": lr}
        for bs in batch_sizes
        for sched in SCHEDULERS
        for opt, lrs in LEARNING_RATES.items()
        for lr in lrs
    ]


def select(
    grid: Sequence[dict],
    batch_sizes: Optional[Sequence[int]] = None,
    schedulers: Optional[Sequence[str]] = None,
    optimizers: Optional[Sequence[str]] = None,
    lrs: Optional[Sequence[float]] = None,
) -> List[dict]:
    """The settings of ``grid`` that match every given filter (None keeps all)."""
    def keep(s: dict) -> bool:
        return ((batch_sizes is None or s["batch_size"] in batch_sizes)
                and (schedulers is None or s["scheduler"] in schedulers)
                and (optimizers is None or s["optimizer"] in optimizers)
                and (lrs is None or any(abs(s["lr"] - lr) <= 1e-12 for lr in lrs)))
    return [s for s in grid if keep(s)]

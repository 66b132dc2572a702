"""Optuna TPE over the fixed balancer's task weights (and the grid setting), for Ray Tune.

The space is define-by-run: per trial, Optuna suggests a grid-setting index and one number per
task; the function returns the resolved ``hp`` and ``balancer`` (the base balancer with the
suggested weights) as constants, which Tune merges into the trial's config. Optuna's raw
suggestions carry the ``_opt_`` prefix and are dropped before the config becomes a TrialConfig;
each Optuna trial also records the resolved weights and setting as user attributes.

The search is recorded in ``<study folder>/optuna.db`` (SQLite), one Optuna study per experiment
named ``<study>/<experiment>``, which ``optuna-dashboard sqlite:///<study folder>/optuna.db``
shows. A later run of the same study starts a new Optuna study, ``<study>/<experiment> #2`` and
so on: TPE reads every trial of its study, so continuing the old one would make the search
depend on earlier runs instead of on ``weight_search.seed`` alone.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Mapping, Optional, Sequence

from orchestrator.spec import LossWeightSearch
from trainables.plugins import Plugin

RAW_PREFIX = "_opt_"
OPTUNA_DB = "optuna.db"


def storage_url(study_dir: str) -> str:
    """The SQLite URL of a study's Optuna database."""
    return "sqlite:///" + os.path.join(os.path.abspath(study_dir), OPTUNA_DB)


def simplex_weights(uniforms: Sequence[float]) -> list:
    """Weights summing to T from T uniforms in (0, 1]: normalised -log u (a flat Dirichlet)."""
    e = [-math.log(max(u, 1e-12)) for u in uniforms]
    total = sum(e) or 1.0
    return [len(e) * x / total for x in e]


class WeightSpace:
    """The define-by-run function for ``OptunaSearch(space=...)`` (a class: Tune pickles it)."""

    def __init__(self, tasks: Sequence[str], settings: Sequence[dict], ws: LossWeightSearch, balancer: Plugin):
        self.tasks, self.settings = list(tasks), [dict(s) for s in settings]
        self.ws, self.balancer = ws, balancer

    def __call__(self, trial) -> Dict[str, Any]:
        ws = self.ws
        index = trial.suggest_categorical(f"{RAW_PREFIX}setting", list(range(len(self.settings))))
        if ws.space == "simplex":
            weights = simplex_weights([trial.suggest_float(f"{RAW_PREFIX}u_{t}", 1e-6, 1.0) for t in self.tasks])
        else:
            weights = [trial.suggest_float(f"{RAW_PREFIX}w_{t}", ws.low, ws.high, log=True) for t in self.tasks]
        params = {**self.balancer.params, "weights": dict(zip(self.tasks, weights))}
        trial.set_user_attr("weights", params["weights"])  # what the dashboard should show, not the raw draws
        trial.set_user_attr("setting", self.settings[index])
        return {"hp": self.settings[index], "balancer": Plugin(self.balancer.name, params).to_dict()}


def new_study_name(storage, name: str) -> str:
    """``name``, or ``name #2``, ``#3``... when ``storage`` already holds a study of that name."""
    taken = {study.study_name for study in storage.get_all_studies()}
    fresh, n = name, 1
    while fresh in taken:
        n += 1
        fresh = f"{name} #{n}"
    return fresh


def make_searcher(tasks: Sequence[str], settings: Sequence[dict], ws: LossWeightSearch, balancer: Plugin,
                  metric: str, mode: str, url: Optional[str] = None, name: str = "optuna"):
    """Ray Tune's ``OptunaSearch`` over ``WeightSpace``; recorded as study ``name`` (made unique) at the
    storage ``url`` (e.g. ``storage_url(study_dir)``), or in memory when ``url`` is None."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    storage = None
    if url is not None:
        storage = optuna.storages.RDBStorage(url)
        name = new_study_name(storage, name)
    return OptunaSearch(space=WeightSpace(tasks, settings, ws, balancer), metric=metric, mode=mode,
                        sampler=optuna.samplers.TPESampler(seed=ws.seed), storage=storage, study_name=name)


def strip_raw(config: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith(RAW_PREFIX)}

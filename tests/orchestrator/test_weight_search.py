"""The Optuna loss-weight space: weights in range / on the simplex, seeded, constants resolved."""
import math

import optuna
import pytest

from orchestrator.spec import LossWeightSearch, SpecError, load_spec
from orchestrator.weight_search import WeightSpace, simplex_weights, strip_raw
from search_spaces import preset
from trainables.plugins import Plugin

SETTINGS = [{"batch_size": 8, "scheduler": "poly", "optimizer": "adam", "lr": 2e-4},
            {"batch_size": 8, "scheduler": "poly", "optimizer": "sgd", "lr": 1e-2}]


def draw(ws, n=20):
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=ws.seed))
    space = WeightSpace(["semseg", "depth", "normals"], SETTINGS, ws, Plugin("fixed"))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(space(trial))
        study.tell(trial, 0.0)
    return out


def test_simplex_weights_sum_to_number_of_tasks():
    w = simplex_weights([0.5, 0.25, 0.125])
    assert sum(w) == pytest.approx(3.0)
    # -log u: 0.693, 1.386, 2.079 -> proportional 1:2:3
    assert w == pytest.approx([0.5, 1.0, 1.5])


def test_log_uniform_weights_in_range_and_settings_resolved():
    for config in draw(LossWeightSearch(low=0.1, high=10.0)):
        assert config["hp"] in SETTINGS
        assert config["balancer"]["name"] == "fixed"
        assert set(config["balancer"]["params"]["weights"]) == {"semseg", "depth", "normals"}
        assert all(0.1 <= w <= 10.0 for w in config["balancer"]["params"]["weights"].values())


def test_simplex_space_sums_to_t():
    for config in draw(LossWeightSearch(space="simplex")):
        assert math.isclose(sum(config["balancer"]["params"]["weights"].values()), 3.0)


def test_search_is_seeded():
    assert draw(LossWeightSearch(seed=3), 5) == draw(LossWeightSearch(seed=3), 5)
    assert draw(LossWeightSearch(seed=3), 5) != draw(LossWeightSearch(seed=4), 5)


def test_raw_optuna_keys_are_dropped():
    assert strip_raw({"_opt_setting": 1, "_opt_w_depth": 2.0, "lr": 1}) == {"lr": 1}


def test_weight_search_needs_fixed_balancer_and_valid_space():
    spec = dict(preset("quickstart"))
    with pytest.raises(SpecError, match=r"experiments\[0\].weight_search: searches the 'fixed'"):
        load_spec({**spec, "experiments": [{"name": "x", "balancer": "dwa", "weight_search": {}}]})
    with pytest.raises(SpecError, match=r"experiments\[0\].weight_search.space: 'cube'"):
        load_spec({**spec, "experiments": [{"name": "x", "weight_search": {"space": "cube"}}]})

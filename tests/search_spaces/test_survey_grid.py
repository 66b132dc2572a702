"""The survey's 48-setting grid (supplementary A), exactly."""
import itertools

import pytest

from search_spaces.survey_grid import survey_grid, select


def test_grid_has_exactly_the_48_settings():
    grid = survey_grid((4, 6, 8))
    assert len(grid) == 48
    expected = set()
    for bs, sched in itertools.product((4, 6, 8), ("poly", "step")):
        for lr in (2e-4, 1e-4, 5e-5, 1e-5):
            expected.add((bs, sched, "adam", lr))
        for lr in (5e-2, 1e-2, 5e-3, 1e-3):
            expected.add((bs, sched, "sgd", lr))
    assert {(s["batch_size"], s["scheduler"], s["optimizer"], s["lr"]) for s in grid} == expected
    assert len(expected) == 48


def test_celeba_batch_sizes():
    assert {s["batch_size"] for s in survey_grid((32, 128, 256))} == {32, 128, 256}


def test_conditional_learning_rates_never_cross():
    for s in survey_grid((4, 6, 8)):
        assert (s["optimizer"] == "adam") == (s["lr"] <= 2e-4)


@pytest.mark.parametrize("bad", [(4, 6), (4, 4, 8), (4, 6, 8, 10)])
def test_grid_needs_three_distinct_batch_sizes(bad):
    with pytest.raises(ValueError, match="batch_sizes"):
        survey_grid(bad)


def test_select_filters_each_axis():
    grid = survey_grid((8, 16, 32))
    chosen = select(grid, batch_sizes=[16], schedulers=["poly"], lrs=[2e-4, 1e-2])
    assert chosen == [
        {"batch_size": 16, "scheduler": "poly", "optimizer": "adam", "lr": 2e-4},
        {"batch_size": 16, "scheduler": "poly", "optimizer": "sgd", "lr": 1e-2},
    ]
    assert len(select(grid, optimizers=["sgd"])) == 24

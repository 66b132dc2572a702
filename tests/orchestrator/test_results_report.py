"""Results store round trip, best-on-val selection and the survey-style table."""
import json

import pyarrow.parquet as pq
import pytest

from orchestrator import baselines as bl
from orchestrator.report import render, table_rows
from orchestrator.results import read_rows, schema_for, write_rows
from orchestrator.study import _select
from trainables.config import TrialConfig


def cfg(task=None, lr=1e-4, seed=0):
    tasks = (task,) if task else ("semseg", "depth")
    return TrialConfig(experiment=f"single_task/{task}" if task else "mtl", tasks=tasks,
                       model={"architecture": "single_task" if task else "mtl_baseline"}, lr=lr, seed=seed,
                       dataset={"name": "synthetic", "params": {"image_size": 32}})


def row(c: TrialConfig, role, val, test, val_dm=None, test_dm=None, selected=False, status="completed"):
    return dict(study="s", run_id="r", experiment=c.experiment, role=role, architecture=c.model.architecture.name,
                balancer="fixed", tasks=list(c.tasks), trial_id="t", config_json=json.dumps(c.to_dict()),
                config_hash=c.config_hash(), setting_hash=c.config_hash(exclude=("seed",)), seed=c.seed,
                val_metrics=val, test_metrics=test, val_delta_m=val_dm, test_delta_m=test_dm,
                delta_baseline="single-task", params=1_000_000, flops_g=2.0, wall_time_s=1.0, epochs_done=2,
                status=status, error="", selected=selected, cached=False, checkpoint_path="")


def test_rows_round_trip_through_parquet(tmp_path):
    rows = [row(cfg("semseg"), "single_task", {"semseg/miou": 40.0}, {"semseg/miou": 41.0}, selected=True)]
    path = write_rows(rows, str(tmp_path / "results.parquet"))
    assert pq.read_schema(path).equals(schema_for(["val/semseg/miou", "test/semseg/miou"]))
    back = read_rows(path)
    assert back[0]["val_metrics"] == {"semseg/miou": 40.0}
    assert back[0]["config_json"] == rows[0]["config_json"] and back[0]["selected"] is True
    assert read_rows(str(tmp_path))[0]["experiment"] == "single_task/semseg"  # a study dir works too


def test_unknown_field_is_refused(tmp_path):
    with pytest.raises(KeyError, match="not in the schema"):
        write_rows([{"study": "s", "bogus": 1}], str(tmp_path / "x.parquet"))


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "results.parquet")
    write_rows([row(cfg("semseg"), "single_task", {}, {})], path)
    before = open(path, "rb").read()
    with pytest.raises(KeyError):
        write_rows([{"bogus": 1}], path)
    assert open(path, "rb").read() == before


def baseline_result(task, lr, seed, val, test, status="completed"):
    c = cfg(task, lr=lr, seed=seed)
    key = {"semseg": "miou", "depth": "rmse"}[task]
    sign = 1 if task == "semseg" else -1
    return {"config": c.to_dict(), "status": status, "metrics": {
        "val_score": sign * val, f"val/{task}/{key}": val, f"test/{task}/{key}": test}}


def test_best_baseline_is_chosen_on_val_mean_over_seeds_never_test():
    results = [
        baseline_result("semseg", 1e-4, 0, val=40, test=60),   # best on test, worse on val
        baseline_result("semseg", 1e-4, 1, val=42, test=58),
        baseline_result("semseg", 1e-3, 0, val=45, test=30),
        baseline_result("semseg", 1e-3, 1, val=43, test=32),
        baseline_result("depth", 1e-4, 0, val=1.0, test=0.5),
        baseline_result("depth", 1e-3, 0, val=0.8, test=0.9),  # lower rmse on val wins
        baseline_result("depth", 1e-2, 0, val=0.1, test=0.1, status="error"),
    ]
    best = bl.best_baselines(results, {"semseg/miou": True, "depth/rmse": False})
    assert best["semseg"]["val"] == {"semseg/miou": 44.0}
    assert best["semseg"]["test"] == {"semseg/miou": 31.0}
    assert best["depth"]["val"] == {"depth/rmse": 0.8}


def test_missing_baseline_task_is_an_error():
    with pytest.raises(RuntimeError, match=r"tasks \['depth'\]"):
        bl.best_baselines([baseline_result("semseg", 1e-4, 0, 1, 1)], {"semseg/miou": True, "depth/rmse": False})


def test_cache_key_ignores_experiment_name_but_not_settings():
    a, b = cfg("semseg"), cfg("semseg")
    renamed = TrialConfig.from_dict({**a.to_dict(), "experiment": "other"})
    assert bl.cache_key(a) == bl.cache_key(b) == bl.cache_key(renamed)
    assert bl.cache_key(a) != bl.cache_key(cfg("semseg", lr=1e-3))
    assert bl.cache_key(a) != bl.cache_key(cfg("semseg", seed=1))


def test_selection_uses_val_and_table_reports_test():
    s_sem = row(cfg("semseg"), "single_task", {"semseg/miou": 40}, {"semseg/miou": 50}, selected=True)
    s_dep = row(cfg("depth"), "single_task", {"depth/rmse": 1.0}, {"depth/rmse": 2.0}, selected=True)
    good_val = row(cfg(lr=1e-4), "multi_task", {}, {"semseg/miou": 45, "depth/rmse": 2.2}, val_dm=3.0, test_dm=-7.0)
    good_test = row(cfg(lr=1e-3), "multi_task", {}, {"semseg/miou": 60, "depth/rmse": 1.0}, val_dm=1.0, test_dm=35.0)
    stopped = row(cfg(lr=1e-2), "multi_task", {}, {}, val_dm=9.0, status="stopped")
    mtl = [good_val, good_test, stopped]
    _select(mtl)
    assert [r["selected"] for r in mtl] == [True, False, False]
    header, body = table_rows([s_sem, s_dep] + mtl)
    assert header[1:3] == ["semseg (miou) ↑", "depth (rmse) ↓"]
    assert body[0] == ["Single task", "50.00", "2.00", "2.00", "4.00", "+0.00"]
    assert body[1] == ["mtl", "45.00", "2.20", "1.00", "2.00", "-7.00"]
    assert "| Single task" in render([s_sem, s_dep] + mtl)
    assert render([s_sem, s_dep] + mtl, fmt="csv").splitlines()[0].startswith("model,")
    assert "\\begin{tabular}" in render([s_sem, s_dep] + mtl, fmt="latex")


def test_seeds_are_reported_as_mean_and_std():
    rows = [row(cfg(seed=s), "multi_task", {}, {"semseg/miou": v, "depth/rmse": 1.0}, val_dm=1.0, test_dm=d)
            for s, v, d in ((0, 40.0, 1.0), (1, 44.0, 3.0))]
    _select(rows)
    _, body = table_rows(rows, primary_task="depth")
    assert body[0][1] == "1.00 ± 0.00" and body[0][2] == "42.00 ± 2.00"  # primary task's column first
    assert body[0][-1] == "+2.00 ± 1.00"


def test_each_task_primary_row_composes_metrics_from_its_experiments():
    s_sem = row(cfg("semseg"), "single_task", {}, {"semseg/miou": 50.0}, selected=True)
    s_dep = row(cfg("depth"), "single_task", {}, {"depth/rmse": 2.0}, selected=True)
    rows = [s_sem, s_dep]
    for primary, metrics in (("semseg", {"semseg/miou": 55.0, "depth/rmse": 9.0}),
                             ("depth", {"semseg/miou": 10.0, "depth/rmse": 1.0})):
        c = TrialConfig.from_dict({**cfg().to_dict(), "experiment": f"ial_{primary}", "primary_task": primary,
                                   "balancer": "fixed"})
        rows.append(row(c, "multi_task", {}, metrics, val_dm=0.0, test_dm=0.0, selected=True))
    _, body = table_rows(rows)
    composed = body[-1]
    assert composed[0] == "fixed (each task primary)"
    assert composed[1:3] == ["55.00", "1.00"]      # each metric from the run where it was primary
    assert composed[-1] == "+30.00"                # mean of +10% (miou) and +50% (rmse)


def test_one_selection_rule_for_baselines_and_models():
    """results.best_setting: best mean val score over seeds; unscored runs left out; a setting with a
    diverged seed never chosen; the first setting wins a tie."""
    from orchestrator.results import best_setting

    runs = [("a", 1.0), ("a", 3.0), ("b", 2.5), ("b", 1.0), ("c", float("nan")), ("c", 9.0), ("d", None)]
    assert best_setting(runs, setting=lambda r: r[0], score=lambda r: r[1]) == "a"  # 2.0 vs 1.75; c diverged
    assert best_setting([("x", 1.0), ("y", 1.0)], setting=lambda r: r[0], score=lambda r: r[1]) == "x"
    assert best_setting([("d", None)], setting=lambda r: r[0], score=lambda r: r[1]) is None


def test_training_time_table_against_the_single_task_networks():
    """IAL Table II: seconds per run of the selected setting (mean ± std over seeds) and the ratio to
    training every task's single-task network once."""
    from orchestrator.report import render_times, training_times

    def row(experiment, role, tasks, seconds, seed=0, selected=True):
        return {"experiment": experiment, "role": role, "tasks": tasks, "selected": selected, "seed": seed,
                "wall_time_s": seconds}

    rows = [row("single_task/a", "single_task", ["a"], 10.0), row("single_task/a", "single_task", ["a"], 14.0, 1),
            row("single_task/b", "single_task", ["b"], 8.0), row("single_task/b", "single_task", ["b"], 99.0, 0, False),
            row("ial", "multi_task", ["a", "b"], 30.0), row("ial", "multi_task", ["a", "b"], 40.0, 1),
            row("supervised_mtl", "supervised_mtl", ["a", "b"], 20.0)]
    table = training_times(rows)
    assert table[0] == ["Single task (all tasks)", "20.0", "1.00"]  # mean(10, 14) + 8; the unselected run is out
    assert table[1] == ["ial", "35.0 ± 5.0", "1.75"]
    assert table[2] == ["Supervised MTL", "20.0", "1.00"]
    assert "× single-task networks" in render_times(rows)

"""The study's PNGs: the Pareto front, the points and histories they draw, the files, the skips, `mtl plot`.

A fixture study folder holds results rows written with the project's results writer and fake Ray
Tune trial folders (one ``result.json`` line per epoch); nothing here starts Ray.
"""
import json
import math
import os

import pytest
from PIL import Image

from orchestrator.cli import main
from orchestrator.plots import Point, model_points, pareto_front, render_plots, table_lines, trial_histories
from orchestrator.results import read_rows, write_rows
from trainables.config import TrialConfig

TASKS = ("semseg", "depth")  # synthetic: miou (higher is better), rmse (lower is better)
SINGLE = "single-task networks, best grid setting on val"
SUPERVISED = "supervised MTL (mtl_baseline, fixed weights) on the same labels, best grid setting on val"


def row(experiment, role, seed, test_dm, *, params=1_200_000, flops=2.5, balancer="fixed", tasks=TASKS, lr=1e-4,
        selected=True, metrics=None, trial_id="", delta_baseline=SINGLE):
    c = TrialConfig(experiment=experiment, tasks=tasks, lr=lr, seed=seed,
                    model={"architecture": "single_task" if role == "single_task" else "mtl_baseline"},
                    balancer={"name": balancer}, dataset={"name": "synthetic", "params": {"image_size": 32}})
    return dict(study="demo", run_id="20260101-000000", experiment=experiment, role=role,
                architecture=c.model.architecture.name, balancer=balancer, tasks=list(tasks), trial_id=trial_id,
                config_json=json.dumps(c.to_dict()), config_hash=c.config_hash(),
                setting_hash=c.config_hash(exclude=("seed",)), seed=seed, val_metrics=metrics or {},
                test_metrics=metrics or {}, val_delta_m=test_dm, test_delta_m=test_dm, delta_baseline=delta_baseline,
                params=params, flops_g=flops, wall_time_s=1.0, epochs_done=3, status="completed", error="",
                selected=selected, cached=False, checkpoint_path="")


def study_rows():
    """Two single-task networks (1 M params, 2 GFLOPS each), three models over two seeds, and
    runs that are not selected (they must not show)."""
    return [
        row("single_task/semseg", "single_task", 0, 0.0, params=1_000_000, flops=2.0, tasks=("semseg",),
            metrics={"semseg/miou": 40.0}),
        row("single_task/semseg", "single_task", 1, 0.0, params=1_000_000, flops=2.0, tasks=("semseg",),
            metrics={"semseg/miou": 42.0}),
        row("single_task/semseg", "single_task", 0, -9.0, params=1_000_000, flops=2.0, tasks=("semseg",), lr=1e-3,
            selected=False, metrics={"semseg/miou": 10.0}),
        row("single_task/depth", "single_task", 0, 0.0, params=1_000_000, flops=2.0, tasks=("depth",),
            metrics={"depth/rmse": 0.5}),
        row("mtl_baseline", "multi_task", 0, -2.0, trial_id="aaaaa_00000",
            metrics={"semseg/miou": 40.0, "depth/rmse": 0.56}),
        row("mtl_baseline", "multi_task", 1, -4.0, trial_id="aaaaa_00001",
            metrics={"semseg/miou": 39.0, "depth/rmse": 0.55}),
        row("mtl_baseline", "multi_task", 0, 50.0, trial_id="aaaaa_00002", lr=1e-3, selected=False),
        row("uw", "multi_task", 0, 1.0, balancer="uncertainty", trial_id="bbbbb_00000",
            metrics={"semseg/miou": 42.0, "depth/rmse": 0.50}),
        row("uw", "multi_task", 1, 3.0, balancer="uncertainty", trial_id="bbbbb_00001",
            metrics={"semseg/miou": 44.0, "depth/rmse": 0.48}),
        row("cross_stitch", "multi_task", 0, 5.0, params=2_100_000, flops=4.2, trial_id="ccccc_00000",
            metrics={"semseg/miou": 45.0, "depth/rmse": 0.47}),
        row("cross_stitch", "multi_task", 1, 5.0, params=2_100_000, flops=4.2, trial_id="ccccc_00001",
            metrics={"semseg/miou": 45.0, "depth/rmse": 0.47}),
    ]


def write_trial(study_dir, experiment, trial_id, reports):
    folder = os.path.join(study_dir, "tune", experiment, f"_run_trial_{trial_id}_0_seed=0_2026-01-01_00-00-00")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "result.json"), "w") as fh:
        for report in reports:
            fh.write(json.dumps({**report, "trial_id": trial_id, "config": {"experiment": experiment}}) + "\n")


def epochs(final_dm, weights=None, n=4):
    """``n`` epochs of reports rising to ``final_dm``; ``weights``: task -> weight per epoch."""
    return [{"epoch": e, "val_delta_m": final_dm - 3.0 * (n - 1 - e),
             **{f"weight/{t}": (w[e] if isinstance(w, list) else w) for t, w in (weights or {}).items()}}
            for e in range(n)]


def build_study(root):
    """``<root>/demo``: results.parquet (the project's writer) and Tune trial folders. Returns the
    study folder and its rows read back."""
    study_dir = os.path.join(root, "demo")
    write_rows(study_rows(), os.path.join(study_dir, "results.parquet"))
    constant = {"semseg": 1.0, "depth": 1.0}
    for seed, final in enumerate((-2.0, -4.0)):
        write_trial(study_dir, "mtl_baseline", f"aaaaa_0000{seed}", epochs(final, constant))
    write_trial(study_dir, "mtl_baseline", "aaaaa_00002", epochs(50.0, constant))
    for seed, final in enumerate((1.0, 3.0)):
        write_trial(study_dir, "uw", f"bbbbb_0000{seed}",
                    epochs(final, {"semseg": [0.5, 0.6, 0.7, 0.8], "depth": [0.5, 0.45, 0.4, 0.35]}))
    for seed in (0, 1):
        write_trial(study_dir, "cross_stitch", f"ccccc_0000{seed}", epochs(5.0, constant))
    return study_dir, read_rows(study_dir)


def assert_png(path):
    assert os.path.getsize(path) > 20_000, f"{path} is suspiciously small"
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 500 and height >= 350
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert len(colours) > 100, f"{path} looks blank"


def test_pareto_front_on_hand_made_points():
    points = [(1.0, 0.0), (2.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 8.0), (4.0, 8.0), (5.0, 7.0), (0.5, math.nan),
              (6.0, 9.0)]
    # (2,3): same cost as (2,5), lower; (3,4) and (5,7): costlier and lower than (2,5) / (4,8);
    # the two (4,8) are equal and both stay; NaN is left out; (6,9) is the best and the costliest
    assert pareto_front(points) == [0, 1, 4, 5, 8]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]
    assert pareto_front([(1.0, 1.0), (0.5, 2.0)]) == [1]  # cheaper and better: the other is dominated
    assert pareto_front([]) == []


def test_model_points_are_the_tables_models_mean_and_std_over_seeds():
    points = model_points(table_lines(study_rows())[1])
    assert points == [
        Point("Single task", 2.0, 4.0, 0.0, 0.0, True),    # params and FLOPS summed over the tasks
        Point("mtl_baseline", 1.2, 2.5, -3.0, 1.0, False),  # seeds -2, -4; the unselected +50 is left out
        Point("uw", 1.2, 2.5, 2.0, 1.0, False),
        Point("cross_stitch", 2.1, 4.2, 5.0, 0.0, False),
    ]
    xs_ys = [(p.params_m, p.delta) for p in points]
    assert pareto_front(xs_ys) == [2, 3]  # uw beats the single-task networks and mtl_baseline with as few params


def test_against_supervised_mtl_the_reference_is_that_model():
    rows = [r for r in study_rows() if r["role"] == "single_task"]
    rows.append(row("supervised_mtl", "supervised_mtl", 0, -4.5, delta_baseline=SINGLE))
    rows += [dict(r, delta_baseline=SUPERVISED) for r in study_rows() if r["experiment"] == "uw"]
    # the single-task networks' Delta_m against supervised MTL is unknown: no point
    assert model_points(table_lines(rows)[1]) == [Point("Supervised MTL", 1.2, 2.5, 0.0, 0.0, True),
                                                  Point("uw", 1.2, 2.5, 2.0, 1.0, False)]


def test_trial_histories_map_rows_to_tune_folders_by_trial_id(tmp_path):
    study_dir = str(tmp_path)
    write_trial(study_dir, "uw", "bbbbb_00000", epochs(1.0, n=2))
    # a trial retried from its checkpoint reports epoch 1 twice: the later report wins
    write_trial(study_dir, "uw", "bbbbb_00001", epochs(3.0, n=2) + [{"epoch": 1, "val_delta_m": 7.0}])
    write_trial(study_dir, "uw", "bbbbb_00002", [])  # errored before its first report
    found = trial_histories(study_dir, {"bbbbb_00001", "bbbbb_00002", "zzzzz_00000"})
    assert list(found) == ["bbbbb_00001"]
    assert [(r["epoch"], r["val_delta_m"]) for r in found["bbbbb_00001"]] == [(0, 0.0), (1, 7.0)]


def test_render_plots_writes_every_png(tmp_path):
    study_dir, rows = build_study(str(tmp_path))
    lines = []
    out = str(tmp_path / "png")
    paths = render_plots(study_dir, rows, out, log=lines.append)
    names = ["delta_vs_params.png", "delta_vs_flops.png", "loss_weights.png", "val_curves.png", "task_metrics.png"]
    assert paths == [os.path.join(out, n) for n in names]
    assert lines == []  # nothing skipped
    for path in paths:
        assert_png(path)


def test_missing_data_skips_a_plot_with_its_reason(tmp_path):
    # results files written before a column existed read it as empty: here the models' FLOPS
    rows = [dict(r, flops_g=None) if r["role"] == "multi_task" else r for r in study_rows() if r["balancer"] == "fixed"]
    lines = []
    paths = render_plots(str(tmp_path), rows, str(tmp_path / "png"), log=lines.append)
    assert [os.path.basename(p) for p in paths] == ["delta_vs_params.png", "task_metrics.png"]
    assert lines == ["plots: delta_vs_flops.png skipped: no model has a FLOPS count",
                     "plots: loss_weights.png and val_curves.png skipped: no Tune trial history of a selected "
                     f"multi-task run under {tmp_path / 'tune'}"]

    write_trial(str(tmp_path), "mtl_baseline", "aaaaa_00000", epochs(-2.0, {"semseg": 1.0, "depth": 1.0}))
    lines.clear()
    paths = render_plots(str(tmp_path), rows, str(tmp_path / "png"), log=lines.append)
    assert "val_curves.png" in [os.path.basename(p) for p in paths]
    assert "plots: loss_weights.png skipped: no model's balancer changed its loss weights over epochs" in lines

    assert render_plots(str(tmp_path), [], str(tmp_path / "none"), log=lines.append) == []
    assert lines[-1] == "plots: every plot skipped: no results rows"

    lines.clear()
    single = [r for r in study_rows() if r["role"] == "single_task"]
    assert render_plots(str(tmp_path), single, str(tmp_path / "none"), log=lines.append) == []
    assert lines == ["plots: delta_vs_params.png and delta_vs_flops.png skipped: no model has a test Delta_m "
                     "(no selected completed run)",
                     "plots: loss_weights.png and val_curves.png skipped: the study has no selected multi-task run",
                     "plots: task_metrics.png skipped: no model has test metrics (no selected completed run)"]


def test_mtl_plot_renders_a_stored_study(tmp_path, capsys):
    storage = tmp_path / "mtl_runs"
    study_dir, _ = build_study(str(storage))
    assert main(["plot", "demo", "--storage", str(storage)]) == 0
    printed = capsys.readouterr().out.split()
    run_dir = os.path.join(study_dir, "results", "20260101-000000")  # the run's folder, beside its results
    assert printed == [os.path.join(run_dir, n) for n in ("delta_vs_params.png", "delta_vs_flops.png",
                                                          "loss_weights.png", "val_curves.png", "task_metrics.png")]
    assert all(os.path.exists(p) for p in printed)


def test_mtl_plot_of_a_missing_study_is_an_error(tmp_path, capsys):
    assert main(["plot", "nothing", "--storage", str(tmp_path)]) == 2
    assert "mtl plot:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plot"])  # the study is required


def test_mtl_plot_without_a_gathered_results_file_plots_the_newest_run(tmp_path, capsys):
    """A study folder given as a path whose runs left only their per-experiment files (a crash
    before results.parquet): the newest run is plotted, into its own folder."""
    study_dir = tmp_path / "demo"
    old = [dict(r, run_id="20250101-000000") for r in study_rows()]
    write_rows(old, str(study_dir / "results" / "20250101-000000" / "all.parquet"))
    write_rows(study_rows()[:6], str(study_dir / "results" / "20260101-000000" / "all.parquet"))
    assert main(["plot", str(study_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "mtl plot: plotting the newest run 20260101-000000 of ['20250101-000000', '20260101-000000']"
    run_dir = study_dir / "results" / "20260101-000000"
    assert out[-1] == str(run_dir / "task_metrics.png")
    assert sorted(os.listdir(run_dir)) == ["all.parquet", "delta_vs_flops.png", "delta_vs_params.png",
                                           "task_metrics.png"]

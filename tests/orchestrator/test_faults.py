"""Faults and bad input (issue 15), without Ray.

1. A diverged run is recorded as failed: ``fit`` ends it at the first non-finite training loss
   (task or regulariser term) or validation loss / metric / Delta_m and reports why (epoch and
   task); Tune's outcome, the baseline actor, ``_row`` / ``_select`` / ``best_setting`` /
   ``best_baselines`` keep it failed, never selected, never a baseline; a baseline whose every
   setting failed stops the study before any multi-task trial; the report says why a model has
   no row.
2. Bad input is one line before Ray starts (``start_ray`` is replaced by a function that
   raises): numeric ranges, YAML 1.1's float-as-string, study names, ``--storage``, partial-label
   files and a corrupt file in the middle of a split.
"""
from __future__ import annotations

import json
import math
import os
import re
from types import SimpleNamespace

import pytest
import torch

import orchestrator.ray_env as ray_env
import orchestrator.study as study
from orchestrator import baselines as bl
from orchestrator.cli import main
from orchestrator.data_check import parse_params
from orchestrator.report import render, status_notes
from orchestrator.results import best_setting
from orchestrator.spec import load_spec
from orchestrator.tuning import trial_outcome
from tests.trainables.test_datasets_nyud_cityscapes import TRAIN_IDS, VAL_IDS, write_nyud
from trainables.config import TrialConfig
from trainables.datasets.readers import DataCheckError
from trainables.registry import DATASETS
from trainables.session import Session
from trainables.tasks.depth import Depth
from trainables.train_loop import fit, load_state, training_diverged, validation_diverged

CPU = torch.device("cpu")
NAN = math.nan


class RayStarted(Exception):
    pass


@pytest.fixture(autouse=True)
def no_ray(monkeypatch, tmp_path):
    """Starting Ray fails the test; the synthetic data renders into the test's folder."""
    def start_ray(*args, **kwargs):
        raise RayStarted("Ray was started")

    monkeypatch.setattr(ray_env, "start_ray", start_ray)
    monkeypatch.setattr(study, "start_ray", start_ray)
    monkeypatch.setenv("MTL_CACHE_DIR", str(tmp_path / "mtl_cache"))


# ================================================================ 1. fit ends a diverged run
def tiny(tmp_path, **kw):
    base = dict(experiment="t", tasks=("semseg", "depth"), data_root=str(tmp_path / "data"),
                dataset={"name": "synthetic", "params": {"image_size": 32, "num_train": 16, "num_val": 8,
                                                         "num_test": 8}},
                batch_size=4, eval_batch_size=8, epochs=3, max_steps_per_epoch=2, lr=1e-3)
    base.update(kw)
    return TrialConfig(**base)


class ArmAfter(Session):
    """A session that arms ``switch`` once ``epochs`` epochs have reported (the fault starts at
    epoch ``epochs``)."""

    def __init__(self, epochs, switch, checkpoint_dir=None):
        super().__init__(device=CPU, checkpoint_dir=checkpoint_dir)
        self.epochs, self.switch = epochs, switch

    def report(self, metrics, state=None):
        super().report(metrics, state)
        if len(self.reports) == self.epochs:
            self.switch["on"] = True


def assert_failed_at(session, last, epoch, reason_pattern):
    """fit returned (no exception) a final report saying why; epochs before ``epoch`` reported as usual."""
    assert [r["epoch"] for r in session.reports] == list(range(epoch)) + [epoch]
    assert last["failed"] == session.reports[-1]["failed"]
    assert re.fullmatch(reason_pattern, last["failed"]), last["failed"]
    assert last["finished"] is False and math.isnan(last["val_score"])  # Tune needs its metric in every report
    assert not any(k.startswith(("val/", "test/")) for k in last)
    assert all("failed" not in r for r in session.reports[:-1])


def test_a_task_loss_that_turns_nan_ends_the_run_at_that_step(tmp_path, monkeypatch):
    switch = {"on": False}
    loss = Depth.loss
    monkeypatch.setattr(Depth, "loss",
                        lambda self, pred, target: loss(self, pred, target) * (NAN if switch["on"] else 1.0))
    ckpt = tmp_path / "ckpt"
    session = ArmAfter(1, switch, checkpoint_dir=str(ckpt))
    last = fit(tiny(tmp_path), session)
    assert_failed_at(session, last, 1, r"epoch 1, step 0: training loss of task 'depth' is nan")
    assert load_state(str(ckpt))["epoch"] == 0  # the diverged epoch wrote no checkpoint


def test_a_balancer_that_yields_nan_ends_the_run_when_the_losses_turn(tmp_path, monkeypatch):
    """A NaN total from the balancer poisons the parameters through the optimiser step; the
    next step's task losses are NaN, and that step ends the run."""
    from trainables.balancers.fixed import Fixed

    switch = {"on": False}
    combine = Fixed.combine
    monkeypatch.setattr(Fixed, "combine", lambda self, losses: combine(self, losses) * (NAN if switch["on"] else 1.0))
    session = ArmAfter(2, switch)
    last = fit(tiny(tmp_path), session)
    assert_failed_at(session, last, 2, r"epoch 2, step 1: training loss of task '(semseg|depth)' is nan")


def test_a_regulariser_term_that_is_inf_ends_the_run(tmp_path, monkeypatch):
    import trainables.train_loop as loop

    calls = {"n": 0}

    def step(model, balancer, tasks, batch, optimizer, session=None, regularisers=(), meta_batch=None,
             amp=None, scaler=None):
        calls["n"] += 1
        optimizer.step()
        return {"semseg": 1.0, "depth": 2.0, "reg/consistency": math.inf if calls["n"] == 2 else 0.5}

    monkeypatch.setattr(loop, "training_step", step)
    session = Session(device=CPU)
    last = fit(tiny(tmp_path), session)
    assert_failed_at(session, last, 0, r"epoch 0, step 1: training regulariser term 'consistency' is inf")
    assert calls["n"] == 2  # ended at once: no further step


def test_a_validation_metric_that_turns_nan_ends_the_run(tmp_path, monkeypatch):
    switch = {"on": False}
    compute = Depth.compute_metric
    monkeypatch.setattr(Depth, "compute_metric",
                        lambda self, state: {**compute(self, state), **({"rmse": NAN} if switch["on"] else {})})
    session = ArmAfter(1, switch)
    last = fit(tiny(tmp_path), session)
    assert_failed_at(session, last, 1, r"epoch 1: validation depth/rmse is nan")


def test_validation_verdicts():
    directions = {"semseg/miou": True, "depth/rmse": False}
    val = {"semseg/miou": 40.0, "semseg/loss": 1.0, "depth/rmse": 0.5, "depth/loss": 0.2, "edge/loss": NAN}
    counts = {"semseg": 8, "depth": 8, "edge": 0}  # an auxiliary task's metrics are logged, not judged
    assert validation_diverged(val, counts, {"delta_m": -3.0, "score": -3.0}, directions, 4) is None
    assert validation_diverged({**val, "depth/loss": math.inf}, counts, {"score": 1.0}, directions, 4) == \
        "epoch 4: validation depth/loss is inf"
    assert validation_diverged(val, counts, {"delta_m": NAN, "score": NAN}, directions, 4) == \
        "epoch 4: validation Delta_m is nan"
    assert validation_diverged(val, {**counts, "depth": 0}, {"score": 1.0}, directions, 4) == \
        "epoch 4: the validation split has no labelled sample of task 'depth', so depth/rmse is undefined"


class OtherWorker(Session):
    """Two workers, this one in-process: the all-reduce adds the other worker's verdict."""

    def __init__(self, other_diverged):
        super().__init__(device=CPU)
        self.other = float(other_diverged)

    world_size = property(lambda self: 2)

    def all_reduce_(self, tensor):
        return tensor.add_(self.other)


def test_every_worker_stops_at_the_same_step():
    assert training_diverged({"depth": 1.0}, 3, 7, OtherWorker(False)) is None
    assert training_diverged({"depth": 1.0}, 3, 7, OtherWorker(True)) == \
        "epoch 3, step 7: a training loss is non-finite on another worker"
    assert training_diverged({"depth": NAN}, 3, 7, OtherWorker(True)) == \
        "epoch 3, step 7: training loss of task 'depth' is nan"


# ===================================================== 1. failed, never selected, never a baseline
REASON = "epoch 1, step 0: training loss of task 'depth' is nan"


def test_tune_outcome_of_a_failed_trial():
    failed = SimpleNamespace(error=None, config={"seed": 0},
                             metrics={"epoch": 1, "failed": REASON, "finished": False, "val_score": NAN,
                                      "trial_id": "t1", "time_total_s": 3.0})
    out = trial_outcome(failed)
    assert out["status"] == "failed" and out["error"] == REASON and out["trial_id"] == "t1"
    assert trial_outcome(SimpleNamespace(error=None, config={}, metrics={"finished": True}))["status"] == "completed"
    assert trial_outcome(SimpleNamespace(error=None, config={}, metrics={"finished": False}))["status"] == "stopped"
    crashed = trial_outcome(SimpleNamespace(error=RuntimeError("boom"), config={}, metrics={}))
    assert crashed["status"] == "error" and crashed["error"] == "RuntimeError: boom"


def test_baseline_actor_records_a_failed_run_and_does_not_cache_it(tmp_path, monkeypatch):
    import trainables.train_loop as loop

    monkeypatch.setattr(loop, "fit", lambda cfg, session: {"epoch": 1, "failed": REASON, "finished": False,
                                                           "val_score": NAN})
    trainer = object.__new__(bl.BaselineTrainer)  # the actor body, without the actor's thread setting
    cfg = tiny(tmp_path, experiment="single_task/depth", tasks=("depth",), model={"architecture": "single_task"})
    result = trainer.train(cfg.to_dict(), str(tmp_path / "entry"))
    assert result["status"] == "failed" and result["error"] == REASON
    assert not (tmp_path / "entry" / bl.RESULT_FILE).exists()


def test_best_setting_never_chooses_a_setting_with_a_failed_seed():
    runs = [("a", 9.0, False), ("a", None, True), ("b", 1.0, False), ("b", 2.0, False)]
    def pick(runs):
        return best_setting(runs, setting=lambda r: r[0], score=lambda r: r[1], failed=lambda r: r[2])

    assert pick(runs) == "b"  # a's seed 0 is the best run, but its seed 1 diverged
    assert pick([("a", None, True)]) is None


def result(task, lr, seed, val, status="completed", error=""):
    c = TrialConfig(experiment=f"single_task/{task}", tasks=(task,), model={"architecture": "single_task"}, lr=lr,
                    seed=seed, dataset={"name": "synthetic", "params": {"image_size": 32}})
    key = {"semseg": "miou", "depth": "rmse"}[task]
    metrics = {} if status != "completed" else {
        "val_score": val if task == "semseg" else -val, f"val/{task}/{key}": val, f"test/{task}/{key}": val}
    return {"config": c.to_dict(), "status": status, "error": error, "metrics": metrics, "checkpoint_path": ""}


def test_best_baselines_skip_failed_settings_and_stop_when_none_is_left():
    results = [result("semseg", 1e-4, 0, 60.0), result("semseg", 1e-4, 1, 0.0, "failed", REASON),
               result("semseg", 1e-3, 0, 40.0), result("semseg", 1e-3, 1, 42.0)]
    best = bl.best_baselines(results, {"semseg/miou": True})
    assert best["semseg"]["val"] == {"semseg/miou": 41.0}  # 1e-3: 1e-4's seed 1 diverged
    failed = [result("depth", lr, 0, 0.0, "failed", REASON) for lr in (1e-4, 1e-3)]
    with pytest.raises(bl.BaselineFailed) as stop:
        bl.best_baselines(results + failed, {"semseg/miou": True, "depth/rmse": False})
    message = str(stop.value)
    assert message.startswith("no single-task baseline finished for tasks ['depth']: single_task/depth has no grid "
                              f"setting that finished on every seed (2 run(s): 2 failed; first: {REASON})")
    assert "the study stops before any multi-task trial" in message and "\n" not in message


def mtl_row(lr, seed, val_dm, status="completed", error=""):
    c = TrialConfig(experiment="mtl", tasks=("semseg", "depth"), lr=lr, seed=seed,
                    dataset={"name": "synthetic", "params": {"image_size": 32}})
    return dict(study="s", run_id="r", experiment="mtl", role="multi_task", architecture="mtl_baseline",
                balancer="fixed", tasks=["semseg", "depth"], trial_id=f"t{lr}-{seed}",
                config_json=json.dumps(c.to_dict()), config_hash=c.config_hash(),
                setting_hash=c.config_hash(exclude=("seed",)), seed=seed, val_metrics={},
                test_metrics={} if status != "completed" else {"semseg/miou": 40.0, "depth/rmse": 1.0},
                val_delta_m=val_dm, test_delta_m=val_dm, delta_baseline="single-task networks", params=1_000_000,
                flops_g=1.0, wall_time_s=1.0, epochs_done=2, status=status, error=error, cached=False,
                checkpoint_path="")


def test_select_never_marks_a_failed_trial_and_marks_every_row():
    rows = [mtl_row(1e-4, 0, 9.0), mtl_row(1e-4, 1, None, "failed", REASON), mtl_row(1e-3, 0, 1.0),
            mtl_row(1e-3, 1, 2.0)]
    study._select(rows)
    assert [r["selected"] for r in rows] == [False, False, True, True]
    diverged = [mtl_row(1e-4, s, None, "failed", REASON) for s in (0, 1)]
    study._select(diverged)
    assert [r["selected"] for r in diverged] == [False, False]  # set, not missing: no KeyError later


def test_row_of_a_failed_trial(monkeypatch):
    monkeypatch.setattr(study, "complexity", lambda cfg: (1000, 0.5))
    cfg = TrialConfig(experiment="mtl", tasks=("semseg", "depth"), dataset={"name": "synthetic"})
    outcome = {"config": cfg.to_dict(), "status": "failed", "error": REASON, "trial_id": "t1", "wall_time_s": 2.0,
               "metrics": {"epoch": 1, "failed": REASON, "finished": False, "val_score": NAN}}
    exp = SimpleNamespace(name="mtl", role="multi_task")
    directions = {"semseg/miou": True, "depth/rmse": False}
    r = study._row(outcome, exp, {"study": "s", "run_id": "r", "delta_baseline": ""}, {}, directions,
                   {"semseg/miou": 40.0, "depth/rmse": 1.0}, {"semseg/miou": 40.0, "depth/rmse": 1.0})
    assert r["status"] == "failed" and r["error"] == REASON
    assert r["epochs_done"] == 1 and r["val_delta_m"] is None and r["val_metrics"] == {}


def test_report_says_which_models_have_no_row_and_why():
    single = [dict(mtl_row(1e-4, 0, 0.0), experiment=f"single_task/{t}", role="single_task", tasks=[t],
                   test_metrics={f"{t}/{m}": 1.0}, selected=True) for t, m in (("semseg", "miou"), ("depth", "rmse"))]
    for r in single:
        r["config_json"] = json.dumps(TrialConfig(experiment=r["experiment"], tasks=tuple(r["tasks"]),
                                                  model={"architecture": "single_task"},
                                                  dataset={"name": "synthetic"}).to_dict())
    good = [mtl_row(1e-3, 0, 1.0), mtl_row(1e-3, 1, 2.0), mtl_row(1e-4, 0, None, "failed", REASON),
            mtl_row(1e-2, 0, 5.0, "stopped")]
    bad = [dict(mtl_row(lr, 0, None, "failed", REASON), experiment="mtl_dwa") for lr in (1e-4, 1e-3)]
    study._select(good)
    study._select(bad)
    rows = single + good + bad
    assert status_notes(rows) == [
        f"mtl: of its 4 trial(s), 1 failed (diverged), 1 stopped early by ASHA; left out of its row; first: {REASON}",
        f"mtl_dwa: no row - none of its 2 trial(s) completed (2 failed (diverged)); first: {REASON}",
    ]
    text = render(rows)
    table, notes = text.split("\nΔm: ")
    assert "| mtl_dwa" in table and "(no completed trial)" in table
    assert notes.splitlines()[-2:] == status_notes(rows)


def spec_yaml(tmp_path, text: str = "", name: str = "probe") -> str:
    """A tiny valid study (synthetic 32 x 32, two tasks) with ``text`` appended (YAML, so later
    keys override); returns its path."""
    path = tmp_path / "study.yaml"
    path.write_text(f"""\
name: {name}
dataset: {{name: synthetic, params: {{image_size: 32, num_train: 16, num_val: 8, num_test: 8}}}}
tasks: [semseg, depth]
experiments: [{{name: m, architecture: mtl_baseline, balancer: fixed}}]
search: {{batch_sizes: [4], schedulers: [poly], optimizers: [adam], lrs: [0.0001]}}
train: {{epochs: 1, seeds: [0]}}
{text}""")
    return str(path)


def test_a_baseline_whose_every_setting_failed_stops_the_study_before_any_multi_task_trial(tmp_path, monkeypatch,
                                                                                              capsys):
    monkeypatch.setattr(study, "Cluster", lambda p: SimpleNamespace(resources={"CPU": 2.0}, actors=1, actor_options={}))
    monkeypatch.setattr(study, "complexity", lambda cfg: (1000, 0.5))

    def baselines(p, cluster):  # semseg trains; every depth setting diverges
        out = {}
        for exp in p.single:
            for cfg in exp.trial_configs():
                task = cfg.tasks[0]
                r = result(task, cfg.lr, cfg.seed, 50.0, *(("failed", REASON) if task == "depth" else ()))
                out.setdefault(exp.name, []).append({**r, "config": cfg.to_dict(), "wall_time_s": 1.0})
        return out

    def run_experiments(*args, **kwargs):
        raise AssertionError("a multi-task trial started")

    monkeypatch.setattr(study, "baselines", baselines)
    monkeypatch.setattr(study, "run_experiments", run_experiments)
    code = main(["run", spec_yaml(tmp_path), "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("mtl run: study stopped: no single-task baseline finished for tasks ['depth']: "
                          f"single_task/depth has no grid setting that finished on every seed (1 run(s): 1 failed; "
                          f"first: {REASON})")


# =================================================================== 2. bad input, before Ray
def run_cli(capsys, *argv):
    """mtl's exit code and stderr; Ray must not start."""
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("yaml_text, message", [
    ("train: {epochs: 1, seeds: -1}", "train.seeds: [-1] must be distinct integers >= 0"),
    ("train: {epochs: 1, seeds: [0.5]}", "train.seeds[0]: expected an integer, got 0.5"),
    ("search: {batch_sizes: [0]}", "search.batch_sizes[0]: 0 must be >= 1"),
    ("train: {eval_batch_size: 0}", "train.eval_batch_size: 0 must be >= 1"),
    ("train: {max_steps_per_epoch: 0}", "train.max_steps_per_epoch: 0 must be >= 1 or null"),
    ("train: {weight_decay: -1e-4}", "train.weight_decay: -0.0001 must be a number >= 0"),
    ("train: {epochs: 0}", "train.epochs: 0 must be >= 1"),
    ("search: {lrs: [abc]}", "search.lrs[0]: expected a number, got 'abc'"),
    ("search: {lrs: [-2e-4]}", "search.lrs[0]: -0.0002 must be a positive number"),
    ("resources: {workers_per_trial: 0}", "resources.workers_per_trial: 0 must be >= 1"),
    ("experiments: [{name: m, balancer: fixed, weight_search: {seed: -1}}]",
     "experiments[0].weight_search.seed: -1 must be an integer >= 0"),
    ("name: '..'", "name: '..' must be a plain folder name"),
    ("name: .hidden", "name: '.hidden' must be a plain folder name"),
    ("name: a/b", "name: 'a/b' must be a plain folder name"),
])
def test_bad_fields_are_one_line_naming_the_field_before_ray(tmp_path, capsys, yaml_text, message):
    code, err = run_cli(capsys, "run", spec_yaml(tmp_path, yaml_text), "--storage", str(tmp_path / "runs"))
    assert code == 2 and err.startswith("mtl run: invalid study spec: ")
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing written


def test_bad_flag_names_the_flag(tmp_path, capsys):
    code, err = run_cli(capsys, "run", spec_yaml(tmp_path), "--epochs", "0", "--storage", str(tmp_path / "runs"))
    assert code == 2 and "train.epochs: 0 must be >= 1 (set by --epochs)" in err


def test_yaml_floats_without_a_dot_are_numbers(tmp_path, capsys):
    spec = load_spec(spec_yaml(tmp_path, "search: {optimizers: [adam], lrs: [2e-4, 1E-3]}\n"
                                         "train: {weight_decay: '5e-4'}\n"
                                         "dataset: {name: synthetic, labels: {setting: onelabel, "
                                         "unlabelled_fraction: 5e-1}}"))
    assert spec.search.lrs == (2e-4, 1e-3) and spec.train.weight_decay == 5e-4
    assert spec.dataset.labels["unlabelled_fraction"] == 0.5  # an untyped field: read as a number by YAML itself
    assert parse_params(["lr=2e-4", "name=abc"]) == {"lr": 2e-4, "name": "abc"}
    grid = "search: {batch_sizes: [4], schedulers: [poly], optimizers: [adam], lrs: [2e-4]}"
    assert main(["run", spec_yaml(tmp_path, grid), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "1 grid setting(s)" in out


def test_storage_that_cannot_be_written_is_one_line_before_ray(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = run_cli(capsys, "run", spec_yaml(tmp_path), "--storage", str(afile / "runs"))
    assert code == 2 and len(err.splitlines()) == 1
    assert f"cannot create or write the study's folder {afile / 'runs' / 'probe'} ({afile} is a file)" in err

    def read_only(*args, **kwargs):  # what a read-only folder answers (root writes through chmod)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.TemporaryFile", read_only)
    code, err = run_cli(capsys, "run", spec_yaml(tmp_path), "--storage", str(tmp_path / "ro"))
    assert code == 2 and f"{tmp_path / 'ro' / 'probe'} (Permission denied)" in err
    assert not (tmp_path / "ro").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_storage_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, err = run_cli(capsys, "run", spec_yaml(tmp_path), "--storage", str(ro))
    finally:
        ro.chmod(0o700)
    assert code == 2 and f"{ro / 'probe'} (Permission denied)" in err


@pytest.mark.parametrize("weights, expected", [
    (torch.ones(16, 1), "labels_weights of shape [N, 2] (tasks ['semseg', 'depth']) expected, found (16, 1)"),
    (torch.ones(16), "labels_weights of shape [N, 2] (tasks ['semseg', 'depth']) expected, found (16,)"),
    ([[1, 0], [1]] * 8, "labels_weights of shape [N, 2] (tasks ['semseg', 'depth']) expected, found list"),
    (torch.ones(10, 2), "10 rows, fewer than the 16 training samples; labels_weights of shape [>= 16, 2]"),
    (torch.ones(20, 2), "20 rows for a training split of 16 samples, and dataset SyntheticScenes has no official "
                        "list (no source_indices) that its rows could index; labels_weights of shape [16, 2]"),
])
def test_wrong_shape_label_file_is_one_line_naming_it(tmp_path, capsys, weights, expected):
    path = tmp_path / "onelabel.pth"
    torch.save({"labels_weights": weights}, path)
    code, err = run_cli(capsys, "run", spec_yaml(tmp_path, f"dataset: {{name: synthetic, params: {{image_size: 32, "
                                                           f"num_train: 16, num_val: 8, num_test: 8}}, "
                                                           f"labels: {{weights_file: {path}}}}}"),
                        "--storage", str(tmp_path / "runs"))
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{path}: {expected}" in err


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


@pytest.mark.parametrize("rel, expected", [
    ("depth/0003.npy", r"not a readable \.npy array \(truncated: its header declares float32 \(48, 64\), 12288 data "
                       r"bytes; the file holds \d+\)"),
    ("segmentation/0004.png", r"not a readable image \(truncated PNG"),
    ("images/0002.jpg", r"not a readable image \(truncated JPEG"),
    ("normals/0005.npy", r"not a readable \.npy array \(empty file\)"),
])
def test_corrupt_file_in_the_middle_of_a_split_is_named_before_ray(tmp_path, capsys, rel, expected):
    """prepare decodes the first and the last sample of each list; every other file's header is
    checked, so a truncated or empty one in the middle is named before a study starts."""
    root = tmp_path / "nyud"
    write_nyud(root, train=TRAIN_IDS, val=VAL_IDS, h=48, w=64)
    DATASETS.get("nyud").prepare(str(root))  # the intact tree passes
    path = root / rel
    if "empty" in expected:
        path.write_bytes(b"")
    else:
        _truncate(path)
    with pytest.raises(DataCheckError, match=re.escape(f"{path}: ") + expected):
        DATASETS.get("nyud").prepare(str(root))
    code, err = run_cli(capsys, "run", spec_yaml(tmp_path, f"dataset: {{name: nyud, root: {root}}}"),
                        "--storage", str(tmp_path / "runs"))
    assert code == 2 and len(err.splitlines()) == 1
    assert re.match(f"mtl run: dataset check failed: {re.escape(str(path))}: {expected}", err)

"""Experiment tracking without Ray: TensorBoard events of a run (tags, values, steps, resume), the
folder layout and the baseline links, config hashes that ignore where events go, the spec's
loggers and what they become, and the Optuna study a weight search records."""
import dataclasses
import logging
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from orchestrator import baselines as bl
from orchestrator.spec import LossWeightSearch, SpecError, load_spec
from orchestrator.tuning import dashboards, tracker_callbacks
from orchestrator.weight_search import WeightSpace, make_searcher, new_study_name, storage_url
from trainables import tracking
from trainables.config import TrialConfig
from trainables.plugins import Plugin
from trainables.session import Session
from trainables.train_loop import fit

SPEC = {"name": "s", "tasks": ["semseg", "depth"], "experiments": [{"name": "mtl_baseline"}]}


def tiny(tmp_path, **kw):
    base = dict(experiment="mtl_baseline", tasks=("semseg", "depth"), data_root=str(tmp_path / "data"),
                dataset=Plugin("synthetic", {"image_size": 32, "num_train": 16, "num_val": 8, "num_test": 8}),
                batch_size=8, eval_batch_size=8, epochs=2, max_steps_per_epoch=1, lr=1e-3)
    base.update(kw)
    return TrialConfig(**base)


def scalars(folder):
    acc = EventAccumulator(folder)
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}, acc.Tags()


@pytest.mark.parametrize("key, expected", [
    ("train/semseg/loss", "semseg/train_loss"),
    ("val/semseg/miou", "semseg/val_miou"),
    ("val/depth/loss", "depth/val_loss"),
    ("test/normals/mean_angle", "normals/test_mean_angle"),
    ("weight/depth", "depth/weight"),
    ("val_delta_m", "delta_m/val"),
    ("test_delta_m", "delta_m/test"),
    ("val_score", "score/val"),
    ("train/reg/0/mgm/d_loss", "reg/0/mgm/d_loss"),
    ("lr", "lr"),
    ("epoch_time_s", "epoch_time_s"),
    ("epoch", None),
    ("finished", None),
])
def test_report_keys_become_per_task_tags(key, expected):
    assert tracking.tag(key) == expected


def test_a_trained_run_writes_its_reports_as_per_task_scalars(tmp_path):
    cfg = tiny(tmp_path, events_dir=str(tmp_path / "tb" / "mtl_baseline"),
               balancer=Plugin("fixed", {"weights": {"semseg": 2.0, "depth": 0.5}}))
    session = Session(device=torch.device("cpu"))
    fit(cfg, session)
    folder = tmp_path / "tb" / "mtl_baseline" / "adam-lr0.001-poly-bs8-w2_0.5-seed0"
    assert tracking.run_dir(cfg) == str(folder) and len(os.listdir(folder)) == 1  # one event file
    got, tags = scalars(str(folder))
    first, last = session.reports
    # step = epochs done; every value is the report's (float32 in the event file)
    assert got["semseg/val_miou"] == [(1, pytest.approx(first["val/semseg/miou"])),
                                      (2, pytest.approx(last["val/semseg/miou"]))]
    assert got["depth/train_loss"] == [(1, pytest.approx(first["train/depth/loss"])),
                                       (2, pytest.approx(last["train/depth/loss"]))]
    assert got["depth/weight"] == [(1, 0.5), (2, 0.5)] and got["semseg/weight"] == [(1, 2.0), (2, 2.0)]
    assert got["lr"][0] == (1, pytest.approx(first["lr"]))
    assert got["semseg/test_miou"] == [(2, pytest.approx(last["test/semseg/miou"]))]  # the last epoch only
    assert [s for s, _ in got["score/val"]] == [1, 2] and [s for s, _ in got["epoch_time_s"]] == [1, 2]
    assert not {"epoch", "finished", "delta_m/val"} & set(got)  # no baseline given: no Delta_m
    assert "config/text_summary" in tags["tensors"]


def test_a_resumed_run_hides_what_the_crashed_process_wrote_past_its_checkpoint(tmp_path):
    folder = str(tmp_path / "run")
    crashed = tracking.EventWriter(folder)
    for step, value in [(1, 1.0), (2, 2.0), (3, 3.0)]:
        crashed.write({"val/depth/rmse": value}, step)
    crashed.close()
    resumed = tracking.EventWriter(folder, purge_step=2)  # the checkpoint held epoch 1
    for step, value in [(2, 20.0), (3, 30.0)]:
        resumed.write({"val/depth/rmse": value}, step)
    resumed.close()
    assert scalars(folder)[0]["depth/val_rmse"] == [(1, 1.0), (2, 20.0), (3, 30.0)]


def test_no_writer_off_rank_zero_without_a_folder_or_without_tensorboard(tmp_path, monkeypatch, caplog):
    cfg = tiny(tmp_path, events_dir=str(tmp_path / "tb"))
    assert tracking.open_events(tiny(tmp_path), 0, 0) is None  # events_dir None: off
    assert tracking.open_events(cfg, 1, 0) is None  # only rank 0 writes
    monkeypatch.setattr(tracking, "tensorboard_installed", lambda: False)
    tracking._warn_missing_tensorboard.cache_clear()
    with caplog.at_level(logging.WARNING, logger="trainables.tracking"):
        assert tracking.open_events(cfg, 0, 0) is None
        assert tracking.open_events(cfg, 0, 0) is None
    assert [r.getMessage() for r in caplog.records] == [
        "TensorBoard events are off: the tensorboard package is not installed "
        "(pip install -c constraints.txt -e '.[tensorboard]')"]  # one line per process
    assert not os.path.exists(tmp_path / "tb")


def test_run_and_experiment_folders():
    cfg = TrialConfig(experiment="x", tasks=("depth",), optimizer="sgd", lr=5e-2, scheduler="step", batch_size=4,
                      seed=3)
    assert tracking.run_name(cfg) == "sgd-lr0.05-step-bs4-seed3"
    weighted = dataclasses.replace(cfg, balancer=Plugin("fixed", {"weights": {"depth": 0.123456}}))
    assert tracking.run_name(weighted) == "sgd-lr0.05-step-bs4-w0.123-seed3"
    assert tracking.experiment_dir("/r", "single_task[resnet18+aspp]/depth") == "/r/single_task[resnet18+aspp]/depth"
    assert tracking.experiment_dir("/r", "../my model") == "/r/my-model"  # stays under the root


def test_where_events_go_changes_no_hash():
    """Golden values from the config before ``events_dir`` existed: results' hashes and the
    baseline cache keys of existing caches stay valid."""
    cfg = TrialConfig(experiment="single_task/depth", tasks=("depth",), lr=2e-4, batch_size=16, seed=1,
                      dataset=Plugin("synthetic", {"image_size": 32}))
    for c in (cfg, dataclasses.replace(cfg, events_dir="/anywhere/tensorboard")):
        assert c.config_hash() == "69be13a5c63defcb"
        assert c.config_hash(exclude=("seed",)) == "e391634b6e353d31"
        assert bl.cache_key(c) == "339456b4c8bd87b8"


def test_link_run_is_relative_idempotent_and_copies_where_links_fail(tmp_path, monkeypatch):
    source, other = tmp_path / "cache" / "a" / "run", tmp_path / "cache" / "b" / "run"
    for folder in (source, other):
        folder.mkdir(parents=True)
        (folder / "events.out.tfevents.1").write_text(folder.parent.name)
    target = tmp_path / "study" / "tensorboard" / "single_task" / "depth" / "run"
    tracking.link_run(str(source), str(target))
    assert os.readlink(target) == os.path.join("..", "..", "..", "..", "cache", "a", "run")
    tracking.link_run(str(source), str(target))  # again: kept
    tracking.link_run(str(other), str(target))  # another entry: re-pointed
    assert (target / "events.out.tfevents.1").read_text() == "b"
    copied = tmp_path / "copy" / "run"

    def refuse(*args, **kwargs):
        raise OSError("no symlinks on this file system")

    monkeypatch.setattr(os, "symlink", refuse)
    tracking.link_run(str(source), str(copied))
    assert not os.path.islink(copied) and (copied / "events.out.tfevents.1").read_text() == "a"


def test_baseline_events_in_the_cache_are_linked_into_the_study(tmp_path):
    cache, board = str(tmp_path / "_cache" / "baselines"), str(tmp_path / "study" / "tensorboard")
    trained = TrialConfig(experiment="single_task/depth", tasks=("depth",), seed=0)
    old = dataclasses.replace(trained, seed=1)  # cached before baselines wrote events
    entry = os.path.join(cache, bl.cache_key(trained), "tensorboard")
    run = tracking.run_dir(dataclasses.replace(trained, events_dir=entry))
    os.makedirs(run)
    results = [{"config": trained.to_dict()}, {"config": old.to_dict()}]
    assert bl.link_events(results, cache, board) == 1
    link = os.path.join(board, "single_task", "depth", "adam-lr0.0001-poly-bs8-seed0")
    assert os.path.islink(link) and os.path.samefile(link, run)


@pytest.mark.parametrize("loggers, message", [
    (["neptune"], r"loggers\[0\].name: unknown logger 'neptune'; valid: mlflow, wandb"),
    ([{"name": "mlflow", "params": {"uri": "x"}}], r"loggers\[0\].params: unknown parameter 'uri' of logger 'mlflow'; "
                                                   r"accepted: tracking_uri"),
    ([{"name": "mlflow", "params": {"tracking_uri": 5}}], r"loggers\[0\].params.tracking_uri: 5 must be a string"),
    (["mlflow", "mlflow"], r"loggers\[1\]: logger 'mlflow' is listed twice"),
])
def test_bad_loggers_are_refused_with_the_fix(loggers, message):
    with pytest.raises(SpecError, match=message):
        load_spec({**SPEC, "loggers": loggers})


def test_a_logger_whose_package_is_missing_names_its_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "wandb" else real(name, *args))
    with pytest.raises(SpecError, match=r"loggers\[0\]: logger 'wandb' needs the wandb package, which is not "
                                        r"installed; pip install -c constraints.txt -e '\.\[wandb\]'"):
        load_spec({**SPEC, "loggers": ["wandb"]})


def test_mlflow_logger_becomes_tunes_callback_per_experiment(tmp_path):
    spec = load_spec({**SPEC, "loggers": ["mlflow"]})
    study_dir = str(tmp_path / "s")
    (callback,) = tracker_callbacks(spec.loggers, study_dir, "mtl_baseline")
    assert type(callback).__name__ == "MLflowLoggerCallback"
    assert callback.experiment_name == "s/mtl_baseline"
    assert callback.tracking_uri == f"sqlite:///{study_dir}/mlflow.db"
    remote = load_spec({**SPEC, "loggers": [{"name": "mlflow", "params": {"tracking_uri": "http://host:5000"}}]})
    assert tracker_callbacks(remote.loggers, study_dir, "x")[0].tracking_uri == "http://host:5000"
    assert dashboards(study_dir, spec.loggers, weight_search=True) == [
        f"TensorBoard: tensorboard --logdir {study_dir}/tensorboard",
        f"MLflow: experiments s/<experiment> at sqlite:///{study_dir}/mlflow.db",
        f"Optuna: optuna-dashboard sqlite:///{study_dir}/optuna.db"]


def test_weight_search_records_a_new_optuna_study_per_run(tmp_path):
    import optuna

    url = storage_url(str(tmp_path))
    for _ in range(2):  # two runs of the study
        make_searcher(["semseg", "depth"], [{"lr": 1e-3}], LossWeightSearch(), Plugin("fixed"), "val_score", "max",
                      url=url, name="s/fixed_tpe")
    storage = optuna.storages.RDBStorage(url)
    assert sorted(s.study_name for s in storage.get_all_studies()) == ["s/fixed_tpe", "s/fixed_tpe #2"]
    assert new_study_name(storage, "s/fixed_tpe") == "s/fixed_tpe #3"
    assert new_study_name(storage, "s/other") == "s/other"
    # each trial carries the resolved weights and setting, not only Optuna's raw draws
    study = optuna.load_study(study_name="s/fixed_tpe", storage=storage)
    trial = study.ask()
    config = WeightSpace(["semseg", "depth"], [{"lr": 1e-3}], LossWeightSearch(), Plugin("fixed"))(trial)
    assert trial.user_attrs == {"weights": config["balancer"]["params"]["weights"], "setting": {"lr": 1e-3}}

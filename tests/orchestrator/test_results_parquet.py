"""The results Parquet as pandas users and later runs see it: flat metric and hyper-parameter
columns, rows that round-trip, files of the old schema, provenance, relative checkpoint paths."""
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
from datetime import datetime

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import results
from orchestrator.results import read_provenance, read_rows, write_provenance, write_rows
from trainables.config import TrialConfig


def config(tasks=("semseg", "depth"), **kw) -> TrialConfig:
    single = len(tasks) == 1
    return TrialConfig(experiment=f"single_task/{tasks[0]}" if single else "mtl", tasks=tuple(tasks),
                       model={"architecture": "single_task" if single else "mtl_baseline"},
                       dataset={"name": "synthetic", "params": {"image_size": 32}}, **kw)


def row(cfg: TrialConfig, val, test, checkpoint="", **kw):
    return {**dict(study="s", run_id="r", experiment=cfg.experiment, role="single_task" if len(cfg.tasks) == 1
                else "multi_task", architecture=cfg.model.architecture.name, balancer=cfg.balancer.name,
                tasks=list(cfg.tasks), trial_id="t", config_json=json.dumps(cfg.to_dict(), sort_keys=True),
                config_hash=cfg.config_hash(), setting_hash=cfg.config_hash(exclude=("seed",)), seed=cfg.seed,
                val_metrics=val, test_metrics=test, val_delta_m=None, test_delta_m=None, delta_baseline="single-task",
                params=1000, flops_g=0.5, wall_time_s=3.0, epochs_done=2, status="completed", error="",
                selected=False, cached=False, checkpoint_path=checkpoint), **kw}


MTL = config(optimizer="sgd", lr=0.01, batch_size=4, scheduler="step", weight_decay=0.0, epochs=3, seed=2,
             balancer={"name": "fixed", "params": {"weights": {"semseg": 1.0, "depth": 2.0}}},
             regularisers=({"name": "consistency", "params": {}},))
SINGLE = config(("semseg",), lr=1e-4)


def two_rows():
    return [row(SINGLE, {"semseg/miou": 40.0}, {"semseg/miou": 41.0}, selected=True),
            row(MTL, {"semseg/miou": 38.5, "depth/rmse": float("nan")}, {"semseg/miou": 39.0, "depth/rmse": 0.75})]


def test_pandas_reads_flat_numeric_metric_and_hyperparameter_columns(tmp_path):
    path = write_rows(two_rows(), str(tmp_path / "results.parquet"))
    df = pd.read_parquet(path)
    metric_columns = ["val/depth/rmse", "val/semseg/miou", "test/depth/rmse", "test/semseg/miou"]
    assert list(df.columns) == results.SCHEMA.names + metric_columns
    assert "val_metrics" not in df and "test_metrics" not in df
    for name in metric_columns + ["lr", "weight_decay"]:
        assert df[name].dtype == "float64", name
    for name in ("batch_size", "epochs", "seed"):
        assert df[name].dtype == "int64", name
    assert df["test/semseg/miou"].tolist() == [41.0, 39.0] and df["test/depth/rmse"].iloc[1] == 0.75
    # the single-task row has no depth metric: null; the multi-task row diverged on depth: NaN, kept
    assert pq.read_table(path).column("val/depth/rmse").to_pylist()[0] is None
    assert math.isnan(pq.read_table(path).column("val/depth/rmse").to_pylist()[1])
    assert df["optimizer"].tolist() == ["adam", "sgd"] and df["scheduler"].tolist() == ["poly", "step"]
    assert df["lr"].tolist() == [1e-4, 0.01] and df["batch_size"].tolist() == [8, 4]
    assert df["weight_decay"].tolist() == [1e-4, 0.0] and df["epochs"].tolist() == [10, 3]
    assert df["seed"].tolist() == [0, 2]
    assert df["backbone"].tolist() == ["tiny_cnn", "tiny_cnn"] and df["head"].tolist() == ["conv", "conv"]
    assert json.loads(df["balancer_params"].iloc[1]) == {"weights": {"semseg": 1.0, "depth": 2.0}}
    assert json.loads(df["architecture_params"].iloc[0]) == {}
    assert json.loads(df["regularisers"].iloc[1]) == [{"name": "consistency", "params": {}}]
    assert json.loads(df["regularisers"].iloc[0]) == []
    # the usual pandas questions work without unpacking anything
    assert df.loc[df["optimizer"] == "sgd", "test/semseg/miou"].mean() == 39.0


def test_rows_round_trip_and_a_read_row_can_be_written_again(tmp_path):
    rows = two_rows()
    back = read_rows(write_rows(rows, str(tmp_path / "results.parquet")))
    for written, read in zip(rows, back):
        for name, value in written.items():
            if name != "val_metrics":
                assert read[name] == value, name
        # only the metrics a row has; a NaN stays a NaN
        assert set(read["val_metrics"]) == set(written["val_metrics"])
        for key, value in written["val_metrics"].items():
            assert read["val_metrics"][key] == value or (math.isnan(value) and math.isnan(read["val_metrics"][key]))
    assert back[1]["lr"] == 0.01 and back[1]["optimizer"] == "sgd" and back[1]["batch_size"] == 4
    assert json.loads(back[1]["balancer_params"]) == {"weights": {"semseg": 1.0, "depth": 2.0}}
    again = write_rows(back, str(tmp_path / "again.parquet"))
    first = pq.read_table(str(tmp_path / "results.parquet"))
    assert pq.read_table(again).schema.equals(first.schema)
    assert repr(pq.read_table(again).to_pylist()) == repr(first.to_pylist())  # repr: a NaN equals a NaN


def test_hyperparameter_columns_follow_the_config(tmp_path):
    bad = {**two_rows()[0], "lr": 0.5}  # the config says 1e-4
    with pytest.raises(ValueError, match=r"lr=0.5 but its config_json gives 0.0001"):
        write_rows([bad], str(tmp_path / "x.parquet"))
    partial = {"study": "s", "config_json": json.dumps({"dataset": {"name": "synthetic", "params": {}}})}
    (read,) = read_rows(write_rows([partial], str(tmp_path / "partial.parquet")))
    assert all(read[name] is None for name in results.HYPERPARAMETERS)


def old_schema_file(path, checkpoint):
    """A file as the store wrote it before the flat columns: metric maps, no hyper-parameter
    columns, no derivation_json, an absolute checkpoint path, no provenance."""
    metrics = pa.map_(pa.string(), pa.float64())
    names = ["study", "run_id", "experiment", "role", "architecture", "balancer", "tasks", "trial_id", "config_json",
             "config_hash", "setting_hash", "seed", "val_metrics", "test_metrics", "val_delta_m", "test_delta_m",
             "delta_baseline", "params", "flops_g", "wall_time_s", "epochs_done", "status", "error", "selected",
             "cached", "checkpoint_path"]
    fields = [pa.field(name, metrics if name.endswith("_metrics") else results.SCHEMA.field(name).type)
              for name in names]
    old = row(MTL, {}, {}, checkpoint)
    cells = {name: old[name] for name in names}
    cells["val_metrics"] = [("depth/rmse", 0.8), ("semseg/miou", 38.5)]
    cells["test_metrics"] = []
    pq.write_table(pa.Table.from_pylist([cells], schema=pa.schema(fields)), path)
    return path


def test_a_file_of_the_old_schema_is_still_read(tmp_path):
    path = old_schema_file(str(tmp_path / "results.parquet"), "/somewhere/else/checkpoint_000002")
    (read,) = read_rows(path)
    assert read["val_metrics"] == {"depth/rmse": 0.8, "semseg/miou": 38.5} and read["test_metrics"] == {}
    assert read["optimizer"] == "sgd" and read["lr"] == 0.01 and read["regularisers"] == '[{"name": "consistency", "params": {}}]'
    assert read["checkpoint_path"] == "/somewhere/else/checkpoint_000002"
    assert read["derivation_json"] is None and read["experiment"] == "mtl"
    assert read_provenance(path) is None


def test_provenance_in_the_file_metadata_and_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "PACKAGES", results.PACKAGES + ("no-such-package-for-mtl",))
    path = write_rows(two_rows(), str(tmp_path / "results.parquet"))
    info = read_provenance(path)
    assert json.loads(pq.read_schema(path).metadata[b"mtl.provenance"]) == info
    assert info["python"] == platform.python_version() and info["platform"] == platform.platform()
    assert info["packages"]["pyarrow"] == pa.__version__ and "torch" in info["packages"]
    assert "no-such-package-for-mtl" not in info["packages"]  # missing: absent
    assert info["command"] == shlex.join(sys.argv) and datetime.fromisoformat(info["time"]).tzinfo is not None
    if os.path.exists(os.path.join(results.PROJECT_ROOT, ".git")):
        head = subprocess.run(["git", "-C", results.PROJECT_ROOT, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        assert info["git"]["commit"] == head and isinstance(info["git"]["dirty"], bool)
    else:
        assert "git" not in info
    assert results._git_state(str(tmp_path)) is None  # not a checkout: no git entry

    run_dir = tmp_path / "study" / "results" / "run1"
    written = write_provenance(str(run_dir))
    assert written == str(run_dir / "provenance.json") and os.listdir(run_dir) == ["provenance.json"]
    with open(written) as fh:
        saved = json.load(fh)
    assert {k: v for k, v in saved.items() if k != "time"} == {k: v for k, v in info.items() if k != "time"}


def test_checkpoint_paths_are_relative_under_the_storage_root_and_survive_a_move(tmp_path):
    storage = tmp_path / "storage"
    trial = storage / "s" / "tune" / "mtl" / "trial_0" / "checkpoint_000002"
    baseline = storage / "_cache" / "baselines" / "0123abcd"
    for folder in (trial, baseline):
        folder.mkdir(parents=True)
    elsewhere, bucket = "/mnt/other-disk/checkpoint", "s3://bucket/study/checkpoint"
    rows = [row(MTL, {}, {}, str(trial)), row(SINGLE, {}, {}, str(baseline)),
            row(SINGLE, {}, {}, elsewhere), row(SINGLE, {}, {}, bucket), row(SINGLE, {}, {}, "")]
    study_file = write_rows(rows, str(storage / "s" / "results.parquet"))
    run_file = write_rows(rows, str(storage / "s" / "results" / "run1" / "mtl.parquet"))
    assert rows[0]["checkpoint_path"] == str(trial)  # the caller's rows are left as they were
    def stored(path):
        return pq.read_table(path).column("checkpoint_path").to_pylist()

    assert stored(study_file) == ["tune/mtl/trial_0/checkpoint_000002", "../_cache/baselines/0123abcd",
                                  elsewhere, bucket, ""]
    assert stored(run_file)[:2] == ["../../tune/mtl/trial_0/checkpoint_000002",
                                    "../../../_cache/baselines/0123abcd"]
    expected = [str(trial), str(baseline), elsewhere, bucket, ""]
    assert [r["checkpoint_path"] for r in read_rows(study_file)] == expected
    assert [r["checkpoint_path"] for r in read_rows(run_file)] == expected

    # the whole storage folder moved (copied to another machine): everything follows it
    moved = tmp_path / "moved"
    shutil.move(str(storage), str(moved))
    for path in (moved / "s" / "results.parquet", moved / "s" / "results" / "run1" / "mtl.parquet"):
        got = [r["checkpoint_path"] for r in read_rows(str(path))]
        assert got == [str(moved / "s" / "tune" / "mtl" / "trial_0" / "checkpoint_000002"),
                       str(moved / "_cache" / "baselines" / "0123abcd"), elsewhere, bucket, ""]
        assert os.path.isdir(got[0]) and os.path.isdir(got[1])

    # the study folder alone moved out of its storage: its own checkpoints follow it, the
    # single-task ones are found where the study was written (the cache stayed there)
    away = tmp_path / "elsewhere" / "s"
    shutil.move(str(moved / "s"), str(away))
    shutil.move(str(moved), str(storage))  # the storage back where the files were written
    got = [r["checkpoint_path"] for r in read_rows(str(away / "results.parquet"))]
    assert got[:2] == [str(away / "tune" / "mtl" / "trial_0" / "checkpoint_000002"), str(baseline)]
    assert os.path.isdir(got[0]) and os.path.isdir(got[1])

"""Run folders without Ray: unique run ids, status markers (a killed driver reads as interrupted),
``mtl report`` reading finished runs only, ``mtl status``, the baseline cache lock across two
processes, Ctrl-C then ``mtl resume`` through the study loop with Tune replaced by a fake, and
a Ctrl-C caught by (a stand-in for) Tune's own SIGINT handler."""
from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

import orchestrator.plots as plots
import orchestrator.study as study
import orchestrator.tuning as tuning
from orchestrator import runs
from orchestrator.baselines import train_once
from orchestrator.cli import main
from orchestrator.report import load_rows
from orchestrator.results import write_rows
from orchestrator.tuning import ExperimentInterrupted
from tests.orchestrator.test_faults import result, spec_yaml
from tests.orchestrator.test_report_formats import results_rows


def read_marker(run_dir) -> dict:
    with open(os.path.join(run_dir, runs.STATUS_FILE)) as fh:
        return json.load(fh)


def test_two_runs_in_one_second_get_two_folders(tmp_path):
    now = datetime.datetime(2026, 1, 2, 3, 4, 5)
    ids = [runs.create_run_dir(str(tmp_path), now)[0] for _ in range(20)]
    assert len(set(ids)) == 20
    assert all(re.fullmatch(r"20260102-030405-[0-9a-f]{4}", i) for i in ids)
    assert sorted(os.listdir(tmp_path)) == sorted(ids)


def test_marker_follows_the_run(tmp_path):
    tracker = runs.RunStatus(str(tmp_path), total=3)
    tracker.write(runs.RUNNING)
    first = read_marker(tmp_path)
    assert first["status"] == "running" and first["ended"] is None and first["pid"] == os.getpid()
    tracker.experiment_started("mtl/a")
    assert read_marker(tmp_path)["experiment_running"] == "mtl/a"
    tracker.experiment_done("mtl/a")
    tracker.experiment_done("mtl/a")  # once only
    tracker.write(runs.FINISHED)
    last = read_marker(tmp_path)
    assert last["experiments_done"] == ["mtl/a"] and last["experiments_total"] == 3
    assert last["status"] == "finished" and last["ended"] and last["experiment_running"] is None
    assert not [f for f in os.listdir(tmp_path) if f != runs.STATUS_FILE]  # no temporary file left


def test_a_killed_driver_reads_as_interrupted(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now (reuse within the test is vanishingly unlikely)
    results_dir = tmp_path / "results"
    _, alive_dir = runs.create_run_dir(str(results_dir), datetime.datetime(2026, 1, 1))
    runs.RunStatus(alive_dir, total=2).write(runs.RUNNING)  # this process: alive
    assert runs.read_status(alive_dir)["status"] == "running"
    assert runs.latest_unfinished(str(results_dir)) is None and not runs.is_finished(alive_dir)
    _, killed_dir = runs.create_run_dir(str(results_dir), datetime.datetime(2026, 1, 2))
    runs.RunStatus(killed_dir, total=2).write(runs.RUNNING)
    marker = read_marker(killed_dir)
    runs.write_json_durable(os.path.join(killed_dir, runs.STATUS_FILE), {**marker, "pid": dead.pid})
    assert runs.read_status(killed_dir)["status"] == "interrupted" and runs.read_status(killed_dir)["killed"]
    assert runs.latest_unfinished(str(results_dir)) == killed_dir
    other_host = {**marker, "pid": dead.pid, "host": "another-node"}  # its pid cannot be checked from here
    runs.write_json_durable(os.path.join(killed_dir, runs.STATUS_FILE), other_host)
    assert runs.read_status(killed_dir)["status"] == "running"


def test_report_reads_finished_runs_unless_all_runs(tmp_path):
    results_dir = tmp_path / "s" / "results"
    rows = results_rows("s")
    folders = {}
    for name, status in (("20260101-000000-aaaa", runs.FINISHED), ("20260102-000000-bbbb", runs.INTERRUPTED),
                         ("20250101-000000", None)):  # a run from before markers: read
        folders[name] = results_dir / name
        write_rows(rows, str(folders[name] / "mtl.parquet"))
        if status:
            runs.RunStatus(str(folders[name]), total=1).write(status)
    got, skipped = load_rows(str(results_dir))
    assert len(got) == 2 * len(rows)
    assert skipped == ["1 run(s) that did not finish (20260102-000000-bbbb): finished runs only by default "
                       "(--all-runs reads them too)"]
    got, skipped = load_rows(str(results_dir), all_runs=True)
    assert len(got) == 3 * len(rows) and skipped == []
    write_rows(rows, str(tmp_path / "s" / "results.parquet"))  # the study folder: its last finished run
    assert len(load_rows(str(tmp_path / "s"))[0]) == len(rows)
    assert len(load_rows(str(tmp_path / "s"), all_runs=True)[0]) == 3 * len(rows)


def slow_training(marker_dir: str, barrier, answers) -> None:
    barrier.wait()  # both processes ask for the entry at the same moment
    answers.put(train_once(os.path.join(marker_dir, "entry"), lambda: trained(marker_dir)))


def trained(marker_dir: str) -> dict:
    with open(os.path.join(marker_dir, f"trained-{os.getpid()}"), "w"):
        pass
    time.sleep(0.5)  # long enough for the other process to find no result and wait on the lock
    return {"status": "completed", "metrics": {"val_score": 1.0}, "config": {}}


def test_two_processes_train_a_cache_entry_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    answers = ctx.Queue()
    workers = [ctx.Process(target=slow_training, args=(str(tmp_path), barrier, answers)) for _ in range(2)]
    for w in workers:
        w.start()
    got = [answers.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert len([f for f in os.listdir(tmp_path) if f.startswith("trained-")]) == 1
    assert sorted(r["cached"] for r in got) == [False, True]
    assert all(r["metrics"] == {"val_score": 1.0} for r in got)
    with open(tmp_path / "entry" / "result.json") as fh:
        assert json.load(fh)["status"] == "completed"


# ------------------------------------------------------------ Ctrl-C and mtl resume, Tune faked
TWO = "experiments: [{name: m, architecture: mtl_baseline, balancer: fixed}, {name: n, architecture: mtl_baseline, " \
      "balancer: dwa}]\ntrain: {epochs: 1, seeds: [0, 1]}\n"


def fake_study(monkeypatch, calls):
    """The study loop without Ray: cached-looking baselines, and a Tune whose experiment 'n' is
    interrupted after its seed 0 ended unless it is resumed."""
    monkeypatch.setattr(study, "Cluster", lambda p: SimpleNamespace(resources={"CPU": 2.0}, actors=1, actor_options={}))
    monkeypatch.setattr(study, "complexity", lambda cfg: (1000, 0.5))
    monkeypatch.setattr(plots, "render_plots", lambda *args: [])

    def baselines(p, cluster):
        out = {}
        for exp in p.single:
            for cfg in exp.trial_configs():
                r = result(cfg.tasks[0], cfg.lr, cfg.seed, 50.0)
                out.setdefault(exp.name, []).append({**r, "config": cfg.to_dict(), "wall_time_s": 1.0})
        return out

    def run_experiment(exp, *args, resume=False, **kwargs):
        calls.append((exp.name, resume))
        outcomes = [{"config": cfg.to_dict(), "status": "completed", "wall_time_s": 2.0, "trial_id": f"t{cfg.seed}",
                     "metrics": {"finished": True, "epoch": 0, "val/semseg/miou": 55.0 + cfg.seed,
                                 "test/semseg/miou": 54.0, "val/depth/rmse": 0.5, "test/depth/rmse": 0.6}}
                    for cfg in exp.trial_configs()]
        if exp.name == "n" and not resume:
            raise ExperimentInterrupted(outcomes[:1])
        return outcomes

    monkeypatch.setattr(study, "baselines", baselines)
    monkeypatch.setattr(study, "run_experiment", run_experiment)


def test_ctrl_c_keeps_finished_trials_and_resume_completes_the_run(tmp_path, monkeypatch, capsys):
    calls = []
    fake_study(monkeypatch, calls)
    storage = str(tmp_path / "runs")
    assert main(["run", spec_yaml(tmp_path, TWO), "--storage", storage]) == 130
    err = capsys.readouterr().err
    assert f"continue with: mtl resume probe --storage {storage}" in err
    (run_dir,) = runs.run_dirs(os.path.join(storage, "probe", "results"))
    marker = read_marker(run_dir)
    assert marker["status"] == "interrupted" and marker["experiment_running"] == "n"
    assert marker["experiments_done"] == ["single_task/semseg", "single_task/depth", "m"]
    assert marker["experiments_total"] == 4
    assert not os.path.exists(os.path.join(storage, "probe", "results.parquet"))  # a partial run writes none
    assert pq.read_table(os.path.join(run_dir, "n.parquet")).num_rows == 1  # seed 0 ended before Ctrl-C
    m_bytes = open(os.path.join(run_dir, "m.parquet"), "rb").read()

    assert main(["status", "probe", "--storage", storage]) == 0
    status = capsys.readouterr().out
    assert "interrupted" in status and "experiments done: 3 / 4" in status
    assert "trials: 7 completed, 0 not completed" in status  # 2 + 2 baselines, 2 of m, 1 of n

    assert main(["report", os.path.join(storage, "probe", "results")]) == 2  # nothing finished yet
    assert "finished runs only by default" in capsys.readouterr().err

    assert main(["resume", "probe", "--storage", storage]) == 0
    assert calls == [("m", False), ("n", False), ("n", True)]  # m is not run again
    assert runs.run_dirs(os.path.join(storage, "probe", "results")) == [run_dir]
    assert read_marker(run_dir)["status"] == "finished"
    assert open(os.path.join(run_dir, "m.parquet"), "rb").read() == m_bytes
    rows = pq.read_table(os.path.join(storage, "probe", "results.parquet")).to_pylist()
    assert len(rows) == 8  # 2 seeds x (2 single-task baselines + m + n)
    keys = [(r["experiment"], r["config_hash"], r["seed"]) for r in rows]
    assert len(set(keys)) == len(keys)
    assert sum(r["experiment"] == "n" for r in rows) == 2


def test_resume_without_an_unfinished_run_says_so(tmp_path, capsys):
    assert main(["resume", "nothing", "--storage", str(tmp_path)]) == 2
    assert "no interrupted or killed run to resume" in capsys.readouterr().err


class FakeTuner:
    """``Tuner.fit`` as Tune 2.60 handles SIGINT: its own handler over the caller's, put back only
    when a SIGINT arrives; ``ctrl_c`` sends one during the fit."""

    def __init__(self, ctrl_c: bool):
        self.ctrl_c = ctrl_c

    def fit(self):
        original = signal.getsignal(signal.SIGINT)
        caught = []

        def tune_handler(signum, frame):
            caught.append(signum)
            signal.signal(signal.SIGINT, original)

        signal.signal(signal.SIGINT, tune_handler)
        if self.ctrl_c:
            os.kill(os.getpid(), signal.SIGINT)
        done = SimpleNamespace(metrics={"finished": True, "val_score": 1.0}, config={"seed": 0}, error=None)
        cut_short = SimpleNamespace(metrics={}, config={}, error=None)  # Tune stopped it: no report yet
        return [done, cut_short] if self.ctrl_c else [done, done]


def test_a_ctrl_c_caught_by_tune_stops_the_experiment_with_its_ended_trials():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(ExperimentInterrupted) as stop:
        tuning._fit(FakeTuner(ctrl_c=True))
    assert [o["status"] for o in stop.value.outcomes] == ["completed"]
    assert signal.getsignal(signal.SIGINT) is before
    assert [o["status"] for o in tuning._fit(FakeTuner(ctrl_c=False))] == ["completed", "completed"]
    assert signal.getsignal(signal.SIGINT) is before  # Tune's handler is not left behind

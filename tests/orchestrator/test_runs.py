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
      "balancer: dwa}]\ntrain: {epochs: 1, seeds: [0, 1]}\n" \
      "search: {batch_sizes: [4], schedulers: [poly], optimizers: [adam], lrs: [0.0001], asha: true}\n"  # a run each


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

    def run_experiments(exps, *args, resume=False, **kwargs):
        names = [e.name for e in exps]
        calls.append((names[0] if len(names) == 1 else tuple(names), resume))
        outcomes = [{"config": cfg.to_dict(), "status": "completed", "wall_time_s": 2.0, "trial_id": f"t{cfg.seed}",
                     "metrics": {"finished": True, "epoch": 0, "val/semseg/miou": 55.0 + cfg.seed,
                                 "test/semseg/miou": 54.0, "val/depth/rmse": 0.5, "test/depth/rmse": 0.6}}
                    for exp in exps for cfg in exp.trial_configs()]
        if "n" in names and not resume:
            raise ExperimentInterrupted(outcomes[:1])
        return outcomes

    monkeypatch.setattr(study, "baselines", baselines)
    monkeypatch.setattr(study, "run_experiments", run_experiments)


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


def test_experiments_without_asha_share_one_tune_run_and_resume_as_one(tmp_path, monkeypatch, capsys):
    """Without ASHA both experiments are trials of one Tune run (longest first); a Ctrl-C in it
    keeps the trial that ended (in its experiment's file, neither experiment done) and the resume
    continues that same run: every trial once."""
    calls = []
    fake_study(monkeypatch, calls)
    storage = str(tmp_path / "runs")
    assert main(["run", spec_yaml(tmp_path, TWO.replace("asha: true", "asha: false")), "--storage", storage]) == 130
    (run_dir,) = runs.run_dirs(os.path.join(storage, "probe", "results"))
    marker = read_marker(run_dir)
    assert marker["experiment_running"] == "batch_m_and_1_more"  # the Tune run's folder name
    assert marker["experiments_done"] == ["single_task/semseg", "single_task/depth"]
    assert pq.read_table(os.path.join(run_dir, "m.parquet")).num_rows == 1  # m's seed 0 ended before Ctrl-C
    assert pq.read_table(os.path.join(run_dir, "n.parquet")).num_rows == 0
    assert "experiments 1-2/2 (m, n, longest first): 4 trial(s) through one Ray Tune run" in capsys.readouterr().out

    assert main(["resume", "probe", "--storage", storage]) == 0
    assert calls == [(("m", "n"), False), (("m", "n"), True)]
    rows = pq.read_table(os.path.join(storage, "probe", "results.parquet")).to_pylist()
    assert [r["experiment"] for r in rows if r["role"] == "multi_task"] == ["m", "m", "n", "n"]  # the spec's order
    keys = [(r["experiment"], r["config_hash"], r["seed"]) for r in rows]
    assert len(rows) == 8 and len(set(keys)) == len(keys)


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


# ------------------------------------------------------------ a killed driver's Ray processes
def session_folder(tmp_path) -> str:
    """A stand-in for a Ray session folder (Ray names them session_<date>_<time>_<us>_<driver pid>)."""
    folder = tmp_path / "session_2026-01-01_00-00-00_000000_4242"
    (folder / "logs").mkdir(parents=True)
    return str(folder)


def started(argv, env=None) -> subprocess.Popen:
    """A process that prints a line once it is ready (its handlers set, its files open), then sleeps."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    return proc


SLEEP = "import signal, sys, time\n{setup}\nprint('ready', flush=True)\ntime.sleep(60)"


def test_reap_orphans_stops_only_live_processes_of_the_killed_runs_ray_session(tmp_path, monkeypatch):
    session = session_folder(tmp_path)
    unrelated = subprocess.Popen(["sleep", "60"])  # alive, but nothing of the session: never signalled
    named = started([sys.executable, "-c", SLEEP.format(setup=""), f"{session}/logs"])  # like gcs_server's --log_dir
    # like ray::DashboardAgent: a command line without the session, its log file under it held open
    agent = started([sys.executable, "-c", SLEEP.format(setup="import os; log = open(os.environ['LOG'], 'a')")],
                    env={**os.environ, "LOG": os.path.join(session, "logs", "dashboard_agent.log")})
    stubborn = started([sys.executable, "-c", SLEEP.format(setup="signal.signal(signal.SIGTERM, signal.SIG_IGN)"),
                        session])  # ignores SIGTERM: SIGKILL after the wait
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    procs = [unrelated, named, agent, stubborn]
    try:
        monkeypatch.setattr(runs, "local_ray_processes",
                            lambda: {"session_dir": session, "pids": [p.pid for p in procs] + [dead.pid]})
        runs.RunStatus(str(tmp_path), total=2).write(runs.RUNNING)
        assert runs.reap_orphans(runs.read_status(str(tmp_path))) == []  # this process wrote it: alive, not killed
        runs.write_json_durable(os.path.join(tmp_path, runs.STATUS_FILE), {**read_marker(tmp_path), "pid": dead.pid})
        marker = runs.read_status(str(tmp_path))
        assert marker["killed"] and marker["ray_session_dir"] == session
        assert marker["ray_pids"] == [p.pid for p in procs] + [dead.pid]
        assert runs.reap_orphans({**marker, "ray_session_dir": None}) == []  # joined a cluster: nothing recorded

        t0 = time.time()
        stopped = runs.reap_orphans(marker, wait_s=1.0)
        assert [pid for pid, _ in stopped] == sorted([named.pid, agent.pid, stubborn.pid])
        assert dict(stopped)[named.pid].startswith(f"{sys.executable} -c import")  # its command line, cut short
        assert named.wait(5) == -signal.SIGTERM and agent.wait(5) == -signal.SIGTERM
        assert stubborn.wait(5) == -signal.SIGKILL
        assert 1.0 <= time.time() - t0 < 4.0  # one wait for the SIGTERMs, none once the SIGKILLed one is gone
        assert unrelated.poll() is None
        assert runs.reap_orphans(marker) == []  # nothing of the session is left
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_recycled_pid_is_not_a_process_of_the_session(tmp_path):
    """The recorded pid now belongs to a process outside the session (what a recycled pid looks
    like): alive, yet neither its command line nor its open files name the folder."""
    session = session_folder(tmp_path)
    other = started([sys.executable, "-c", SLEEP.format(setup=""), f"{session}-other/logs"])  # a prefix, not the folder
    try:
        assert runs.reap_orphans({"killed": True, "ray_session_dir": session, "ray_pids": [other.pid]}) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_local_ray_processes_are_the_started_ones_and_their_descendants(tmp_path, monkeypatch):
    """Ray's node object faked: the processes it started (here a shell) and everything below them
    (the shell's ``sleep``, as the raylet's agents); none for a joined cluster or before Ray starts."""
    from orchestrator.ray_env import local_ray_processes

    shell = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    child = int(shell.stdout.readline())  # the shell's sleep, forked by now
    try:
        node = SimpleNamespace(all_processes={"raylet": [SimpleNamespace(process=shell)]},
                               get_session_dir_path=lambda: str(tmp_path))
        fake_ray = SimpleNamespace(_private=SimpleNamespace(worker=SimpleNamespace(_global_node=node)))
        monkeypatch.setitem(sys.modules, "ray", fake_ray)
        assert local_ray_processes() == {"session_dir": os.path.realpath(tmp_path),
                                         "pids": sorted([shell.pid, child])}
        node.all_processes = {}  # ray.init(address=...): connected, nothing started
        assert local_ray_processes() is None
        fake_ray._private.worker._global_node = None  # not started, or shut down
        assert local_ray_processes() is None
    finally:
        os.kill(child, signal.SIGKILL)
        shell.wait()


def test_mtl_resume_stops_what_the_killed_run_left_and_says_so(tmp_path, monkeypatch, capsys):
    """A run whose driver died (its marker ``running``, its pid gone) with a process of its Ray
    session still up: ``mtl resume`` stops that process before it goes on, and logs it."""
    fake_study(monkeypatch, [])
    storage = str(tmp_path / "runs")
    assert main(["run", spec_yaml(tmp_path, TWO), "--storage", storage]) == 130
    (run_dir,) = runs.run_dirs(os.path.join(storage, "probe", "results"))
    session = session_folder(tmp_path)
    left = started([sys.executable, "-c", SLEEP.format(setup=""), f"{session}/logs"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        runs.write_json_durable(os.path.join(run_dir, runs.STATUS_FILE), {
            **read_marker(run_dir), "status": runs.RUNNING, "pid": dead.pid, "ray_session_dir": session,
            "ray_pids": [left.pid]})
        capsys.readouterr()
        assert main(["resume", "probe", "--storage", storage]) == 0
        out = capsys.readouterr().out
        assert (f"stopped 1 Ray process(es) left by the killed run {os.path.basename(run_dir)}: {left.pid} "
                f"{sys.executable} -c") in out
        assert left.wait(5) == -signal.SIGTERM
        assert read_marker(run_dir)["status"] == "finished" and read_marker(run_dir)["ray_session_dir"] is None
    finally:
        left.kill()
        left.wait()

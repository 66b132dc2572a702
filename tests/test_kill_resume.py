"""SIGKILL of the ``mtl run`` driver mid-study (a crash, the OOM killer), then ``mtl resume``.

A killed driver cannot mark its run: its ``running`` marker, whose pid is gone, reads as
interrupted (killed). Most of its local Ray dies with it (gcs_server, raylet, dashboard and the
monitors get the kernel's parent-death signal), but the raylet's dashboard and runtime-env agents
are adopted by init and stay up for about a minute. ``mtl resume`` stops them, from the pids the
marker recorded, and finishes the run in its folder: every trial once, the finished experiment's
file untouched. Each command starts (and ends) its own local Ray: no shared ``ray_session``.
"""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from orchestrator import runs
from orchestrator.plan import expand, smoke, validate
from orchestrator.results import read_rows
from orchestrator.spec import load_spec
from tests.test_end_to_end import SPEC

pytestmark = pytest.mark.ray


def session_processes(session: str) -> dict:
    """{pid: command} of every process on this host that belongs to the Ray session folder ``session``."""
    return {pid: runs._command(pid) for pid in runs.session_pids(session)}


def test_sigkill_mid_study_then_mtl_resume_stops_its_ray_and_finishes_the_run(tmp_path):
    # ASHA on (SPEC's search): a Tune run per experiment, so one ends before the other starts
    data = {**SPEC, "name": "e2e_kill", "dataset": {**SPEC["dataset"], "root": str(tmp_path / "data")},
            "experiments": [{"name": "first", "architecture": "mtl_baseline", "balancer": "fixed"},
                            {"name": "second", "architecture": "mtl_baseline", "balancer": "dwa"}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    storage = tmp_path / "runs"
    env = {**os.environ, "MTL_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    results_dir = str(storage / "e2e_kill" / "results")

    def mtl(*argv):
        return [sys.executable, "-m", "orchestrator.cli", *argv, "--storage", str(storage)]

    run = subprocess.Popen(mtl("run", str(path), "--smoke"), env=env, process_group=0)  # Ray's agents join its group
    try:
        done: list = []
        deadline = time.time() + 900
        while not done and run.poll() is None and time.time() < deadline:  # marked done: its file is complete
            time.sleep(0.5)
            latest = runs.latest_run(results_dir)
            marker = (runs.read_status(latest) or {}) if latest else {}
            done = [e for e in marker.get("experiments_done", []) if e in ("first", "second")]
        assert done and run.poll() is None, "no multi-task experiment finished, or the study ended"
        run.kill()  # SIGKILL to the driver alone, as a crash: its Ray is left to itself
        run.wait(timeout=60)
        run_dir = runs.latest_run(results_dir)
        marker = runs.read_status(run_dir)
        assert marker["status"] == "interrupted" and marker["killed"]
        assert runs.latest_unfinished(results_dir) == run_dir
        session = marker["ray_session_dir"]
        assert session, "the marker names no local Ray session"
        left = session_processes(session)
        print(f"\nleft by the killed driver: {left}")
        assert set(left) & set(marker["ray_pids"]), "no recorded Ray process outlived the driver"
        finished = os.path.join(run_dir, f"{done[0]}.parquet")
        before = open(finished, "rb").read()

        resume = subprocess.run(mtl("resume", "e2e_kill"), env=env, timeout=900, stdout=subprocess.PIPE, text=True)
        assert resume.returncode == 0, resume.stdout[-3000:]
        reaped = re.search(rf"stopped (\d+) Ray process\(es\) left by the killed run {os.path.basename(run_dir)}: "
                           r"(.*)", resume.stdout)
        assert reaped, resume.stdout[-3000:]
        print(reaped.group(0))
        assert int(reaped.group(1)) >= 1
        assert session_processes(session) == {}
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)  # whatever a failed assertion left of the killed run's Ray
        except ProcessLookupError:
            pass
    assert runs.run_dirs(results_dir) == [run_dir] and runs.read_status(run_dir)["status"] == "finished"
    assert open(finished, "rb").read() == before
    spec = smoke(load_spec(data))
    single, multi = expand(spec, validate(spec), str(tmp_path / "data"))
    expected = sum(len(e.trial_configs()) for e in single) + sum(len(e.settings) * len(e.seeds) for e in multi)
    rows = read_rows(str(storage / "e2e_kill" / "results.parquet"))
    keys = [(r["experiment"], r["config_hash"], r["seed"]) for r in rows]
    per_experiment = {e: sum(r["experiment"] == e for r in rows) for e in dict.fromkeys(r["experiment"] for r in rows)}
    print(f"rows: {len(rows)} of {expected} expected, {len(set(keys))} distinct; per experiment {per_experiment}")
    assert len(rows) == expected and len(set(keys)) == len(keys)
    assert {r["experiment"] for r in rows if r["role"] == "multi_task"} == {"first", "second"}

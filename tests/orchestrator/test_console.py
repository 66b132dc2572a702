"""The study's console without Ray running: progress lines, ETA, heartbeat, Ray's noise dropped."""
import logging

import pytest

from orchestrator import progress
from orchestrator.progress import EpochLines, duration


class _Trial:
    def __init__(self, trial_id, status="RUNNING"):
        self.trial_id, self.status, self.local_path = trial_id, status, f"/tmp/{trial_id}"


def _lines(monkeypatch):
    out = []
    monkeypatch.setattr(EpochLines, "log", lambda self, line: out.append(line))
    return out


def test_epoch_lines_carry_totals_and_an_eta(monkeypatch):
    out = _lines(monkeypatch)
    clock = iter([100.0, 110.0, 120.0, 130.0])
    monkeypatch.setattr(progress.time, "time", lambda: next(clock))
    cb = EpochLines("mtl_baseline", index=2, total=6, trials=2, epochs=3)
    cb.on_step_begin(0, [])  # t0 = 100
    a, b = _Trial("a"), _Trial("b")
    cb.on_trial_result(1, [a, b], a, {"epoch": 0, "val_delta_m": -14.7, "epoch_time_s": 7.3})
    cb.on_trial_result(2, [a, b], b, {"epoch": 0, "val_delta_m": 1.234, "epoch_time_s": 7.0})
    cb.on_trial_result(3, [a, b], a, {"epoch": 1, "val_delta_m": -10.0, "epoch_time_s": 7.1})
    # 10 s per trial-epoch so far; 6 trial-epochs in all
    assert out == ["experiment 2/6 mtl_baseline: trial 1/2 epoch 1/3 val Δm -14.70% (7.3 s/epoch, ETA 50 s)",
                   "experiment 2/6 mtl_baseline: trial 2/2 epoch 1/3 val Δm +1.23% (7.0 s/epoch, ETA 40 s)",
                   "experiment 2/6 mtl_baseline: trial 1/2 epoch 2/3 val Δm -10.00% (7.1 s/epoch, ETA 30 s)"]


def test_a_heartbeat_while_no_trial_has_reported(monkeypatch):
    out = _lines(monkeypatch)
    now = [0.0]
    monkeypatch.setattr(progress.time, "time", lambda: now[0])
    cb = EpochLines("mt", index=1, total=2, trials=3, epochs=2)
    for t in (0.0, 5.0, 19.0, 21.0, 30.0, 41.0):
        now[0] = t
        cb.on_step_begin(0, [_Trial("a"), _Trial("b", "PENDING")])
    assert out == ["experiment 1/2 mt: starting workers for 3 trial(s), 1 running (21 s)",
                   "experiment 1/2 mt: starting workers for 3 trial(s), 1 running (41 s)"]
    cb.on_trial_result(0, [], _Trial("a"), {"epoch": 0, "val_delta_m": 0.0, "epoch_time_s": 1.0})
    now[0] = 100.0
    cb.on_step_begin(0, [])
    assert len(out) == 3  # no heartbeat once epochs are reported


def test_durations():
    assert [duration(s) for s in (5, 89, 240, 3725)] == ["5 s", "89 s", "4 min", "1 h 02 min"]


def test_ray_noise_is_dropped_and_everything_else_passes(monkeypatch):
    pytest.importorskip("ray")
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from orchestrator.ray_env import quiet_noise

    seen = []
    monkeypatch.setattr(dispatcher, "handlers", [("ray_print_logs", lambda data: seen.append(data["lines"]))])
    quiet_noise()
    quiet_noise()  # idempotent: one filter, not two
    noise = ["Reporting training result 3: TrainingReport(checkpoint=None, metrics={...})",
             "[2026 E 1 2] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and ID: 'ab' has "
             "constructor arguments in the object store and max_restarts > 0.",
             "\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes have been started on node: 7b with address: "
             "127.0.0.1, which is 4x the maximum expected startup concurrency (2)."]
    dispatcher.emit({"lines": noise + ["Traceback (most recent call last):", "epoch 1"], "pid": 1})
    dispatcher.emit({"lines": noise, "pid": 1})
    assert seen == [["Traceback (most recent call last):", "epoch 1"]]
    record = logging.LogRecord("ray._private.authentication.authentication_token_setup", logging.WARNING, "f", 1,
                               "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE", None, None)
    handlers = logging.getLogger("ray").handlers
    assert handlers and all(not h.filter(record) for h in handlers)
    real = logging.LogRecord("ray", logging.ERROR, "f", 1, "worker died", None, None)
    assert all(h.filter(real) for h in handlers)


def test_experiment_end_line_names_the_best_so_far():
    from orchestrator.study import _experiment_done

    out = []
    rows = [{"selected": True, "val_delta_m": -2.0, "status": "completed"},
            {"selected": True, "val_delta_m": -4.0, "status": "completed"},
            {"selected": False, "val_delta_m": 9.0, "status": "stopped"}]
    leader = _experiment_done(rows, "mgm", 2, 3, 61.4, ("mt", -5.0), out.append)
    assert leader == ("mgm", -3.0)
    assert out == ["experiment 2/3 mgm done in 61s: val Δm -3.00% (selected setting, mean of 2 seed(s)), "
                   "1 trial(s) not completed; best so far mgm -3.00%"]


def test_no_project_file_points_outside_the_repository():
    """Docstrings state facts; they do not send users to notes they do not have."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    bad = re.compile(r"PAPER_NOTES|\.\./shared|shared/seeds|seeds/00\d")
    hits = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*") if p.suffix in (".py", ".md", ".yaml", ".toml")
            and not {".venv", "mtl_runs", ".git"} & set(p.relative_to(root).parts) and p.name != "test_console.py"
            for i, line in enumerate(p.read_text(errors="ignore").splitlines(), 1) if bad.search(line)]
    assert hits == []


def test_a_diverged_trial_prints_its_reason(monkeypatch):
    out = _lines(monkeypatch)
    cb = EpochLines("mt", index=1, total=1, trials=1, epochs=4)
    cb.on_trial_result(0, [], _Trial("a"), {"epoch": 1, "val_score": float("nan"), "epoch_time_s": 1.0,
                                            "failed": "epoch 2, step 0: training loss of task 'depth' is nan"})
    assert out[0].startswith("experiment 1/1 mt: trial 1/1 epoch 2/4 FAILED: epoch 2, step 0: training loss of task 'depth' is nan")

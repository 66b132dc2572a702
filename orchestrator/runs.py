"""Run folders and their status markers: what ``mtl resume``, ``mtl status`` and ``mtl report`` read.

Every run of a study writes ``<study>/results/<run_id>/status.json`` at its start, after each
experiment and at its end: {status, started, ended, pid, host, experiments_done, experiments_total,
experiment_running, ray_session_dir, ray_pids} with status ``running``, ``finished``, ``interrupted``
(Ctrl-C) or ``failed`` (an exception).
The file is replaced atomically and fsynced, so a reader (or a crash) never sees half of it.
A driver killed outright (SIGKILL, a lost node) cannot write its end: a ``running`` marker whose
pid is gone on this host reads as ``interrupted``; on another host the pid cannot be checked and
the marker reads as written.

The two ``ray_`` fields name the local Ray instance the driver started (null when it joined a
cluster, or before Ray started): its session folder and the pids of its processes, as of the
marker's last write. A SIGKILLed driver leaves two of them running (the raylet's dashboard and
runtime-env agents); ``reap_orphans`` stops them when ``mtl resume`` or ``mtl run`` finds the run.

Run ids are the start time plus four random hex digits (``20260101-120000-3fa2``); the folder is
created exclusively, so two runs started in the same second get two folders.
"""
from __future__ import annotations

import datetime
import json
import os
import secrets
import signal
import socket
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from orchestrator.ray_env import local_ray_processes
from trainables.atomic import atomic_write

STATUS_FILE = "status.json"
RUNNING, FINISHED, INTERRUPTED, FAILED = "running", "finished", "interrupted", "failed"


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a study: no further experiment starts; finished trials' rows are kept."""


def write_json_durable(path: str, obj: object) -> str:
    """``obj`` as JSON at ``path``: a temporary file, flushed and fsynced, renamed over ``path``."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1, default=float)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write)


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def create_run_dir(results_dir: str, now: Optional[datetime.datetime] = None) -> Tuple[str, str]:
    """A new, empty run folder under ``results_dir``; returns (run_id, its path)."""
    os.makedirs(results_dir, exist_ok=True)
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    while True:
        run_id = f"{stamp}-{secrets.token_hex(2)}"
        path = os.path.join(results_dir, run_id)
        try:
            os.mkdir(path)  # exclusive: a concurrent run that drew the same id gets FileExistsError
            return run_id, path
        except FileExistsError:
            continue


class RunStatus:
    """The status marker of one run folder, rewritten on every change."""

    def __init__(self, run_dir: str, total: int, done: Sequence[str] = (), started: Optional[str] = None):
        self.run_dir, self.total, self.done = run_dir, total, list(done)
        self.started = started or _now()
        self.current: Optional[str] = None  # the experiment under way: the one ``mtl resume`` may restore

    def experiment_started(self, name: str) -> None:
        self.current = name
        self.write(RUNNING)

    def write(self, status: str) -> str:
        ended = None if status == RUNNING else _now()
        ray = local_ray_processes() or {}
        return write_json_durable(os.path.join(self.run_dir, STATUS_FILE), {
            "status": status, "started": self.started, "ended": ended, "pid": os.getpid(),
            "host": socket.gethostname(), "experiments_done": self.done, "experiments_total": self.total,
            "experiment_running": self.current, "ray_session_dir": ray.get("session_dir"),
            "ray_pids": ray.get("pids", [])})

    def experiment_done(self, name: str) -> None:
        if name not in self.done:
            self.done.append(name)
        self.current = None
        self.write(RUNNING)


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host; a zombie (exited, not yet waited for) does not."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc (not Linux): ask the kernel
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def read_status(run_dir: str) -> Optional[Dict[str, Any]]:
    """The run's marker with its effective status (a dead driver's ``running`` reads as
    ``interrupted``, with ``killed: True``), or None for a folder without one (runs before markers)."""
    path = os.path.join(run_dir, STATUS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        marker = json.load(fh)
    if (marker.get("status") == RUNNING and marker.get("host") == socket.gethostname()
            and not _pid_alive(int(marker.get("pid", -1)))):
        marker = {**marker, "status": INTERRUPTED, "killed": True}
    return marker


def reap_orphans(marker: Dict[str, Any], wait_s: float = 5.0) -> List[Tuple[int, str]]:
    """Stop the Ray processes a killed driver left running; (pid, command line) of each one stopped.

    Only for a marker read as ``killed`` (its driver's pid is gone on this host) that names a Ray
    session. The candidates are the recorded pids and every other process of that session found
    now (``session_pids``: e.g. a worker that was starting when the driver died, after the
    marker's last write); each is signalled only while it is alive and still a process of that
    session - its command line names the session folder, or it holds a file under it open (the
    agents rename themselves ``ray::...`` but keep their logs there) - so a pid the system has given
    to another process since is left alone. SIGTERM first; SIGKILL for any still there after ``wait_s``.
    """
    session = marker.get("ray_session_dir")
    if not marker.get("killed") or not session:
        return []
    candidates = set(marker.get("ray_pids", [])) | set(session_pids(session))
    stopped = {pid: _command(pid) for pid in sorted(candidates) if _pid_alive(pid) and _of_session(pid, session)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in stopped:
            if _pid_alive(pid) and _of_session(pid, session):  # checked again: the pid may be free by now
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.time() + wait_s
        while any(_pid_alive(pid) for pid in stopped) and time.time() < deadline:
            time.sleep(0.1)
    return sorted(stopped.items())


def session_pids(session: str) -> List[int]:
    """Every process on this host (that this user may inspect) of the Ray session folder ``session``."""
    if not os.path.isdir("/proc"):
        return []
    return [pid for pid in (int(e) for e in os.listdir("/proc") if e.isdigit())
            if pid != os.getpid() and _of_session(pid, session)]


def _of_session(pid: int, session: str) -> bool:
    """Whether process ``pid`` belongs to the Ray session folder ``session`` (see ``reap_orphans``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().decode(errors="replace").split("\0")
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or another user's
        return False
    if any(f"{session}/" in arg or arg.endswith(session) for arg in argv):
        return True
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"{session}/"):
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return " ".join(fh.read().decode(errors="replace").replace("\0", " ").split())[:80]
    except OSError:
        return "?"


def run_dirs(results_dir: str) -> List[str]:
    """Every run folder under ``results_dir``, oldest first (run ids start with their time)."""
    if not os.path.isdir(results_dir):
        return []
    return [os.path.join(results_dir, d) for d in sorted(os.listdir(results_dir))
            if os.path.isdir(os.path.join(results_dir, d))]


def latest_run(results_dir: str) -> Optional[str]:
    """The newest run folder with a marker, or None."""
    marked = [d for d in run_dirs(results_dir) if os.path.exists(os.path.join(d, STATUS_FILE))]
    return marked[-1] if marked else None


def latest_unfinished(results_dir: str) -> Optional[str]:
    """The newest run folder when it was interrupted or killed (what ``mtl resume`` continues), else None."""
    latest = latest_run(results_dir)
    marker = read_status(latest) if latest else None
    return latest if marker and marker["status"] == INTERRUPTED else None


def is_finished(run_dir: str) -> bool:
    """Whether ``mtl report`` reads the run by default: finished, or written before markers existed."""
    marker = read_status(run_dir)
    return marker is None or marker["status"] == FINISHED


def summary(study_dir: str) -> List[str]:
    """``mtl status``: the latest run of the study under ``study_dir``, from its files alone (no Ray).

    Trials completed / failed come from the per-experiment Parquet files; trials started but not
    in a file yet are the Tune trial folders (those holding a ``params.json``, made since the run
    started) of the experiment under way.
    """
    from orchestrator.results import read_rows
    from orchestrator.tuning import trial_name

    results_dir = os.path.join(study_dir, "results")
    latest = latest_run(results_dir)
    if latest is None:
        return [f"{study_dir}: no run with a status marker under {results_dir}"]
    marker = read_status(latest) or {}
    rows = [r for f in sorted(os.listdir(latest)) if f.endswith(".parquet")
            for r in read_rows(os.path.join(latest, f))]
    done = list(marker.get("experiments_done", []))
    state = marker["status"] + (" (driver killed: its pid is gone)" if marker.get("killed") else "")
    lines = [f"run {os.path.basename(latest)}: {state}; started {marker.get('started')}, "
             f"ended {marker.get('ended') or '-'}, pid {marker.get('pid')} on {marker.get('host')}",
             f"experiments done: {len(done)} / {marker.get('experiments_total')}"]
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    in_files: Dict[str, int] = {}
    for r in rows:
        in_files[r["experiment"]] = in_files.get(r["experiment"], 0) + 1
    started = 0
    current = marker.get("experiment_running")
    folder = os.path.join(study_dir, "tune", trial_name(current)) if current else ""
    if folder and os.path.isdir(folder):  # the folder is shared with earlier runs of the experiment
        since = datetime.datetime.fromisoformat(marker["started"]).timestamp()
        started = max(0, sum(os.path.exists(os.path.join(folder, t, "params.json"))
                             and os.path.getmtime(os.path.join(folder, t)) >= since for t in os.listdir(folder))
                      - in_files.get(current, 0))
    failed = sum(n for s, n in counts.items() if s != "completed")
    lines.append(f"trials: {counts.get('completed', 0)} completed, {failed} not completed "
                 f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()) if s != 'completed') or 'none'}), "
                 f"{started} started without a row yet (running or unfinished)")
    chosen = [r for r in rows if r["role"] == "multi_task" and r.get("selected") and r["val_delta_m"] is not None]
    if chosen:
        best = max(chosen, key=lambda r: r["val_delta_m"])
        lines.append(f"best val Δm so far: {best['val_delta_m']:+.2f}% "
                     f"({best['experiment']}, one seed of its selected setting)")
    else:
        lines.append("best val Δm so far: none (no multi-task experiment has a selected setting yet)")
    return lines


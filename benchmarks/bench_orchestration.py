"""Where a study's wall time goes: training epochs versus orchestration, printed as one table.

Runs ``mtl run <preset>`` (``python -m orchestrator.cli``, default ``quickstart``) in a
subprocess, times it, then reads what that run wrote under ``--storage``:

- Tune trials: each trial's ``result.json`` (one line per epoch). Its epoch time is the sum of
  the lines' ``epoch_time_s`` (the train loop's own timing of one epoch: training + validation);
  its fixed overhead is the last line's ``time_total_s`` minus that sum, i.e. everything from the
  trial's start to its last report that is not an epoch (starting the worker group, imports,
  building model and data, checkpoints). Teardown after the last report is not in
  ``time_total_s``: it shows in the wall time only.
- Baselines trained by this run (the actor pool, not Tune): the sum of ``epoch_time_s`` in the
  TensorBoard events cached with each (their ``result.json`` keeps only the last epoch); without
  the tensorboard package, estimated as epochs x the last epoch's ``epoch_time_s``.

Only files written after the run started count, so a storage folder from earlier runs (e.g. with
cached baselines) can be reused. The training share is (sum of epoch times) / wall time; epochs of
concurrent trials overlap, so on several cores it can exceed 100%: the next row divides by the
wall time x this machine's CPUs (a local Ray instance uses them all), the share of the machine
that trained.

Memory: ``Memory`` samples the study's process tree every 0.5 s (peak PSS of the whole tree, and
per trial). ``--compare REV`` runs the same study first from a clone at git revision REV and
prints the two columns side by side: before / after, measured in one run.

    python benchmarks/bench_orchestration.py                             # quickstart, temp storage
    python benchmarks/bench_orchestration.py --storage /tmp/b --warm     # cached baselines
    python benchmarks/bench_orchestration.py --preset balancing_synthetic --smoke
    python benchmarks/bench_orchestration.py --preset balancing_synthetic --smoke --compare 9c5495b

``--warm`` runs the study once, untimed, before the timed run (so its single-task baselines come
from the cache). Do not point it at ``survey_synthetic``: it trains for hours. Start it on an
otherwise idle machine; another Ray instance running alongside skews every number.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Tuple

from orchestrator.ray_env import descendants  # the process tree, as a run's marker records it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_study(preset: str, storage: str, smoke: bool, root: str = ROOT) -> Tuple[float, int, "Memory"]:
    """Wall seconds, exit status and memory of ``mtl run preset --storage storage [--smoke]`` run
    from the checkout ``root``; its console output goes to this process's stderr, so stdout holds
    only the table."""
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", preset, "--storage", storage]
    cmd += ["--smoke"] if smoke else []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, stdout=sys.stderr, stderr=sys.stderr,
                            env={**os.environ, "PYTHONPATH": root})
    memory = Memory(proc.pid)
    while proc.poll() is None:
        memory.sample()
        time.sleep(0.5)
    return time.perf_counter() - start, proc.returncode, memory


def _read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:  # the process ended, or is not ours to read
        return ""


class Memory:
    """Peak memory of a study's processes, sampled from /proc (Linux; nothing elsewhere).

    Every 0.5 s: the processes descended from the study's driver (Ray's own and its workers are
    children of it), each one's PSS (its share of the pages it maps: shared libraries count once
    over all processes). A *trial* process is one whose title is Ray's ``ray::ImplicitFunc`` (a
    Tune function trial); the trial processes of a sample are every ``ray::`` process that is
    not idle and not a baseline or search actor (Tune trials, Train controllers and workers).
    Per trial = their PSS / the number of trials in the sample; the peak over the samples is kept.
    """

    def __init__(self, root_pid: int):
        self.root = root_pid
        self.peak_total = 0.0  # bytes, the whole tree
        self.peak_per_trial = 0.0
        self.processes_per_trial = 0.0

    @staticmethod
    def pss(pid: int) -> float:
        for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
            if line.startswith("Pss:"):
                return float(line.split()[1]) * 1024
        return 0.0

    def sample(self) -> None:
        total, trial_bytes, trial_procs, trials = 0.0, 0.0, 0, 0
        for pid in descendants([self.root]) if os.path.isdir("/proc") else []:
            pss = self.pss(pid)
            total += pss
            title = _read(f"/proc/{pid}/cmdline").split("\0")[0]
            if title.startswith("ray::") and not title.startswith(("ray::IDLE", "ray::BaselineTrainer",
                                                                    "ray::SearchActor")):
                trial_bytes += pss
                trial_procs += 1
                trials += title.startswith("ray::ImplicitFunc")
        self.peak_total = max(self.peak_total, total)
        if trials and trial_bytes / trials > self.peak_per_trial:
            self.peak_per_trial, self.processes_per_trial = trial_bytes / trials, trial_procs / trials


def tune_trials(storage: str, since: float) -> List[Tuple[float, float]]:
    """(time_total_s, sum of epoch_time_s) of every Tune trial whose result.json changed after ``since``."""
    trials = []
    for path in glob.glob(os.path.join(storage, "*", "tune", "*", "*", "result.json")):
        if os.path.getmtime(path) < since:
            continue
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        if lines:
            trials.append((float(lines[-1]["time_total_s"]), sum(float(r.get("epoch_time_s", 0.0)) for r in lines)))
    return trials


def trained_baselines(storage: str, since: float) -> List[Tuple[float, float]]:
    """(job wall seconds, estimated epoch seconds) of every baseline cached after ``since``."""
    jobs = []
    for path in glob.glob(os.path.join(storage, "_cache", "baselines", "*", "result.json")):
        if os.path.getmtime(path) < since:
            continue
        with open(path) as f:
            result = json.load(f)
        metrics = result.get("metrics") or {}
        seconds = logged_epoch_seconds(os.path.dirname(path))
        if seconds is None:
            epochs = int(metrics.get("epoch", -1)) + 1  # 0-based index of the last epoch
            seconds = epochs * float(metrics.get("epoch_time_s", 0.0))
        jobs.append((float(result.get("wall_time_s", 0.0)), seconds))
    return jobs


def logged_epoch_seconds(folder: str) -> Optional[float]:
    """Sum of the ``epoch_time_s`` scalars in the TensorBoard events under ``folder`` (None if
    the tensorboard package or the events are missing)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    files = glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True)
    total = None
    for events in files:
        acc = EventAccumulator(events)
        acc.Reload()
        if "epoch_time_s" in acc.Tags().get("scalars", []):
            total = (total or 0.0) + sum(e.value for e in acc.Scalars("epoch_time_s"))
    return total


def table(title: str, wall: float, trials: List[Tuple[float, float]], baselines: List[Tuple[float, float]],
          cpus: int, memory: Optional[Memory] = None) -> List[Tuple[str, str]]:
    """The table's (row name, value) pairs."""
    trial_epochs = sum(e for _, e in trials)
    base_epochs = sum(e for _, e in baselines)
    overheads = [total - epochs for total, epochs in trials]
    overhead = (f"{statistics.mean(overheads):.1f} (min {min(overheads):.1f}, max {max(overheads):.1f})"
                if overheads else "n/a (no Tune trial)")
    rows = [
        ("wall time of `mtl run` (s)", f"{wall:.1f}"),
        ("Tune trials", f"{len(trials)}"),
        ("baselines trained now (actor pool)", f"{len(baselines)}"),
        ("sum of epoch times (s)", f"{trial_epochs + base_epochs:.1f} (trials {trial_epochs:.1f}, "
                                   f"baselines {base_epochs:.1f})"),
        ("per-trial fixed overhead (s)", overhead),
        ("training share of wall time", f"{100 * (trial_epochs + base_epochs) / wall:.0f}%"),
        (f"  per CPU (wall x {cpus} CPUs)", f"{100 * (trial_epochs + base_epochs) / (wall * cpus):.0f}%"),
    ]
    if memory is not None and memory.peak_total:
        rows += [("peak memory of the study's processes (PSS, GB)", f"{memory.peak_total / 1e9:.2f}"),
                 ("peak memory per trial (PSS, GB)", f"{memory.peak_per_trial / 1e9:.2f} "
                                                     f"({memory.processes_per_trial:.1f} processes)")]
    return rows


def render(columns: List[Tuple[str, List[Tuple[str, str]]]]) -> str:
    """One Markdown table: a row per measure, a column per (title, rows)."""
    names = [k for k, _ in columns[0][1]]
    cells = [[dict(rows).get(k, "") for k in names] for _, rows in columns]
    width = max(len(k) for k in names)
    widths = [max([len(title)] + [len(c) for c in col]) for (title, _), col in zip(columns, cells)]
    head = f"| {'':<{width}} | " + " | ".join(f"{t:<{w}}" for (t, _), w in zip(columns, widths)) + " |"
    rule = f"|{'-' * (width + 2)}|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [f"| {k:<{width}} | " + " | ".join(f"{col[i]:<{w}}" for col, w in zip(cells, widths)) + " |"
            for i, k in enumerate(names)]
    return "\n".join([head, rule] + body)


def measure(preset: str, smoke: bool, storage: str, warm: bool, root: str = ROOT) -> Optional[List[Tuple[str, str]]]:
    """One study's rows of the table (None if it failed), run from the checkout ``root``."""
    if warm:
        print(f"warm-up run of {preset} (untimed) into {storage}", file=sys.stderr)
        if run_study(preset, storage, smoke, root)[1]:
            print("the warm-up run failed", file=sys.stderr)
            return None
    since = time.time()
    wall, rc, memory = run_study(preset, storage, smoke, root)
    if rc:
        print(f"mtl run {preset} failed (exit {rc}); no table", file=sys.stderr)
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return table(preset, wall, tune_trials(storage, since), trained_baselines(storage, since), cpus, memory)


def checkout(rev: str) -> str:
    """A temporary clone of this repository at ``rev`` (for --compare)."""
    folder = tempfile.mkdtemp(prefix=f"bench_orchestration-{rev}-")
    subprocess.run(["git", "clone", "-q", "--shared", ROOT, folder], check=True)
    subprocess.run(["git", "-C", folder, "checkout", "-q", rev], check=True)
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="quickstart", help="study preset or spec .yaml (default quickstart)")
    ap.add_argument("--smoke", action="store_true", help="mtl run --smoke: shrunk data, epochs and grid")
    ap.add_argument("--storage", default=None, help="results root (default: a new temporary folder)")
    ap.add_argument("--warm", action="store_true", help="run the study once untimed first (cached baselines)")
    ap.add_argument("--compare", metavar="REV", help="also run the study from a clone at git revision REV first: "
                                                     "before / after in one run (one storage with --warm, else one each)")
    args = ap.parse_args()
    storage = os.path.abspath(args.storage or tempfile.mkdtemp(prefix="bench_orchestration-"))
    title = f"{args.preset}{' --smoke' if args.smoke else ''}"
    columns = []
    if args.compare:
        # --warm: one storage for both, whose baseline cache the warm-up fills; cold: one each,
        # so that both train their baselines
        before = measure(args.preset, args.smoke, storage if args.warm else os.path.join(storage, "before"),
                         args.warm, checkout(args.compare))
        if before is None:
            return 1
        columns.append((f"{title} @ {args.compare}", before))
    after = measure(args.preset, args.smoke, storage if args.warm or not args.compare else os.path.join(storage, "after"),
                    args.warm and not args.compare)
    if after is None:
        return 1
    columns.append((f"{title}{' (this checkout)' if args.compare else ''}", after))
    print(render(columns))
    print(f"storage: {storage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

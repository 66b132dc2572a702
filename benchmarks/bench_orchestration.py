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

    python benchmarks/bench_orchestration.py                             # quickstart, temp storage
    python benchmarks/bench_orchestration.py --storage /tmp/b --warm     # cached baselines
    python benchmarks/bench_orchestration.py --preset balancing_synthetic --smoke

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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_study(preset: str, storage: str, smoke: bool) -> Tuple[float, int]:
    """Wall seconds and exit status of ``mtl run preset --storage storage [--smoke]``; its console
    output goes to this process's stderr, so stdout holds only the table."""
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", preset, "--storage", storage]
    cmd += ["--smoke"] if smoke else []
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr)
    return time.perf_counter() - start, done.returncode


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
          cpus: int) -> str:
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
    width = max([len(title)] + [len(k) for k, _ in rows])
    vwidth = max(len(v) for _, v in rows)
    lines = [f"| {title:<{width}} | {'':<{vwidth}} |", f"|{'-' * (width + 2)}|{'-' * (vwidth + 2)}|"]
    lines += [f"| {k:<{width}} | {v:<{vwidth}} |" for k, v in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="quickstart", help="study preset or spec .yaml (default quickstart)")
    ap.add_argument("--smoke", action="store_true", help="mtl run --smoke: shrunk data, epochs and grid")
    ap.add_argument("--storage", default=None, help="results root (default: a new temporary folder)")
    ap.add_argument("--warm", action="store_true", help="run the study once untimed first (cached baselines)")
    args = ap.parse_args()
    storage = os.path.abspath(args.storage or tempfile.mkdtemp(prefix="bench_orchestration-"))
    if args.warm:
        print(f"warm-up run of {args.preset} (untimed) into {storage}", file=sys.stderr)
        _, rc = run_study(args.preset, storage, args.smoke)
        if rc:
            print(f"the warm-up run failed (exit {rc})", file=sys.stderr)
            return rc
    since = time.time()
    wall, rc = run_study(args.preset, storage, args.smoke)
    if rc:
        print(f"mtl run {args.preset} failed (exit {rc}); no table", file=sys.stderr)
        return rc
    title = f"{args.preset}{' --smoke' if args.smoke else ''}"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(table(title, wall, tune_trials(storage, since), trained_baselines(storage, since), cpus))
    print(f"storage: {storage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

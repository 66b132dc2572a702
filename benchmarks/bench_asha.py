"""Does ASHA pick the exhaustive grid search's winner, and at what share of its trial-epochs?

One study on the embedded synthetic scenes (one multi-task model: ``mtl_baseline`` with
``fixed`` weights; tasks ``--tasks``) over the first ``--settings`` settings of the survey's
48-setting grid (Vandenhende et al., TPAMI 2021, supp. A), run twice through
``orchestrator.study.run_study`` in this one process (one Ray instance), into one storage folder:

1. the single-task baselines of every setting and seed, trained first (``prepare`` /
   ``Cluster`` / ``baselines``, the study's own phases) and cached in ``<storage>/_cache``, so
   that neither timed run pays for them and both measure Delta_m against the same networks;
2. exhaustive: every trial runs all ``--epochs`` (study ``bench_asha_grid``, ``search.asha:
   false``);
3. ASHA: the same settings and seeds with ``search.asha: true`` (study ``bench_asha_asha``),
   ``--grace-period`` / ``--reduction-factor`` defaulting to the project's own defaults
   (``SearchSpec``: 1 and 3; with 6 epochs its rungs are at epochs 1 and 3).

Grid order (``--settings N`` keeps the first N, the spec's ``search.max_settings``): batch size
(the synthetic data's 8, 16, 32) outermost, then poly before step decay, then Adam at 2e-4,
1e-4, 5e-5, 1e-5, then SGD (momentum 0.9) at 5e-2, 1e-2, 5e-3, 1e-3. So ``--settings 12`` is
batch 8: all eight optimiser settings with poly decay and the four Adam ones with step decay;
48 is the whole grid.

The winner of a run is the study's own selection (the rows marked ``selected``): the setting
with the best mean validation Delta_m over seeds among trials that ran every epoch; a setting
with a diverged seed is never chosen, and ASHA's stopped trials cannot be. The exhaustive
ranking orders the settings the same way (diverged ones are unranked); the table gives the
rank of ASHA's winner in it. Trial-epochs are the multi-task trials' ``epochs_done`` summed
(the single-task baselines are shared by both runs and not counted). Wall times are each
``run_study``'s own, Ray's start excluded (it starts in step 1).

    python benchmarks/bench_asha.py --settings 4 --epochs 2          # the plumbing, ~3 minutes
    python benchmarks/bench_asha.py --settings 12                    # 6 epochs, seed 0: ~10 minutes on 2 CPUs
    python benchmarks/bench_asha.py --settings 48 --storage /tmp/b   # the whole grid (long)

ASHA is asynchronous: which trial it stops depends on the order trials reach a rung, i.e. on
how many run at once and on their speed, so two runs on one machine can differ. Only the
table goes to stdout; the studies' logs go to stderr. Exit status 1 when a run raises, a trial
ends in an error, or a run selects no winner; 2 for a bad option.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
import traceback
from statistics import mean
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from orchestrator.plan import validate
from orchestrator.results import hyperparameters
from orchestrator.spec import SearchSpec, SpecError, StudySpec, load_spec

GRID_SIZE = 48
Setting = Tuple[int, str, str, float]  # (batch size, scheduler, optimizer, lr)
DEFAULTS = {f.name: f.default for f in dataclasses.fields(SearchSpec)}


def study_spec(args: argparse.Namespace, asha: bool) -> StudySpec:
    """The benchmark's study: the same data, model, settings and seeds; ``asha`` on or off."""
    return load_spec({
        "name": "bench_asha_asha" if asha else "bench_asha_grid",
        "description": "ASHA against the exhaustive grid (benchmarks/bench_asha.py)",
        "dataset": {"name": "synthetic", "params": {"image_size": args.image_size, "num_train": args.num_train,
                                                    "num_val": args.num_val, "num_test": args.num_val}},
        "tasks": args.tasks,
        "backbone": "tiny_cnn",
        "head": "conv",
        "experiments": [{"name": "mtl_baseline", "architecture": "mtl_baseline", "balancer": "fixed"}],
        "search": {"max_settings": args.settings, "asha": asha, "grace_period": args.grace_period,
                   "reduction_factor": args.reduction_factor},
        "train": {"epochs": args.epochs, "seeds": args.seeds},
    })


def setting_of(row: Dict[str, Any]) -> Setting:
    """A row's grid setting, read from its config (the setting hash differs between the two
    studies: the config holds the study's folder)."""
    hp = hyperparameters(row["config_json"])
    return int(hp["batch_size"]), hp["scheduler"], hp["optimizer"], float(hp["lr"])


def in_words(setting: Setting) -> str:
    batch, scheduler, optimizer, lr = setting
    rate = f"{lr:.0e}".replace("e-0", "e-")  # 2e-4, as the survey writes its rates
    return f"batch {batch}, {scheduler} decay, {'Adam' if optimizer == 'adam' else 'SGD'} lr {rate}"


def ranking(rows: Sequence[Dict[str, Any]]) -> List[Tuple[Setting, float]]:
    """Settings by mean val Delta_m over seeds, best first: the study's selection rule
    (``results.best_setting``) as an order; a setting with a diverged seed or a non-finite
    Delta_m is left out, and so is one whose trials did not all complete."""
    groups: Dict[Setting, List[float]] = {}
    bad = set()
    for row in rows:
        value = row["val_delta_m"]
        if row["status"] != "completed" or value is None or not math.isfinite(value):
            bad.add(setting_of(row))
        else:
            groups.setdefault(setting_of(row), []).append(float(value))
    return sorted(((s, mean(v)) for s, v in groups.items() if s not in bad), key=lambda sv: -sv[1])


@dataclasses.dataclass(frozen=True)
class Run:
    """One run's multi-task trials, reduced to what the table shows."""

    rows: Tuple[Dict[str, Any], ...]
    wall_s: float

    @property
    def winner(self) -> Optional[Setting]:
        chosen = {setting_of(r) for r in self.rows if r["selected"]}
        return chosen.pop() if len(chosen) == 1 else None

    def winner_delta(self, split: str) -> float:
        return mean(r[f"{split}_delta_m"] for r in self.rows if r["selected"])

    @property
    def trial_epochs(self) -> int:
        return sum(int(r["epochs_done"]) for r in self.rows)

    @property
    def trials(self) -> str:
        """Trials, and how many completed / were stopped by ASHA / diverged, e.g. "12 (5 / 7 / 0)"."""
        count = lambda status: sum(1 for r in self.rows if r["status"] == status)  # noqa: E731
        return f"{len(self.rows)} ({count('completed')} / {count('stopped')} / {count('failed')})"


def run(spec: StudySpec, storage: str, log: Callable[[str], None]) -> Run:
    from orchestrator.study import run_study

    out = run_study(spec, storage=storage, log=log)
    return Run(tuple(r for r in out["rows"] if r["role"] == "multi_task"), float(out["wall_time_s"]))


def problems(name: str, result: Run) -> List[str]:
    """Why a run does not count: a trial that raised, or no winner."""
    found = [f"{name}: trial {r['trial_id']} {in_words(setting_of(r))} seed {r['seed']} ended in an error: "
             f"{r['error']}" for r in result.rows if r["status"] == "error"]
    if result.winner is None:
        found.append(f"{name}: no setting selected (every trial stopped, diverged or failed)")
    return found


def table(args: argparse.Namespace, grid: Run, asha: Run, baselines_s: float) -> str:
    order = ranking(grid.rows)
    ranked = [s for s, _ in order]
    winner = asha.winner
    if winner in ranked:
        rank = f"{ranked.index(winner) + 1} of {len(ranked)} (val Δm there {order[ranked.index(winner)][1]:+.2f})"
    else:
        rank = f"unranked (diverged or incomplete in the exhaustive run; {len(ranked)} ranked)"
    rows = [
        ("winner setting", in_words(grid.winner), in_words(winner)),
        ("winner val Δm (%)", f"{grid.winner_delta('val'):+.2f}", f"{asha.winner_delta('val'):+.2f}"),
        ("winner test Δm (%)", f"{grid.winner_delta('test'):+.2f}", f"{asha.winner_delta('test'):+.2f}"),
        ("same winner", "", "yes" if winner == grid.winner else "no"),
        ("ASHA winner's rank, exhaustive val Δm", "", rank),
        ("trials (completed / stopped / diverged)", grid.trials, asha.trials),
        ("trial-epochs", f"{grid.trial_epochs}", f"{asha.trial_epochs}"),
        ("trial-epochs, ASHA / exhaustive", "", f"{100 * asha.trial_epochs / grid.trial_epochs:.0f}%"),
        ("wall time (s)", f"{grid.wall_s:.0f}", f"{asha.wall_s:.0f}"),
        ("wall time, ASHA / exhaustive", "", f"{100 * asha.wall_s / grid.wall_s:.0f}%"),
        ("single-task baselines first (s, shared)", f"{baselines_s:.0f}", ""),
    ]
    title = (f"{args.settings} setting(s) x seeds {args.seeds}, {args.epochs} epochs, {'+'.join(args.tasks)} "
             f"{args.image_size}px")
    head = ("exhaustive", f"ASHA (grace {args.grace_period}, rf {args.reduction_factor})")
    widths = [max(len(title), *(len(r[0]) for r in rows))] + [
        max(len(head[i]), *(len(r[i + 1]) for r in rows)) for i in range(2)]
    line = lambda cells: "| " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line((title, *head)), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])


def train_baselines(spec: StudySpec, storage: str, log: Callable[[str], None]) -> float:
    """Start Ray and fill the baseline cache for ``spec``'s settings and seeds; wall seconds."""
    from orchestrator.study import Cluster, baselines, prepare

    start = time.perf_counter()
    p = prepare(spec, storage, False, log)
    baselines(p, Cluster(p))
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", type=int, default=12, help=f"first N grid settings, 1..{GRID_SIZE} (default 12)")
    ap.add_argument("--epochs", type=int, default=6, help="epochs of every trial (default 6)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    ap.add_argument("--tasks", nargs="+", default=["semseg", "depth", "normals"],
                    help="synthetic tasks (default semseg depth normals)")
    ap.add_argument("--image-size", type=int, default=32, help="synthetic image side (default 32)")
    ap.add_argument("--num-train", type=int, default=256, help="training images (default 256)")
    ap.add_argument("--num-val", type=int, default=64, help="validation images, and as many test images (default 64)")
    ap.add_argument("--grace-period", type=int, default=DEFAULTS["grace_period"],
                    help=f"ASHA's grace period in epochs (default {DEFAULTS['grace_period']})")
    ap.add_argument("--reduction-factor", type=int, default=DEFAULTS["reduction_factor"],
                    help=f"ASHA's reduction factor (default {DEFAULTS['reduction_factor']})")
    ap.add_argument("--storage", default=None, help="results root (default: a new temporary folder)")
    args = ap.parse_args()
    if not 1 <= args.settings <= GRID_SIZE:
        ap.error(f"--settings: {args.settings} must be in 1..{GRID_SIZE}")
    try:
        specs = study_spec(args, asha=False), study_spec(args, asha=True)
        validate(specs[0])  # task names, data parameters: before Ray starts
    except SpecError as err:
        ap.error(str(err))
    storage = os.path.abspath(args.storage or tempfile.mkdtemp(prefix="bench_asha-"))
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731  stdout holds only the table

    phase = "single-task baselines"
    try:
        baselines_s = train_baselines(specs[0], storage, log)
        phase = "exhaustive run"
        grid = run(specs[0], storage, log)
        phase = "ASHA run"
        asha = run(specs[1], storage, log)
    except Exception:  # anything a study raises: its traceback, then the phase it ended
        traceback.print_exc()
        print(f"bench_asha: the {phase} failed (storage {storage})", file=sys.stderr)
        return 1
    found = problems("exhaustive", grid) + problems("ASHA", asha)
    if found:
        print("\n".join(f"bench_asha: {p}" for p in found), file=sys.stderr)
        return 1
    print(table(args, grid, asha, baselines_s))
    print(f"storage: {storage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

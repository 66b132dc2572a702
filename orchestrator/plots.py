"""Pictures of a study, written as PNGs (120 dpi) beside its results; ``mtl plot`` re-renders them.

Every picture shows each model at its selected setting (the best grid setting on val), over that
setting's seeds. The Delta_m plots and the bars draw the lines of ``mtl report``'s table
(``orchestrator.report.model_rows``: the same models, numbers and Delta reference):

- ``delta_vs_params.png`` / ``delta_vs_flops.png``: test Delta_m (survey Eq. 10, percent; mean,
  error bar = population std over seeds, as the table's ``mean ± std``) against #params (M) /
  FLOPS (G, multiply-accumulates like the survey's tables). The Delta baseline sits at
  Delta_m = 0: the single-task networks (#params and FLOPS summed over tasks, as in the table),
  or the supervised MTL model when the study measures Delta_m against it (JTR); then the
  single-task networks are left out, their Delta_m against it being unknown. The Pareto front
  (no other model has fewer-or-equal params and a higher-or-equal Delta_m) is a step line: the
  best Delta_m reachable within a budget. This is the survey's Fig. 10 (Vandenhende et al.,
  TPAMI 2021: multi-task performance vs number of parameters, "a similar analysis can be made"
  with FLOPS), with every model of the study instead of the task groupings only.
- ``loss_weights.png``: per multi-task model whose balancer's weights change over epochs, the
  weight of each task at the end of every epoch (``weight/<task>`` of the train loop's reports),
  on the selected setting's lowest seed. Models with constant weights (``fixed``) are left out.
- ``val_curves.png``: validation Delta_m after every epoch, per multi-task model: the mean over
  the selected setting's seeds, with a band of ± one (population) std.
- ``task_metrics.png``: per scored task, one bar per model line of the table (the supervised MTL
  model and IAL's "each task primary" lines included) of its primary test metric (mean ± std),
  green where it beats the single-task network's value (the dashed line), red where not.
  The value axis is zoomed to the values (it need not start at 0) so that differences of a few
  points show; each bar is labelled with its value.

Per-epoch histories come from Ray Tune's trial folders, ``<study>/tune/<experiment>/<trial>/
result.json`` (one JSON report per line, each with the trial's ``trial_id``, the key results rows
carry). Single-task baselines keep only their last report in the baseline cache, so they appear
as final values only. A picture whose data is missing is skipped with one log line.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
from dataclasses import dataclass
from statistics import mean, pstdev
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from orchestrator.report import ModelRow, model_rows

DPI = 120
BETTER, WORSE = "#4c9a5f", "#c0504d"

Rows = Sequence[Dict[str, Any]]


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only: no display on a cluster node); imported
    here so that ``mtl --help`` does not pay for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the (cost, Delta_m) points that no other point dominates, by increasing cost.

    A point is dominated when another has a cost no higher and a Delta_m no lower, one of the two
    strictly; equal points do not dominate each other. Points with a non-finite value are left out.
    """
    finite = [i for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]

    def dominated(i: int) -> bool:
        (x, y) = points[i]
        return any(points[j][0] <= x and points[j][1] >= y and points[j] != points[i] for j in finite)

    return sorted((i for i in finite if not dominated(i)), key=lambda i: (points[i][0], -points[i][1], i))


@dataclass(frozen=True)
class Point:
    """One model of the Delta_m plots: its size and its test Delta_m over the seeds."""

    label: str
    params_m: float
    flops_g: Optional[float]
    delta: float
    std: float
    reference: bool  # the Delta baseline itself (Delta_m = 0 by definition)


def _finite(values: Iterable[Optional[float]]) -> List[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def table_lines(rows: Rows) -> Tuple[List[Tuple[str, str, bool]], List[ModelRow]]:
    """The report table's task columns and lines (the primary task's column first)."""
    primary = next((r for r in rows if r["role"] == "multi_task"), None)
    return model_rows(rows, json.loads(primary["config_json"]).get("primary_task") if primary else None)


def model_points(lines: Sequence[ModelRow]) -> List[Point]:
    """The points of the Delta_m plots: the table's lines that are one model with a test Delta_m
    (the Delta reference among them, at 0)."""
    return [Point(line.name, line.params_m, line.gflops, mean(line.delta), pstdev(line.delta), line.reference)
            for line in lines if line.params_m is not None and line.delta]


def trial_histories(study_dir: str, trial_ids: Set[str]) -> Dict[str, List[Dict[str, Any]]]:
    """trial_id -> its reports, one per epoch in epoch order, read from the Tune trial folders
    under ``<study_dir>/tune``. A trial retried from a checkpoint repeats epochs: the last report
    of an epoch wins."""
    found: Dict[str, List[Dict[str, Any]]] = {}
    for path in sorted(glob.glob(os.path.join(study_dir, "tune", "*", "*", "result.json"))):
        with open(path) as fh:
            first = fh.readline()  # enough to tell whose trial this is
            if not first.strip() or json.loads(first).get("trial_id") not in trial_ids:
                continue
            reports = [json.loads(first)] + [json.loads(line) for line in fh if line.strip()]
        by_epoch = {int(r["epoch"]): r for r in reports if "epoch" in r}
        found[reports[0]["trial_id"]] = [by_epoch[e] for e in sorted(by_epoch)]
    return found


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _label_points(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str]) -> None:
    """Name each point at the nearest spot (right or left of it, above or below, then further
    away with a leader line) that overlaps no point, no label already placed and stays in the
    axes; failing all, above right moved up until clear. Models of equal size stay readable."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    radius = 6 * fig.dpi / 72  # a (ringed) marker's half width in pixels
    # labels keep off every other point, and off the spot just right of it, so that no label
    # reads as the name of a neighbour
    markers = [Bbox.from_extents(x - radius, y - radius, x + 3 * radius, y + radius)
               for x, y in ax.transData.transform(list(zip(xs, ys)))]
    placed: list = []
    spots = sorted((((side * dx, dy * (2 + rise)), "left" if side > 0 else "right", va)
                    for dx in (6, 30, 60, 90) for rise in (0, 8, 16, 24, 36, 48)
                    for side in (1, -1) for dy, va in ((1, "bottom"), (-1, "top"))),
                   key=lambda s: (math.hypot(*s[0]), -s[0][0], -s[0][1]))  # the nearest first; right, above

    def clashes(box) -> list:  # (a label sits beside its own point)
        return [b for j, b in enumerate(markers) if j != i and b.overlaps(box)] + [b for b in placed if b.overlaps(box)]

    def inside(box) -> bool:
        return frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1

    for i in sorted(range(len(xs)), key=lambda i: (ys[i], xs[i])):
        text = ax.annotate(labels[i], (xs[i], ys[i]), xytext=spots[0][0], textcoords="offset points", fontsize=8)
        for offset, ha, va in spots:
            text.set_position(offset)
            text.set_ha(ha)
            text.set_va(va)
            box = text.get_window_extent(renderer)
            if not clashes(box) and inside(box):
                break
        else:  # crowded: above right, as high as it takes
            offset = (6, 2.0)
            text.set_ha("left")
            text.set_va("bottom")
            for _ in range(len(xs) + 1):
                text.set_position(offset)
                box = text.get_window_extent(renderer)
                if not clashes(box):
                    break
                offset = (6, offset[1] + (max(b.y1 for b in clashes(box)) - box.y0 + 2) * 72 / fig.dpi)
        if abs(offset[0]) > 6 or abs(offset[1]) > 2:  # a leader line from a label moved away back to its point
            ax.annotate("", (xs[i], ys[i]), xytext=offset, textcoords="offset points",
                        arrowprops=dict(arrowstyle="-", color="0.5", lw=0.6, shrinkA=0, shrinkB=4))
        placed.append(text.get_window_extent(renderer))


def plot_delta(points: Sequence[Point], cost: str, path: str, study: str, baseline: str) -> str:
    """Test Delta_m against ``cost`` ("params" or "flops") with the Pareto front."""
    plt = _pyplot()
    xs = [p.params_m if cost == "params" else p.flops_g for p in points]
    ys = [p.delta for p in points]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.axhline(0.0, color="0.75", lw=0.8, zorder=0)
    front = pareto_front(list(zip(xs, ys)))
    fx, fy = [xs[i] for i in front], [ys[i] for i in front]
    span = max(xs) - min(xs) or 0.2 * max(xs)
    right = max(xs) + 0.35 * span  # room for the labels of the largest models
    ax.step(fx + [right], fy + fy[-1:], where="post", color="#d62728", lw=1.2, ls="--", label="Pareto front")
    ax.plot(fx, fy, "o", ms=11, mfc="none", mec="#d62728", mew=1.2)  # the models on the front, ringed
    models = [i for i, p in enumerate(points) if not p.reference]
    ax.errorbar([xs[i] for i in models], [ys[i] for i in models], yerr=[points[i].std for i in models], fmt="o",
                color="#1f77b4", ecolor="#1f77b4", capsize=3, ms=6, label="model (mean ± std over seeds)")
    for i in (i for i, p in enumerate(points) if p.reference):
        ax.plot(xs[i], ys[i], "*", color="black", ms=12, label=f"{points[i].label} ($\\Delta_m$ = 0 by definition)")
    ax.set_xlim(min(xs) - 0.1 * span, right)
    ax.set_xlabel("#params (M)" if cost == "params" else "FLOPS (G, multiply-accumulates)")
    ax.set_ylabel(f"test $\\Delta_m$ (%) vs {baseline}")
    ax.set_title(f"{study}: test $\\Delta_m$ vs {'#params' if cost == 'params' else 'FLOPS'}\n"
                 "(each model's selected setting; higher and to the left is better)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(y=0.1)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _label_points(ax, xs, ys, [p.label for p in points])
    return _save(fig, path)


def _styles(names: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """A line style per name: the ten colours of tab10, then the same colours dashed, then dotted."""
    cmap = _pyplot().get_cmap("tab10")
    return {name: {"color": cmap(i % 10), "ls": ("-", "--", ":")[i // 10 % 3]} for i, name in enumerate(names)}


def plot_weights(curves: Dict[str, Tuple[str, int, List[Dict[str, Any]]]], tasks: Sequence[str], path: str,
                 study: str) -> str:
    """One subplot per model: each task's weight per epoch. ``curves``: model -> (balancer, seed,
    reports); ``tasks``: the study's tasks, in the order of the legend."""
    plt = _pyplot()
    weighted = {k[7:] for _, _, reports in curves.values() for r in reports for k in r if k.startswith("weight/")}
    tasks = [t for t in tasks if t in weighted] + sorted(weighted - set(tasks))
    style = _styles(tasks)
    cols = min(3, len(curves))
    rows_n = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(max(5.5, 4.3 * cols), 3.0 * rows_n + 0.9), squeeze=False,
                             layout="constrained")
    for ax, (name, (balancer, seed, reports)) in zip(axes.flat, curves.items()):
        epochs = [r["epoch"] + 1 for r in reports]
        for task in tasks:
            if any(f"weight/{task}" in r for r in reports):
                ax.plot(epochs, [r.get(f"weight/{task}", math.nan) for r in reports], marker=".", **style[task])
        ax.set_title(f"{name} ({balancer}, seed {seed})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss weight")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(curves):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], marker=".", label=t, **style[t]) for t in tasks]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(tasks), 6), fontsize=8)
    fig.suptitle(f"{study}: loss weights per epoch (selected setting)", fontsize=10)
    return _save(fig, path)


def plot_val_curves(curves: Dict[str, List[List[Dict[str, Any]]]], path: str, study: str, baseline: str) -> str:
    """Validation Delta_m per epoch per model: mean over seeds with a ± std band. ``curves``:
    model -> one report list per seed. When the first epochs' values dwarf the rest (the later
    half of the epochs spans under a third of the whole range), a second panel zooms on that half."""
    plt = _pyplot()
    stats = {}  # model -> (epochs, means, stds)
    for name, seeds in curves.items():
        per_epoch: Dict[int, List[float]] = {}
        for reports in seeds:
            for r in reports:
                per_epoch.setdefault(int(r["epoch"]) + 1, []).extend(_finite([r.get("val_delta_m")]))
        epochs = [e for e in sorted(per_epoch) if per_epoch[e]]
        stats[name] = (epochs, [mean(per_epoch[e]) for e in epochs], [pstdev(per_epoch[e]) for e in epochs])
    last = max(e for epochs, _, _ in stats.values() for e in epochs)
    later = (last + 2) // 2  # the first epoch of the later half

    def band(since: int) -> List[float]:
        return [v for epochs, means, stds in stats.values() for e, m, s in zip(epochs, means, stds) if e >= since
                for v in (m - s, m + s)]

    zoom = last >= 4 and (max(band(later)) - min(band(later))) < (max(band(1)) - min(band(1))) / 3
    style = _styles(list(curves))
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(12.0 if zoom else 7.5, 4.5), squeeze=False,
                             layout="constrained")
    for ax in axes[0]:
        ax.axhline(0.0, color="0.75", lw=0.8, zorder=0)
        for name, (epochs, means, stds) in stats.items():
            seeds = len(curves[name])
            ax.plot(epochs, means, marker=".", label=f"{name} ({seeds} seed{'s' * (seeds > 1)})", **style[name])
            ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=style[name]["color"], alpha=0.12, lw=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"val $\\Delta_m$ (%) vs {baseline}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].set_title("all epochs" if zoom else "", fontsize=9)
    if zoom:
        low, high = min(band(later)), max(band(later))
        pad = 0.1 * (high - low) or 1.0
        axes[0][1].set_xlim(later - 0.2, last + 0.2)
        axes[0][1].set_ylim(low - pad, high + pad)
        axes[0][1].set_title(f"epochs {later}-{last} (zoom)", fontsize=9)
    fig.suptitle(f"{study}: validation $\\Delta_m$ per epoch (selected setting, mean ± std over seeds)", fontsize=10)
    if zoom or len(curves) > 6:  # below the axes, where it hides no curve
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=min(4, len(curves)),
                   fontsize=8)
    else:
        axes[0][0].legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_task_metrics(columns: Sequence[Tuple[str, str, bool]], lines: Sequence[ModelRow], path: str,
                      study: str) -> str:
    """Per task column of the table: a bar per model line (mean ± std over seeds), the single-task
    network's value as a dashed line."""
    plt = _pyplot()
    single = next((line for line in lines if line.role == "single_task"), None)
    models = [line for line in lines if line.role != "single_task"]
    # side by side while a panel stays narrow; one task per row for many models (a balancing study)
    cols = min(3, len(columns)) if len(models) <= 8 else 1
    rows_n = math.ceil(len(columns) / cols)
    width = max(3.6, 0.45 * len(models) + 1.6)
    fig, axes = plt.subplots(rows_n, cols, figsize=(width * cols, 3.6 * rows_n + 0.6), squeeze=False,
                             layout="constrained")
    for c, (ax, (task, metric, up)) in enumerate(zip(axes.flat, columns)):
        reference = mean(single.metrics[c]) if single is not None and single.metrics[c] else None
        shown = [line for line in models if line.metrics[c]]
        labels = [line.name for line in shown]
        means = [mean(line.metrics[c]) for line in shown]
        stds = [pstdev(line.metrics[c]) for line in shown]
        better = [reference is None or (m > reference if up else m < reference) for m in means]
        ax.bar(range(len(means)), means, yerr=stds if any(stds) else None, capsize=3, width=0.7,
               color=[BETTER if b else WORSE for b in better] if reference is not None else "#1f77b4")
        for x, (m, sd) in enumerate(zip(means, stds)):  # the value, above its error bar
            ax.annotate(f"{m:.3g}", (x, m + sd), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7, bbox=dict(facecolor="white", edgecolor="none", alpha=0.7, pad=0.3))
        if reference is not None:
            ax.axhline(reference, color="black", ls="--", lw=1.0)
        values = means + ([reference] if reference is not None else []) + [m + s for m, s in zip(means, stds)] \
            + [m - s for m, s in zip(means, stds)]
        if values:
            low, high = min(values), max(values)
            pad = 0.25 * (high - low) or 0.05 * abs(high) or 1.0
            ax.set_ylim(0.0 if 0.0 <= low <= pad else low - pad, high + pad)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(f"{metric} ({'higher' if up else 'lower'} is better)", fontsize=9)
        ax.set_title(f"{task}: test {metric}" + (f" (single task {reference:.3g})" if reference is not None else ""),
                     fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat[len(columns):]:
        ax.set_visible(False)
    fig.suptitle(f"{study}: primary test metric per task (selected setting, mean ± std over seeds)\n"
                 "dashed: the single-task network; green: better than it, red: worse", fontsize=10)
    return _save(fig, path)


def render_plots(study_dir: str, rows: Rows, out_dir: str, log: Callable[[str], None] = print) -> List[str]:
    """Write the study's PNGs into ``out_dir``; returns their paths. A picture without data is
    skipped with one ``log`` line saying why.

    Args:
        study_dir: the study folder (``<storage>/<study>``): its ``tune/`` trial folders give the
            per-epoch histories.
        rows: the study's results rows (``orchestrator.results.read_rows``), one run's.
        out_dir: where the PNGs go (created if missing); ``mtl plot`` uses the run's folder.
        log: one line per skipped picture.
    """
    os.makedirs(out_dir, exist_ok=True)
    study = next((r["study"] for r in rows if r.get("study")), os.path.basename(os.path.normpath(study_dir)))
    written: List[str] = []

    def skip(name: str, why: str) -> None:
        log(f"plots: {name} skipped: {why}")

    if not rows:
        skip("every plot", "no results rows")
        return written
    columns, lines = table_lines(rows)
    against_supervised = any(line.reference and line.role == "supervised_mtl" for line in lines)
    baseline = "supervised MTL" if against_supervised else "single-task networks"
    points = model_points(lines)
    if not any(not p.reference for p in points):
        skip("delta_vs_params.png and delta_vs_flops.png", "no model has a test Delta_m (no selected completed run)")
    else:
        written.append(plot_delta(points, "params", os.path.join(out_dir, "delta_vs_params.png"), study, baseline))
        counted = [p for p in points if p.flops_g is not None]
        if any(not p.reference for p in counted):
            written.append(plot_delta(counted, "flops", os.path.join(out_dir, "delta_vs_flops.png"), study, baseline))
        else:
            skip("delta_vs_flops.png", "no model has a FLOPS count")

    multi: Dict[str, List[Dict[str, Any]]] = {}  # experiment -> its selected runs, by seed
    for r in rows:
        if r["selected"] and r["role"] == "multi_task":
            multi.setdefault(r["experiment"], []).append(r)
    multi = {name: sorted(runs, key=lambda r: r["seed"]) for name, runs in multi.items()}
    histories = trial_histories(study_dir, {r["trial_id"] for runs in multi.values() for r in runs if r["trial_id"]})
    if not histories:
        why = (f"no Tune trial history of a selected multi-task run under {os.path.join(study_dir, 'tune')}"
               if multi else "the study has no selected multi-task run")
        skip("loss_weights.png and val_curves.png", why)
    else:
        weights = {}
        for name, runs in multi.items():
            reports = histories.get(runs[0]["trial_id"], [])
            if _weights_change(reports):
                weights[name] = (runs[0]["balancer"], runs[0]["seed"], reports)
        if weights:
            tasks = list(dict.fromkeys(t for runs in multi.values() for t in runs[0]["tasks"]))
            written.append(plot_weights(weights, tasks, os.path.join(out_dir, "loss_weights.png"), study))
        else:
            skip("loss_weights.png", "no model's balancer changed its loss weights over epochs")
        curves = {name: [histories[r["trial_id"]] for r in runs if r["trial_id"] in histories]
                  for name, runs in multi.items()}
        curves = {name: seeds for name, seeds in curves.items()
                  if any(r.get("val_delta_m") is not None for reports in seeds for r in reports)}
        if curves:
            written.append(plot_val_curves(curves, os.path.join(out_dir, "val_curves.png"), study, baseline))
        else:
            skip("val_curves.png", "no trial reported a validation Delta_m (no Delta baseline)")

    if not any(line.role != "single_task" and any(line.metrics) for line in lines):
        skip("task_metrics.png", "no model has test metrics (no selected completed run)")
    else:
        written.append(plot_task_metrics(columns, lines, os.path.join(out_dir, "task_metrics.png"), study))
    return written


def _weights_change(reports: Sequence[Dict[str, Any]]) -> bool:
    """Whether any task's reported loss weight differs between epochs."""
    keys = {k for r in reports for k in r if k.startswith("weight/")}
    return any(len({r.get(k) for r in reports}) > 1 for k in keys)


def add_plot_parser(subparsers: argparse._SubParsersAction) -> None:
    """``mtl plot STUDY [--storage DIR] [--out DIR]``."""
    text = "re-render a study's PNGs (Delta_m vs #params / FLOPS, loss weights, val curves, task bars)"
    p = subparsers.add_parser(
        "plot", help=text, description=text, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  mtl plot quickstart                       # ./mtl_runs/quickstart\n"
               "  mtl plot my_study --storage /nfs/mtl_runs --out figures/\n"
               "  mtl plot mtl_runs/quickstart")
    p.add_argument("study", help="a study folder, or a study name under --storage")
    p.add_argument("--storage", default=None, help="results root (default ./mtl_runs)")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: the newest run's folder, "
                                               "<study>/results/<run_id>/, beside its results)")


def plot_main(args: argparse.Namespace) -> int:
    """Render the PNGs of a stored study; prints their paths."""
    from orchestrator.report import rows_for
    from orchestrator.study import DEFAULT_STORAGE

    storage = args.storage or DEFAULT_STORAGE
    named = os.path.join(storage, args.study)
    study_dir = args.study if args.storage is None and not os.path.isdir(named) else named
    # the files ``mtl report`` reads, by the same rule
    rows = rows_for("plot", study_dir, hint=f" (give a study folder, or a study name under --storage {storage})")
    if rows is None:
        return 2
    run_id = max(r["run_id"] or "" for r in rows)
    if any((r["run_id"] or "") != run_id for r in rows):  # several runs' files, no gathered results.parquet
        print(f"mtl plot: plotting the newest run {run_id} of {sorted({r['run_id'] or '' for r in rows})}")
        rows = [r for r in rows if (r["run_id"] or "") == run_id]
    out_dir = args.out or os.path.join(study_dir, "results", run_id)
    for path in render_plots(study_dir, rows, out_dir):
        print(path)
    return 0

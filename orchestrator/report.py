"""Survey-style tables from the results store (like the survey's Table 3).

One row per model: the single-task networks (the best grid setting of each task, chosen on
val), then each multi-task experiment at its best setting (chosen on val Delta_m). Columns are
each task's primary test metric with its direction, #P (M), FLOPS (G, multiply-accumulates
like the survey) and Delta_m (%) on the test split. With several seeds a cell reads mean +- std.
"""
from __future__ import annotations

import csv
import io
import json
from statistics import mean, pstdev
from typing import Any, Dict, List, Optional, Sequence

FORMATS = ("markdown", "csv", "latex")


def _task_columns(rows: Sequence[Dict[str, Any]], primary_task: Optional[str]) -> List[tuple]:
    """[(task, metric, higher_is_better)] in table order (the primary task first)."""
    from trainables.build import build_tasks

    widest = max(rows, key=lambda r: len(_scored(r)))
    tasks = build_tasks(json.loads(widest["config_json"])["dataset"], _scored(widest))
    order = sorted(tasks, key=lambda t: t != primary_task)
    return [(t, tasks[t].primary_metric, tasks[t].higher_is_better) for t in order]


def _auxiliary(row: Dict[str, Any]) -> List[str]:
    return list(json.loads(row["config_json"]).get("auxiliary_tasks") or [])


def _scored(row: Dict[str, Any]) -> List[str]:
    """The row's tasks that Delta_m scores (auxiliary tasks are trained, not scored)."""
    aux = set(_auxiliary(row))
    return [t for t in row["tasks"] if t not in aux]


def _against_supervised(rows: Sequence[Dict[str, Any]]) -> bool:
    """Whether the multi-task rows' Delta_m is against the supervised MTL baseline (JTR's Delta)."""
    return any(r["role"] == "multi_task" and r.get("delta_baseline", "").startswith("supervised MTL") for r in rows)


def _cell(values: Sequence[float], digits: int = 2, signed: bool = False) -> str:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "-"
    fmt = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    text = fmt.format(mean(values))
    return text + (f" ± {pstdev(values):.{digits}f}" if len(values) > 1 else "")


def table_rows(rows: Sequence[Dict[str, Any]], primary_task: Optional[str] = None) -> tuple:
    """(header, body) of the table, body cells as strings."""
    if not rows:
        raise ValueError("no results rows to report")
    columns = _task_columns(rows, primary_task)
    header = ["Model"] + [f"{t} ({m}) {'↑' if up else '↓'}" for t, m, up in columns] + ["#P (M)", "FLOPS (G)", "Δm (%) ↑"]
    body = []
    chosen = [r for r in rows if r["selected"]]
    single = [r for r in chosen if r["role"] == "single_task"]
    if single:
        line = ["Single task"]
        for t, m, _ in columns:
            line.append(_cell([r["test_metrics"].get(f"{t}/{m}") for r in single if r["tasks"] == [t]]))
        per_task = {r["tasks"][0]: r for r in single}
        line.append(f"{sum(r['params'] for r in per_task.values()) / 1e6:.2f}")
        line.append(f"{sum(r['flops_g'] for r in per_task.values()):.2f}")
        line.append(_cell([0.0], signed=True) if not _against_supervised(rows) else "-")
        body.append(line)
    supervised = [r for r in chosen if r["role"] == "supervised_mtl"]
    if supervised:  # JTR's Delta baseline: Delta_m 0 when it is the reference, else against the single-task nets
        line = ["Supervised MTL"] + [_cell([r["test_metrics"].get(f"{t}/{m}") for r in supervised]) for t, m, _ in columns]
        line += [f"{supervised[0]['params'] / 1e6:.2f}", f"{supervised[0]['flops_g']:.2f}",
                 _cell([0.0], signed=True) if _against_supervised(rows) else _cell([r["test_delta_m"] for r in supervised], signed=True)]
        body.append(line)
    experiments = list(dict.fromkeys(r["experiment"] for r in rows if r["role"] == "multi_task"))
    for name in experiments:
        runs = [r for r in chosen if r["experiment"] == name]
        if not runs:
            body.append([name] + ["-"] * (len(columns) + 2) + ["(no completed trial)"])
            continue
        line = [name] + [_cell([r["test_metrics"].get(f"{t}/{m}") for r in runs]) for t, m, _ in columns]
        line += [f"{runs[0]['params'] / 1e6:.2f}", f"{runs[0]['flops_g']:.2f}",
                 _cell([r["test_delta_m"] for r in runs], signed=True)]
        body.append(line)
    body += _primary_rows(rows, chosen, single, columns)
    return header, body


def _primary_rows(rows, chosen, single, columns) -> List[List[str]]:
    """Rows composed from experiments that each have a different primary task (IAL Table I):
    each task's metric comes from the experiment where it was the primary task; Delta_m per
    seed over the composed metrics against the single-task networks."""
    from trainables.delta import delta_m

    by_balancer: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    for r in chosen:
        primary = json.loads(r["config_json"]).get("primary_task") if r["role"] == "multi_task" else None
        if primary:
            by_balancer.setdefault(r["balancer"], {}).setdefault(primary, []).append(r)
    lines = []
    baseline = {f"{t}/{m}": mean(r["test_metrics"][f"{t}/{m}"] for r in single if r["tasks"] == [t])
                for t, m, _ in columns if any(r["tasks"] == [t] for r in single)}
    directions = {f"{t}/{m}": up for t, m, up in columns}
    for balancer, per_task in by_balancer.items():
        if len(per_task) < 2:
            continue
        line = [f"{balancer} (each task primary)"]
        for t, m, _ in columns:
            line.append(_cell([r["test_metrics"].get(f"{t}/{m}") for r in per_task.get(t, [])]))
        seeds = sorted({r["seed"] for runs in per_task.values() for r in runs})
        deltas = []
        for seed in seeds:
            composed = {f"{t}/{m}": r["test_metrics"][f"{t}/{m}"] for t, m, _ in columns
                        for r in per_task.get(t, []) if r["seed"] == seed and f"{t}/{m}" in r["test_metrics"]}
            if len(composed) == len(columns) and len(baseline) == len(columns):
                deltas.append(delta_m(composed, baseline, directions))
        line += ["-", "-", _cell(deltas, signed=True)]
        lines.append(line)
    return lines


def render(rows: Sequence[Dict[str, Any]], fmt: str = "markdown", primary_task: Optional[str] = None) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
    header, body = table_rows(rows, primary_task)
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out).writerows([header] + body)
        return out.getvalue()
    if fmt == "latex":
        lines = ["\\begin{tabular}{l" + "r" * (len(header) - 1) + "}", " & ".join(header) + " \\\\", "\\hline"]
        lines += [" & ".join(c.replace("±", "$\\pm$") for c in line) + " \\\\" for line in body]
        return "\n".join(lines + ["\\end{tabular}"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt_line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    lines = [fmt_line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt_line(b) for b in body]
    against = "supervised MTL on the same labels" if _against_supervised(rows) else "the single-task networks"
    note = f"Δm: survey Eq. 10 on the test split against {against}; best setting per model chosen on val."
    return "\n".join(lines + [note] + auxiliary_notes(rows))


def auxiliary_notes(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """One line per model that trained auxiliary tasks (supervised, not in the columns or Δm)."""
    per_model: Dict[str, List[str]] = {}
    for r in rows:
        if r["role"] == "multi_task" and _auxiliary(r):
            per_model.setdefault(r["experiment"], _auxiliary(r))
    return [f"{name}: auxiliary tasks {', '.join(aux)} (trained and supervised, not scored in Δm)"
            for name, aux in per_model.items()]


def training_times(rows: Sequence[Dict[str, Any]]) -> List[List[str]]:
    """IAL Table II: per model, the wall time of training one run of its selected setting
    (mean ± std over seeds), and that time relative to training the single-task networks (the sum
    over tasks of their selected runs' mean). Rows: [model, seconds, ratio]."""
    chosen = [r for r in rows if r["selected"] and r.get("wall_time_s") is not None]
    single: Dict[str, List[float]] = {}
    for r in chosen:
        if r["role"] == "single_task":
            single.setdefault(r["tasks"][0], []).append(r["wall_time_s"])
    reference = sum(mean(v) for v in single.values()) if single else None
    out = []
    if reference:
        out.append(["Single task (all tasks)", f"{reference:.1f}", "1.00"])
    names = list(dict.fromkeys(r["experiment"] for r in chosen if r["role"] != "single_task"))
    for name in names:
        times = [r["wall_time_s"] for r in chosen if r["experiment"] == name]
        ratio = f"{mean(times) / reference:.2f}" if reference else "-"
        label = "Supervised MTL" if any(r["role"] == "supervised_mtl" for r in chosen if r["experiment"] == name) else name
        out.append([label, _cell(times, digits=1), ratio])
    return out


def render_times(rows: Sequence[Dict[str, Any]]) -> str:
    """The training-time table in markdown (see ``training_times``)."""
    body = training_times(rows)
    if not body:
        return ""
    header = ["Model", "training time (s) per run", "× single-task networks"]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt_line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    lines = [fmt_line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt_line(b) for b in body]
    return "\n".join(lines)

r"""Survey-style tables from the results store (like the survey's Table 3).

One row per model: the single-task networks (the best grid setting of each task, chosen on
val), then each multi-task experiment at its best setting (chosen on val Delta_m). Columns are
each task's primary test metric with its direction, #P (M), FLOPS (G, multiply-accumulates
like the survey) and Delta_m (%) on the test split. With several seeds a cell is the mean and
the population standard deviation (ddof 0) over the seeds.

Formats (``render``):
    markdown  the console table: "mean ± std" cells with 2 decimals, notes below it: what Delta_m
              is against, auxiliary tasks, and per model the trials that failed (diverged; the
              first reason), were stopped by ASHA or ended in an error, and why a model has no row.
    latex     a booktabs table that compiles as printed (``\usepackage{booktabs}``, and
              ``graphicx`` whose ``\resizebox`` shrinks a table wider than the line): text
              escaped, Delta and the arrows in math, numbers in math mode (a true minus), a
              caption naming the Delta baseline and the number of seeds, a label. The best
              value of each metric column and of Delta_m is bold: by the column's direction,
              compared at the printed precision (ties are all bold), among the models - never
              the single-task networks, nor the Delta_m of the Delta reference row (0 by
              definition) - and only where two or more values compete. #P and FLOPS are
              costs, not results: never bold.
    csv       for machines: ASCII only, "\n" line endings, one header line
              (model, role, <task>_<metric>_mean / _std ..., delta_m_mean, delta_m_std,
              params_m, gflops, n_seeds, delta_baseline), numbers at full precision, empty
              when missing; std is empty for one seed.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from statistics import mean, pstdev
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pyarrow.parquet as pq

FORMATS = ("markdown", "csv", "latex")
# the columns that make a Parquet file a results file (``mtl report`` skips other Parquet files)
RESULT_COLUMNS = ("study", "experiment", "role", "config_json")


@dataclass(frozen=True)
class ModelRow:
    """One line of the table, its numbers unformatted.

    Attributes:
        name: "Single task", "Supervised MTL", an experiment, or "<balancer> (each task primary)".
        role: "single_task" | "supervised_mtl" | "multi_task" | "composed".
        metrics: per task column, the test values over seeds (empty: none).
        params_m: #P in millions; None when the line is not one model.
        gflops: FLOPS in G multiply-accumulates; None when the line is not one model.
        delta: the test Delta_m (%) over seeds; None when the line has none.
        reference: the line is the Delta_m reference (its Delta_m is 0 by definition).
        seeds: how many seeds its numbers are over.
        delta_baseline: what its Delta_m is measured against (its results rows' text).
        note: said instead of Delta_m when the model has no completed trial.
    """

    name: str
    role: str
    metrics: Tuple[Tuple[float, ...], ...]
    params_m: Optional[float] = None
    gflops: Optional[float] = None
    delta: Optional[Tuple[float, ...]] = None
    reference: bool = False
    seeds: int = 0
    delta_baseline: str = ""
    note: str = ""


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
    return any(r["role"] == "multi_task" and (r.get("delta_baseline") or "").startswith("supervised MTL")
               for r in rows)


def _finite(values: Sequence[Optional[float]]) -> Tuple[float, ...]:
    """The values that were measured (no None, no NaN)."""
    return tuple(v for v in values if v is not None and v == v)


def _cell(values: Sequence[float], digits: int = 2, signed: bool = False) -> str:
    values = _finite(values)
    if not values:
        return "-"
    fmt = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    text = fmt.format(mean(values))
    return text + (f" ± {pstdev(values):.{digits}f}" if len(values) > 1 else "")


def _metrics(runs: Sequence[Dict[str, Any]], columns: Sequence[tuple]) -> Tuple[Tuple[float, ...], ...]:
    return tuple(_finite([r["test_metrics"].get(f"{t}/{m}") for r in runs]) for t, m, _ in columns)


def _seeds(runs: Sequence[Dict[str, Any]]) -> int:
    return len({r["seed"] for r in runs})


def _baseline_text(runs: Sequence[Dict[str, Any]]) -> str:
    return next((r["delta_baseline"] for r in runs if r.get("delta_baseline")), "")


def _one_model(name: str, role: str, runs: Sequence[Dict[str, Any]], columns: Sequence[tuple],
               delta: Tuple[float, ...], reference: bool = False) -> ModelRow:
    return ModelRow(name, role, _metrics(runs, columns), runs[0]["params"] / 1e6, runs[0]["flops_g"], delta,
                    reference, _seeds(runs), _baseline_text(runs))


def model_rows(rows: Sequence[Dict[str, Any]],
               primary_task: Optional[str] = None) -> Tuple[List[tuple], List[ModelRow]]:
    """The table's task columns [(task, metric, higher_is_better)] and its lines, unformatted."""
    if not rows:
        raise ValueError("no results rows to report")
    columns = _task_columns(rows, primary_task)
    against_supervised = _against_supervised(rows)
    chosen = [r for r in rows if r["selected"]]
    lines = []
    single = [r for r in chosen if r["role"] == "single_task"]
    if single:
        per_task = {r["tasks"][0]: r for r in single}
        metrics = tuple(_metrics([r for r in single if r["tasks"] == [t]], [(t, m, up)])[0] for t, m, up in columns)
        lines.append(ModelRow("Single task", "single_task", metrics,
                              sum(r["params"] for r in per_task.values()) / 1e6,
                              sum(r["flops_g"] for r in per_task.values()),
                              None if against_supervised else (0.0,), not against_supervised, _seeds(single),
                              _baseline_text(single)))
    supervised = [r for r in chosen if r["role"] == "supervised_mtl"]
    if supervised:  # JTR's Delta baseline: Delta_m 0 when it is the reference, else against the single-task nets
        delta = (0.0,) if against_supervised else _finite([r["test_delta_m"] for r in supervised])
        lines.append(_one_model("Supervised MTL", "supervised_mtl", supervised, columns, delta, against_supervised))
    experiments = list(dict.fromkeys(r["experiment"] for r in rows if r["role"] == "multi_task"))
    for name in experiments:
        runs = [r for r in chosen if r["experiment"] == name]
        if not runs:
            lines.append(ModelRow(name, "multi_task", ((),) * len(columns), note="(no completed trial)"))
            continue
        lines.append(_one_model(name, "multi_task", runs, columns, _finite([r["test_delta_m"] for r in runs])))
    lines += _primary_rows(chosen, single, supervised, columns)
    return columns, lines


def _primary_rows(chosen, single, supervised, columns) -> List[ModelRow]:
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
        metrics = tuple(_metrics(per_task.get(t, []), [(t, m, up)])[0] for t, m, up in columns)
        runs = [r for task_runs in per_task.values() for r in task_runs]
        seeds = sorted({r["seed"] for r in runs})
        deltas = []
        for seed in seeds:
            composed = {f"{t}/{m}": r["test_metrics"][f"{t}/{m}"] for t, m, _ in columns
                        for r in per_task.get(t, []) if r["seed"] == seed and f"{t}/{m}" in r["test_metrics"]}
            if len(composed) == len(columns) and len(baseline) == len(columns):
                deltas.append(delta_m(composed, baseline, directions))
        # against the single-task networks: the text the supervised MTL rows carry for them, if
        # the study has that baseline; else the study's own (then it is the single-task one)
        lines.append(ModelRow(f"{balancer} (each task primary)", "composed", metrics, delta=tuple(deltas),
                              seeds=len(seeds), delta_baseline=_baseline_text(supervised or runs)))
    return lines


def table_rows(rows: Sequence[Dict[str, Any]], primary_task: Optional[str] = None) -> tuple:
    """(header, body) of the console table, body cells as strings."""
    return _text_table(*model_rows(rows, primary_task))


def _text_table(columns: Sequence[tuple], lines: Sequence[ModelRow]) -> tuple:
    header = (["Model"] + [f"{t} ({m}) {'↑' if up else '↓'}" for t, m, up in columns]
              + ["#P (M)", "FLOPS (G)", "Δm (%) ↑"])
    size = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    body = [[line.name] + [_cell(v) for v in line.metrics] + [size(line.params_m), size(line.gflops)]
            + [line.note or ("-" if line.delta is None else _cell(line.delta, signed=True))] for line in lines]
    return header, body


def render(rows: Sequence[Dict[str, Any]], fmt: str = "markdown", primary_task: Optional[str] = None) -> str:
    """The table of ``rows`` in ``fmt`` (one of ``FORMATS``; see the module docstring)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
    columns, lines = model_rows(rows, primary_task)
    if fmt == "csv":
        return _csv(columns, lines)
    if fmt == "latex":
        return _latex(rows, columns, lines)
    header, body = _text_table(columns, lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt_line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    table = [fmt_line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt_line(b) for b in body]
    note = f"Δm: survey Eq. 10 on the test split against {_against(rows)}; best setting per model chosen on val."
    return "\n".join(table + [note] + auxiliary_notes(rows) + status_notes(rows))


def _against(rows: Sequence[Dict[str, Any]]) -> str:
    return "supervised MTL on the same labels" if _against_supervised(rows) else "the single-task networks"


_ASCII = {"Δ": "Delta", "±": "+-", "×": "x"}


def _ascii(text: str) -> str:
    """``text`` in ASCII: the table's symbols spelled out, accents dropped."""
    text = "".join(_ASCII.get(c, c) for c in text)
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _mean_std(values: Sequence[float]) -> List[Any]:
    if not values:
        return ["", ""]
    return [mean(values), pstdev(values) if len(values) > 1 else ""]


def _csv(columns: Sequence[tuple], lines: Sequence[ModelRow]) -> str:
    header = ["model", "role"]
    for t, m, _ in columns:
        stem = re.sub(r"[^A-Za-z0-9]+", "_", _ascii(f"{t}_{m}")).strip("_")
        header += [f"{stem}_mean", f"{stem}_std"]
    header += ["delta_m_mean", "delta_m_std", "params_m", "gflops", "n_seeds", "delta_baseline"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for line in lines:
        cells = [_ascii(line.name), line.role]
        for values in line.metrics:
            cells += _mean_std(values)
        cells += _mean_std(line.delta or ())
        cells += ["" if line.params_m is None else line.params_m, "" if line.gflops is None else line.gflops,
                  line.seeds, _ascii(line.delta_baseline)]
        writer.writerow(cells)  # floats as repr: the shortest text that reads back as the same number
    return out.getvalue()


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "Δ": r"$\Delta$", "±": r"$\pm$",
          "×": r"$\times$", "↑": r"$\uparrow$", "↓": r"$\downarrow$"}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX that prints it: the ten special characters escaped, the table's symbols in math."""
    return "".join(_LATEX.get(c, c) for c in text)


def _best(values: Sequence[Tuple[float, ...]], higher: bool) -> Optional[float]:
    """The best printed mean (2 decimals) among ``values``, or None with fewer than two to compare."""
    means = [float(f"{mean(v):.2f}") for v in values if v]
    if len(means) < 2:
        return None
    return max(means) if higher else min(means)


def _math(values: Sequence[float], best: Optional[float], signed: bool = False) -> str:
    """A number cell in math mode: "$mean \\pm std$", the mean bold when it prints as ``best``."""
    if not values:
        return "--"
    text = f"{mean(values):+.2f}" if signed else f"{mean(values):.2f}"
    if best is not None and float(text) == best:
        text = rf"\mathbf{{{text}}}"
    if len(values) > 1:
        text += rf" \pm {pstdev(values):.2f}"
    return f"${text}$"


def _latex(rows: Sequence[Dict[str, Any]], columns: Sequence[tuple], lines: Sequence[ModelRow]) -> str:
    arrow = {True: r"$\uparrow$", False: r"$\downarrow$"}
    header = (["Model"] + [f"{latex_escape(f'{t} ({m})')} {arrow[up]}" for t, m, up in columns]
              + [r"\#P (M)", "FLOPS (G)", r"$\Delta_m$ (\%) $\uparrow$"])
    models = [line for line in lines if line.role != "single_task"]
    best = [_best([line.metrics[j] for line in models], up) for j, (_, _, up) in enumerate(columns)]
    delta_best = _best([line.delta for line in models if line.delta and not line.reference], True)
    size = lambda x: "--" if x is None else f"{x:.2f}"  # noqa: E731
    body = []
    for line in lines:
        ranked = line.role != "single_task"
        cells = [latex_escape(line.name)] + [_math(v, best[j] if ranked else None) for j, v in enumerate(line.metrics)]
        cells += [size(line.params_m), size(line.gflops)]
        if line.note or line.delta is None:
            cells.append(latex_escape(line.note) or "--")
        else:
            cells.append(_math(line.delta, delta_best if ranked and not line.reference else None, signed=True))
        body.append(" & ".join(cells) + r" \\")
    study = next((r["study"] for r in rows if r.get("study")), "results")
    label = re.sub(r"[^A-Za-z0-9]+", "-", study).strip("-") or "results"
    head = [r"% mtl report --format latex: needs \usepackage{booktabs} and \usepackage{graphicx}",
            r"\begin{table}[t]", r"\centering", rf"\caption{{{_caption(rows, lines, study, best, delta_best)}}}",
            rf"\label{{tab:{label}}}",
            r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",  # shrink a wide table to fit
            r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    return "\n".join(head + body + [r"\bottomrule", r"\end{tabular}}", r"\end{table}"])


def _caption(rows, lines: Sequence[ModelRow], study: str, best, delta_best) -> str:
    """Which study, the number of seeds, what Delta_m is against, what is bold, the units."""
    seeds = sorted({line.seeds for line in lines if line.seeds})
    if seeds in ([], [1]):
        spread = "one seed"
    else:
        spread = rf"mean $\pm$ std over {seeds[0]}{f' to {seeds[-1]}' if len(seeds) > 1 else ''} seeds"
    texts = list(dict.fromkeys(line.delta_baseline for line in lines
                               if line.role in ("multi_task", "composed") and line.delta_baseline))
    against = "; ".join(texts) or _against(rows)
    parts = [f"Test split of study {latex_escape(study)}, each model at its best grid setting chosen on val; "
             f"{spread}.", rf"$\Delta_m$ (\%): survey Eq. 10 against {latex_escape(against)}."]
    if any(b is not None for b in best) or delta_best is not None:
        parts.append("Bold: the best value of each column (the single-task networks excluded).")
    parts.append(r"\#P: millions of parameters; FLOPS: G multiply-accumulates.")
    parts += [latex_escape(note) + "." for note in auxiliary_notes(rows)]
    return " ".join(parts)


def load_rows(path: str, all_runs: bool = False) -> Tuple[List[Dict[str, Any]], List[str]]:
    """The results rows of a results file or a study directory, and one line per Parquet file
    skipped as not a results file (unreadable, without the ``RESULT_COLUMNS``, or of other types)
    or as a run that did not finish.

    A directory gives its ``results.parquet`` (the latest finished run) or, without one or with
    ``all_runs``, every other ``.parquet`` file under it: of finished runs only unless ``all_runs``
    (a run folder whose ``status.json`` says interrupted, killed, failed or still running is left
    out; folders written before markers existed are read). Raises FileNotFoundError when there is
    no such file or no .parquet file.
    """
    from orchestrator.results import read_rows
    from orchestrator.runs import is_finished

    skipped = []
    if os.path.isdir(path):
        latest = os.path.join(path, "results.parquet")  # the last finished run's: all_runs reads each run's
        files = [latest] if os.path.exists(latest) and not all_runs else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
            if f.endswith(".parquet") and os.path.join(d, f) != latest)
        if not files:
            raise FileNotFoundError(f"no results .parquet files under {path}")
        unfinished = sorted({os.path.dirname(f) for f in files if not is_finished(os.path.dirname(f))})
        if unfinished and not all_runs:
            files = [f for f in files if os.path.dirname(f) not in unfinished]
            names = ", ".join(map(os.path.basename, unfinished))
            skipped.append(f"{len(unfinished)} run(s) that did not finish ({names}): finished runs only by default "
                           "(--all-runs reads them too)")
    elif os.path.exists(path):
        files = [path]
    else:
        raise FileNotFoundError(f"results file {path} does not exist (give a results.parquet or a study directory)")
    rows: List[Dict[str, Any]] = []
    for file in files:
        try:
            missing = [c for c in RESULT_COLUMNS if c not in pq.read_schema(file).names]
            if missing:
                skipped.append(f"{file}: not a results file (no column {', '.join(missing)})")
                continue
            rows += read_rows(file)
        except (OSError, ValueError, TypeError, NotImplementedError) as err:  # pyarrow's errors derive from these
            skipped.append(f"{file}: not a results file ({type(err).__name__}: {err})")
    return rows, skipped



def rows_for(command: str, path: str, all_runs: bool = False, hint: str = "") -> Optional[List[Dict[str, Any]]]:
    """``load_rows`` for a CLI command: the skipped files and any failure as one stderr line each
    (prefixed "mtl <command>:"); None when there are no rows to show (the command exits 2)."""
    import sys

    try:
        rows, skipped = load_rows(path, all_runs=all_runs)
    except FileNotFoundError as err:
        print(f"mtl {command}: {err}{hint}", file=sys.stderr)
        return None
    for line in skipped:
        print(f"mtl {command}: skipped {line}", file=sys.stderr)
    if not rows:
        print(f"mtl {command}: no results rows in {path}"
              + (" (every Parquet file there was skipped)" if skipped else ""), file=sys.stderr)
        return None
    return rows

def auxiliary_notes(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """One line per model that trained auxiliary tasks (supervised, not in the columns or Δm)."""
    per_model: Dict[str, List[str]] = {}
    for r in rows:
        if r["role"] == "multi_task" and _auxiliary(r):
            per_model.setdefault(r["experiment"], _auxiliary(r))
    return [f"{name}: auxiliary tasks {', '.join(aux)} (trained and supervised, not scored in Δm)"
            for name, aux in per_model.items()]


_STATUS_WORDS = {"failed": "failed (diverged)", "stopped": "stopped early by ASHA", "error": "ended in an error"}


def status_notes(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """One line per model (experiment) whose trials did not all complete: how many failed,
    were stopped or ended in an error, the first failure's reason, and, for a model without a
    row of numbers, that this is why. A row without a status counts as completed."""
    per_model: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        per_model.setdefault(r["experiment"], []).append(r)
    notes = []
    for name, runs in per_model.items():
        statuses = [r.get("status") or "completed" for r in runs]
        counts: Dict[str, int] = {}
        for status in statuses:
            if status != "completed":
                counts[status] = counts.get(status, 0) + 1
        if not counts:
            continue
        what = ", ".join(f"{n} {_STATUS_WORDS.get(status, status)}" for status, n in counts.items())
        first = next((r["error"] for r, status in zip(runs, statuses)
                      if status in ("failed", "error") and r.get("error")), "")
        why = f"; first: {first}" if first else ""
        if any(r.get("selected") for r in runs):
            notes.append(f"{name}: of its {len(runs)} trial(s), {what}; left out of its row{why}")
        elif "completed" not in statuses:
            notes.append(f"{name}: no row - none of its {len(runs)} trial(s) completed ({what}){why}")
        else:
            notes.append(f"{name}: no row - no grid setting completed on every seed with a finite val Δm "
                         f"({what} of {len(runs)} trial(s)){why}")
    return notes


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

"""The results store: one Parquet row per finished trial. The schema lives here only, and so
does ``best_setting``, the one rule that picks a model's (or a baseline's) setting on val.

Rows are written per experiment into ``<study_dir>/results/<run_id>/<experiment>.parquet``
(write to a temporary file, then rename: a crash never leaves a half-written file) and the
run's rows are gathered into ``<study_dir>/results.parquet`` at the end of a run. Earlier runs
stay in ``results/``.
"""
from __future__ import annotations

import json
import math
import os
from statistics import mean
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from trainables.atomic import atomic_write

T = TypeVar("T")

METRICS = pa.map_(pa.string(), pa.float64())

SCHEMA = pa.schema([
    ("study", pa.string()),
    ("run_id", pa.string()),
    ("experiment", pa.string()),
    ("role", pa.string()),            # "single_task" | "multi_task"
    ("architecture", pa.string()),
    ("balancer", pa.string()),
    ("tasks", pa.list_(pa.string())),
    ("trial_id", pa.string()),
    ("config_json", pa.string()),     # the resolved TrialConfig
    ("config_hash", pa.string()),     # of the whole config
    ("setting_hash", pa.string()),    # of the config without the seed: groups seeds
    ("seed", pa.int64()),
    ("val_metrics", METRICS),         # "task/metric" -> value, last epoch
    ("test_metrics", METRICS),
    ("val_delta_m", pa.float64()),    # percent, survey Eq. 10
    ("test_delta_m", pa.float64()),
    ("delta_baseline", pa.string()),  # what Delta_m is computed against
    ("params", pa.int64()),
    ("flops_g", pa.float64()),        # multiply-accumulates / 1e9, as the survey's FLOPS column
    ("wall_time_s", pa.float64()),
    ("epochs_done", pa.int64()),
    ("status", pa.string()),          # "completed" | "stopped" (ASHA) | "error"
    ("error", pa.string()),
    ("selected", pa.bool_()),         # the best setting of its experiment, chosen on val
    ("cached", pa.bool_()),           # a single-task result reused from the baseline cache
    ("checkpoint_path", pa.string()),
    ("derivation_json", pa.string()), # a grouping search's tree and evidence (affinities), or ""
])

_DEFAULTS: Dict[str, Any] = {"val_metrics": {}, "test_metrics": {}, "selected": False, "cached": False,
                             "derivation_json": ""}


def make_table(rows: Iterable[Dict[str, Any]]) -> pa.Table:
    rows = list(rows)
    names = set(SCHEMA.names)
    for i, row in enumerate(rows):
        extra = sorted(set(row) - names)
        if extra:
            raise KeyError(f"results row {i} has fields {extra} that are not in the schema")
    columns = {name: [_cell(row, name) for row in rows] for name in SCHEMA.names}
    return pa.table(columns, schema=SCHEMA)


def _cell(row: Dict[str, Any], name: str) -> Any:
    value = row.get(name, _DEFAULTS.get(name))
    if name.endswith("_metrics"):
        return [(k, float(v)) for k, v in sorted((value or {}).items())]
    return value


def write_rows(rows: List[Dict[str, Any]], path: str) -> str:
    """Write rows to ``path`` atomically; returns the path."""
    table = make_table(rows)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_rows(path: str) -> List[Dict[str, Any]]:
    """Rows of a results file, or of every results file under a directory (a study dir)."""
    if os.path.isdir(path):
        latest = os.path.join(path, "results.parquet")
        if os.path.exists(latest):
            path = latest
        else:
            files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".parquet"))
            if not files:
                raise FileNotFoundError(f"no results .parquet files under {path}")
            return [r for f in files for r in read_rows(f)]
    if not os.path.exists(path):
        raise FileNotFoundError(f"results file {path} does not exist (give a results.parquet or a study directory)")
    table = pq.read_table(path)
    for name in SCHEMA.names:  # files written before a column was added read it as empty
        if name not in table.column_names:
            table = table.append_column(SCHEMA.field(name), pa.nulls(len(table), SCHEMA.field(name).type))
    table = table.select(SCHEMA.names).cast(SCHEMA)
    rows = table.to_pylist()
    for row in rows:
        for key in ("val_metrics", "test_metrics"):
            row[key] = dict(row[key] or [])
    return rows


def config_of(row: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(row["config_json"])


def best_setting(runs: Iterable[T], setting: Callable[[T], Hashable],
                 score: Callable[[T], Optional[float]]) -> Optional[Hashable]:
    """The setting whose runs have the highest mean validation score over seeds, or None.

    The one selection rule of the product, for single-task baselines (score: the primary val
    metric, signed so higher is better) and for models (score: val Delta_m) alike. Runs without
    a score are left out; a setting with a non-finite score on any seed (a diverged run) is never
    chosen. Test metrics are never looked at. Ties: the first setting.
    """
    groups: Dict[Hashable, List[float]] = {}
    for run in runs:
        value = score(run)
        if value is not None:
            groups.setdefault(setting(run), []).append(float(value))
    finite = {key: values for key, values in groups.items() if all(math.isfinite(v) for v in values)}
    return max(finite, key=lambda key: mean(finite[key])) if finite else None

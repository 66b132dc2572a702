"""The results store: one Parquet row per finished trial. The schema lives here only, and so
does ``best_setting``, the one rule that picks a model's (or a baseline's) setting on val.

Rows are written per experiment into ``<study_dir>/results/<run_id>/<experiment>.parquet``
(write to a temporary file, then rename: a crash never leaves a half-written file) and the
run's rows are gathered into ``<study_dir>/results.parquet`` at the end of a run. Earlier runs
stay in ``results/``.

A file reads as a plain table in pandas (``pd.read_parquet(path)``):

- **Metrics** are flat float64 columns ``val/<task>/<metric>`` and ``test/<task>/<metric>``
  (last epoch), one per metric that any row of the file has; a row without it holds null. A
  diverged run keeps its NaN (NaN is a value, null is "not measured"). ``read_rows`` gives each
  row back its ``val_metrics`` / ``test_metrics`` dicts ("task/metric" -> value, non-null only).
- **Hyper-parameters** are columns too (``HYPERPARAMETERS``: optimizer, lr, batch size,
  scheduler, weight decay, epochs, backbone and head names, the balancer's and architecture's
  params and the regularisers as JSON), derived by the writer from the row's ``config_json``,
  which stays the whole truth: a row may carry them only with the values its config gives.
- **Provenance** (``provenance()``: Python, platform, host, package versions, the project's git
  commit and whether its work tree was dirty, time, command line) sits in every file's schema
  metadata under ``b"mtl.provenance"`` (``read_provenance``); ``write_provenance`` puts the same
  into a run folder's ``provenance.json``.
- **Checkpoint paths** are stored relative to the file's folder when the checkpoint lies under
  the same storage root (the folder above the study: ``<storage>/<study>/...``, the single-task
  cache ``<storage>/_cache`` included), so a copied or moved storage folder keeps them; others
  (another disk, an object store URI) stay as given. ``read_rows`` returns absolute paths. Each
  file also records the folder it was written in (``b"mtl.written_in"``): a relative path that
  does not resolve beside the file, but does from there, resolves from there - a study folder
  moved out of its storage still finds the single-task checkpoints left in the old cache.

Files written before these columns (metrics as Arrow map columns, no hyper-parameter columns,
absolute checkpoint paths, no provenance) read as before; a column a file lacks reads as None.
"""
from __future__ import annotations

import functools
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from statistics import mean
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from trainables.atomic import atomic_write, write_json

T = TypeVar("T")

SPLITS = ("val", "test")  # metric columns are "<split>/<task>/<metric>"
PROVENANCE_KEY = b"mtl.provenance"
WRITTEN_IN_KEY = b"mtl.written_in"
PACKAGES = ("mtl-orchestrator", "torch", "torchvision", "ray", "pyarrow", "optuna", "timm", "numpy")
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HYPERPARAMETERS = [
    ("optimizer", pa.string()),
    ("lr", pa.float64()),
    ("batch_size", pa.int64()),
    ("scheduler", pa.string()),
    ("weight_decay", pa.float64()),
    ("epochs", pa.int64()),
    ("backbone", pa.string()),
    ("head", pa.string()),
    ("balancer_params", pa.string()),      # JSON object
    ("architecture_params", pa.string()),  # JSON object
    ("regularisers", pa.string()),         # JSON list of {"name", "params"}
]
HYPERPARAMETERS = tuple(name for name, _ in _HYPERPARAMETERS)

SCHEMA = pa.schema([  # every file's fixed columns; the metric columns follow them
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
    *_HYPERPARAMETERS,                # views of config_json
    ("val_delta_m", pa.float64()),    # percent, survey Eq. 10
    ("test_delta_m", pa.float64()),
    ("delta_baseline", pa.string()),  # what Delta_m is computed against
    ("params", pa.int64()),
    ("flops_g", pa.float64()),        # multiply-accumulates / 1e9, as the survey's FLOPS column
    ("wall_time_s", pa.float64()),
    ("epochs_done", pa.int64()),
    ("status", pa.string()),          # "completed" | "stopped" (ASHA) | "failed" (diverged) | "error"
    ("error", pa.string()),
    ("selected", pa.bool_()),         # the best setting of its experiment, chosen on val
    ("cached", pa.bool_()),           # a single-task result reused from the baseline cache
    ("checkpoint_path", pa.string()), # relative to the file's folder under the storage root
    ("derivation_json", pa.string()), # a grouping search's tree and evidence (affinities), or ""
])
ROW_FIELDS = frozenset(SCHEMA.names) | {f"{split}_metrics" for split in SPLITS}

_DEFAULTS: Dict[str, Any] = {"selected": False, "cached": False, "derivation_json": ""}


def schema_for(metric_columns: Sequence[str]) -> pa.Schema:
    """A file's schema: ``SCHEMA`` followed by one float64 column per metric column name."""
    return pa.schema(list(SCHEMA) + [pa.field(name, pa.float64()) for name in metric_columns])


def hyperparameters(config_json: Optional[str]) -> Dict[str, Any]:
    """The ``HYPERPARAMETERS`` columns of a row, from its resolved config (None where it has none)."""
    config = json.loads(config_json) if config_json else {}
    model = config.get("model") or {}
    return {
        "optimizer": config.get("optimizer"), "lr": config.get("lr"), "batch_size": config.get("batch_size"),
        "scheduler": config.get("scheduler"), "weight_decay": config.get("weight_decay"),
        "epochs": config.get("epochs"),
        "backbone": (model.get("backbone") or {}).get("name"), "head": (model.get("head") or {}).get("name"),
        "balancer_params": _json((config.get("balancer") or {}).get("params")),
        "architecture_params": _json((model.get("architecture") or {}).get("params")),
        "regularisers": _json(config.get("regularisers")),
    }


def _json(value: Any) -> Optional[str]:
    return None if value is None else json.dumps(value, sort_keys=True)


def make_table(rows: Iterable[Dict[str, Any]], folder: str) -> pa.Table:
    """The rows as a table for a file in ``folder`` (which checkpoint paths are made relative to)."""
    rows = list(rows)
    for i, row in enumerate(rows):
        extra = sorted(set(row) - ROW_FIELDS)
        if extra:
            raise KeyError(f"results row {i} has fields {extra} that are not in the schema")
    derived = [hyperparameters(row.get("config_json")) for row in rows]
    for i, (row, hp) in enumerate(zip(rows, derived)):
        for name in HYPERPARAMETERS:
            if name in row and row[name] != hp[name]:
                raise ValueError(f"results row {i}: {name}={row[name]!r} but its config_json gives {hp[name]!r}; "
                                 f"the hyper-parameter columns are derived from config_json: change the config")
    columns: Dict[str, List[Any]] = {}
    for name in SCHEMA.names:
        if name in HYPERPARAMETERS:
            columns[name] = [hp[name] for hp in derived]
        elif name == "checkpoint_path":
            columns[name] = [_stored_checkpoint(row.get(name), folder) for row in rows]
        else:
            columns[name] = [row.get(name, _DEFAULTS.get(name)) for row in rows]
    metric_columns = []
    for split in SPLITS:
        metrics = [row.get(f"{split}_metrics") or {} for row in rows]
        for key in sorted(set().union(*metrics)):
            metric_columns.append(f"{split}/{key}")
            columns[metric_columns[-1]] = [None if m.get(key) is None else float(m[key]) for m in metrics]
    return pa.table(columns, schema=schema_for(metric_columns))


def _storage_root(folder: str) -> str:
    """The storage folder of a results file's folder: above ``<study>`` or ``<study>/results/<run_id>``."""
    folder = os.path.abspath(folder)
    parent = os.path.dirname(folder)
    study = os.path.dirname(parent) if os.path.basename(parent) == "results" else folder
    return os.path.dirname(study)


def _stored_checkpoint(path: Optional[str], folder: str) -> Optional[str]:
    if not path or "://" in path:  # none, or an object store
        return path
    path, root = os.path.abspath(path), _storage_root(folder)
    return os.path.relpath(path, folder) if os.path.commonpath([path, root]) == root else path


def _resolved_checkpoint(path: Optional[str], folder: str, written_in: Optional[str]) -> Optional[str]:
    if not path or "://" in path or os.path.isabs(path):
        return path
    here = os.path.normpath(os.path.join(folder, path))
    if written_in and not os.path.exists(here):
        there = os.path.normpath(os.path.join(written_in, path))
        if os.path.exists(there):
            return there
    return here


def write_rows(rows: List[Dict[str, Any]], path: str) -> str:
    """Write rows to ``path`` atomically, with the provenance in its metadata; returns the path."""
    folder = os.path.dirname(os.path.abspath(path))
    table = make_table(rows, folder).replace_schema_metadata({
        PROVENANCE_KEY: json.dumps(provenance(), sort_keys=True), WRITTEN_IN_KEY: folder})
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
    written_in = (table.schema.metadata or {}).get(WRITTEN_IN_KEY, b"").decode() or None
    folder = os.path.dirname(os.path.abspath(path))
    rows = []
    for stored in table.to_pylist():
        row = {name: stored.get(name) for name in SCHEMA.names}  # a column newer than the file reads as None
        row.update(hyperparameters(row["config_json"]))
        row["checkpoint_path"] = _resolved_checkpoint(row["checkpoint_path"], folder, written_in)
        for split in SPLITS:
            row[f"{split}_metrics"] = _metrics(stored, split)
        rows.append(row)
    return rows


def _metrics(stored: Dict[str, Any], split: str) -> Dict[str, float]:
    old = stored.get(f"{split}_metrics")  # a map column: files written before the flat columns
    if old is not None:
        return dict(old)
    prefix = f"{split}/"
    return {name[len(prefix):]: value for name, value in stored.items()
            if name.startswith(prefix) and value is not None}


def provenance() -> Dict[str, Any]:
    """Where and with what a result was made: Python, platform, host, the versions of
    ``PACKAGES`` that are installed, the project's git commit and dirty flag (when it runs from a
    git checkout), the time (UTC) and the command line."""
    info: Dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname(),
        "packages": {name: version for name, version in ((n, _version(n)) for n in PACKAGES) if version},
    }
    git = _git_state(PROJECT_ROOT)
    if git is not None:
        info["git"] = {"commit": git[0], "dirty": git[1]}
    info["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    info["command"] = shlex.join(sys.argv)
    return info


def _version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def _git_state(root: str) -> Optional[Tuple[str, bool]]:
    """(commit, dirty) of the checkout at ``root``, or None. Read once per process: the first
    call, at a study's start, describes the code that the process imported."""
    if not os.path.exists(os.path.join(root, ".git")):  # e.g. installed into site-packages
        return None
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "-C", root, "status", "--porcelain"], capture_output=True, text=True,
                                check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):  # no git, not a repository git trusts, too slow
        return None
    return commit, bool(status.strip())


def write_provenance(run_dir: str) -> str:
    """``provenance()`` as ``<run_dir>/provenance.json``, written atomically; returns the path."""
    return write_json(os.path.join(run_dir, "provenance.json"), provenance())


def read_provenance(path: str) -> Optional[Dict[str, Any]]:
    """The provenance a results Parquet file was written with, or None (files older than it)."""
    raw = (pq.read_schema(path).metadata or {}).get(PROVENANCE_KEY)
    return json.loads(raw) if raw else None


def config_of(row: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(row["config_json"])


def best_setting(runs: Iterable[T], setting: Callable[[T], Hashable],
                 score: Callable[[T], Optional[float]],
                 failed: Callable[[T], bool] = lambda run: False) -> Optional[Hashable]:
    """The setting whose runs have the highest mean validation score over seeds, or None.

    The one selection rule of the product, for single-task baselines (score: the primary val
    metric, signed so higher is better) and for models (score: val Delta_m) alike. Runs without
    a score are left out; a setting with a failed run (``failed``: the train loop ended it as
    diverged) or a non-finite score on any seed is never chosen, so a diverged seed is not
    averaged away by the others. Test metrics are never looked at. Ties: the first setting.
    """
    groups: Dict[Hashable, List[float]] = {}
    for run in runs:
        value = math.nan if failed(run) else score(run)
        if value is not None:
            groups.setdefault(setting(run), []).append(float(value))
    finite = {key: values for key, values in groups.items() if all(math.isfinite(v) for v in values)}
    return max(finite, key=lambda key: mean(finite[key])) if finite else None

"""Run one study: spec -> baselines (actor pool, cached) -> Tune per experiment -> results.

Everything that can be wrong with the spec or the data is checked before Ray starts.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from typing import Any, Callable, Dict, List

from orchestrator import baselines as bl
from orchestrator import report, results
from orchestrator.plan import Experiment, complexity, expand, smoke, validate
from orchestrator.ray_env import cluster_resources, start_ray
from orchestrator.spec import SpecError, StudySpec
from orchestrator.tuning import check_fits, run_experiment, slots
from trainables.build import architecture_info, build_dataset, build_tasks, prepare_model, primary_directions
from trainables.config import TrialConfig
from trainables.delta import delta_m
from trainables.registry import DATASETS

DEFAULT_STORAGE = "mtl_runs"


def run_study(spec: StudySpec, storage: str = DEFAULT_STORAGE, smoke_run: bool = False,
              log: Callable[[str], None] = print, verbose: int = 0) -> Dict[str, Any]:
    """Run ``spec``; returns {"results": path, "rows": [...], "table": str, "wall_time_s": float}."""
    t0 = time.time()
    if smoke_run:
        spec = smoke(spec)
    info = validate(spec)  # names, params, plug-in pairs, labels: before any data or Ray work
    if "://" in storage:
        raise SpecError(f"--storage {storage!r}: object-store URIs are not supported yet; give a filesystem "
                        "path that every node sees (a local folder, or an NFS/EFS mount on a cluster)")
    storage = os.path.abspath(os.path.expanduser(storage))
    study_dir = os.path.join(storage, spec.name)
    cache_dir = os.path.join(storage, "_cache", "baselines")
    log(f"study {spec.name!r}: dataset {spec.dataset.name}, tasks {list(spec.tasks)}, "
        f"{len(spec.experiments)} experiment(s){' [smoke]' if smoke_run else ''}")
    models = [exp.model(spec) for exp in spec.experiments]
    for model in {json.dumps(m.to_dict(), sort_keys=True): m for m in models}.values():
        try:
            prepare_model(model)  # e.g. pretrained weights: fetched here or refused in one line
        except ValueError as err:
            raise SpecError(str(err)) from None
    data_root = os.path.abspath(os.path.expanduser(spec.dataset.root)) if spec.dataset.root else None
    DATASETS.get(spec.dataset.name).prepare(data_root, **dict(spec.dataset.params))  # generate / check once
    single, multi = expand(spec, info, data_root)
    if spec.dataset.labels:  # one label file for every model of the study
        from trainables.datasets.partial import materialize

        train_set = build_dataset(spec.dataset.plugin, data_root, "train", spec.tasks)
        try:
            label_file = materialize(study_dir, len(train_set), list(spec.tasks), dict(spec.dataset.labels))
        except ValueError as err:  # e.g. a weights file with fewer rows than the training split
            raise SpecError(f"dataset.labels: {err}") from None
        log(f"partial labels {dict(spec.dataset.labels)}: {label_file}")
        single = [dataclasses.replace(e, base=dataclasses.replace(e.base, label_file=label_file)) for e in single]
        multi = [dataclasses.replace(e, base=dataclasses.replace(e.base, label_file=label_file)) for e in multi]
    log(f"{len(single[0].settings)} grid setting(s) x {len(spec.train.seeds)} seed(s) per model; "
        f"{len(single)} single-task baseline model(s)")

    run_id = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join(study_dir, "results", run_id)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "spec.json"), "w") as fh:
        json.dump(spec.to_dict(), fh, indent=1)

    start_ray(log)
    cluster = cluster_resources()
    res = spec.resources
    if not os.environ.get("RAY_ADDRESS"):  # a joined cluster may autoscale; a local one cannot
        check_fits(res, cluster)
    actors = res.baseline_actors or slots(res.cpus_per_worker, res.gpus_per_worker, cluster)  # one actor = one worker
    base_results = bl.ensure_baselines(
        [c for e in single for c in e.trial_configs()], cache_dir, actors,
        {"num_cpus": res.cpus_per_worker, "num_gpus": res.gpus_per_worker}, log)
    directions = primary_directions(build_tasks(spec.dataset.plugin, spec.tasks))
    by_experiment: Dict[str, List[dict]] = {}
    for r in base_results:
        by_experiment.setdefault(r["config"]["experiment"], []).append(r)
    common = dict(study=spec.name, run_id=run_id, delta_baseline="single-task networks, best grid setting on val")

    rows: List[Dict[str, Any]] = []
    complexity_cache: Dict[str, tuple] = {}
    for exp in single:
        task = exp.base.tasks[0]
        mine = by_experiment.get(exp.name, [])
        chosen = bl.best_baselines(mine, {k: v for k, v in directions.items() if k.split("/")[0] == task})
        exp_rows = [_row(r, exp, common, complexity_cache, directions, chosen[task]["val"], chosen[task]["test"])
                    for r in mine]
        for row in exp_rows:
            row["selected"] = row["setting_hash"] == chosen[task]["setting_hash"] and row["status"] == "completed"
        rows += _write(exp_rows, run_dir, exp.name)

    for exp in multi:
        log(f"experiment {exp.name}: {len(exp.settings) * len(exp.seeds)} trial(s) through Ray Tune")
        best = bl.best_baselines([r for name in exp.baselines for r in by_experiment.get(name, [])], directions)
        baseline_val = {k: best[k.split("/")[0]]["val"][k] for k in directions}
        baseline_test = {k: best[k.split("/")[0]]["test"][k] for k in directions}
        init = {}
        if architecture_info(exp.base.model.architecture).init_from_single_task:
            init = {task: best[task]["checkpoint"] for task in exp.base.tasks}
            log(f"  {exp.name} starts from the single-task networks: {init}")
        exp = dataclasses.replace(exp, base=dataclasses.replace(exp.base, baseline_val=baseline_val,
                                                                baseline_test=baseline_test, init_checkpoints=init))
        outcomes = run_experiment(exp, spec.search, res, os.path.join(study_dir, "tune"), cluster, verbose)
        exp_rows = [_row(o, exp, common, complexity_cache, directions, baseline_val, baseline_test)
                    for o in outcomes]
        _select(exp_rows)
        rows += _write(exp_rows, run_dir, exp.name)

    path = results.write_rows(rows, os.path.join(study_dir, "results.parquet"))
    table = report.render(rows, primary_task=spec.primary_task)
    wall = time.time() - t0
    log("\n" + table + "\n")
    log(f"results: {path} ({len(rows)} rows; all runs under {os.path.join(study_dir, 'results')})")
    log(f"TensorBoard: tensorboard --logdir {os.path.join(study_dir, 'tune')}")
    log(f"wall time: {wall:.0f}s")
    return {"results": path, "rows": rows, "table": table, "wall_time_s": wall, "study_dir": study_dir}


def _row(outcome: dict, exp: Experiment, common: dict, cache: dict, directions: Dict[str, bool],
         baseline_val: Dict[str, float], baseline_test: Dict[str, float]) -> Dict[str, Any]:
    # the row's config leaves out the baselines' numbers: they are the row's delta_baseline
    cfg = TrialConfig.from_dict({k: v for k, v in outcome["config"].items()
                                 if k not in ("baseline_val", "baseline_test")})
    metrics = outcome["metrics"]
    keys = {k: d for k, d in directions.items() if k.split("/")[0] in cfg.tasks}
    val = {k[4:]: v for k, v in metrics.items() if k.startswith("val/")}
    test = {k[5:]: v for k, v in metrics.items() if k.startswith("test/")}
    model_key = json.dumps([cfg.model.to_dict(), cfg.tasks, cfg.dataset.to_dict()], sort_keys=True, default=str)
    if model_key not in cache:
        cache[model_key] = complexity(cfg)
    params, gmacs = cache[model_key]
    has = lambda m: all(k in m for k in keys)  # noqa: E731
    return dict(
        common, experiment=exp.name, role=exp.role, architecture=cfg.model.architecture.name, balancer=cfg.balancer.name,
        tasks=list(cfg.tasks), trial_id=outcome.get("trial_id", ""),
        config_json=json.dumps(cfg.to_dict(), sort_keys=True), config_hash=cfg.config_hash(),
        setting_hash=cfg.config_hash(exclude=("seed",)), seed=cfg.seed, val_metrics=val, test_metrics=test,
        val_delta_m=delta_m(val, baseline_val, keys) if has(val) else None,
        test_delta_m=delta_m(test, baseline_test, keys) if has(test) else None,
        params=params, flops_g=gmacs, wall_time_s=outcome.get("wall_time_s"),
        epochs_done=int(metrics.get("epoch", -1)) + 1, status=outcome["status"], error=outcome.get("error", ""),
        cached=bool(outcome.get("cached", False)), checkpoint_path=outcome.get("checkpoint_path", ""))


def _select(rows: List[Dict[str, Any]]) -> None:
    """Mark the setting with the best mean validation Delta_m over its seeds (never test)."""
    best = results.best_setting([r for r in rows if r["status"] == "completed"],
                                setting=lambda r: r["setting_hash"], score=lambda r: r["val_delta_m"])
    if best is not None:
        for row in rows:
            row["selected"] = row["setting_hash"] == best and row["status"] == "completed"


def _write(rows: List[Dict[str, Any]], run_dir: str, experiment: str) -> List[Dict[str, Any]]:
    results.write_rows(rows, os.path.join(run_dir, experiment.replace("/", "__") + ".parquet"))
    return rows

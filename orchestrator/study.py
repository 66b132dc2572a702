"""Run one study: spec -> baselines (actor pool, cached) -> derived trees -> Tune per experiment -> results.

The phases are functions (``prepare``, ``baselines``, ``derive``) so that ``mtl group`` can run
the first three alone. Everything that can be wrong with the spec or the data is checked before
Ray starts.

Each run has its folder ``<study>/results/<run_id>/`` with a status marker (``orchestrator/runs.py``)
and one Parquet file per experiment, written as the experiment ends; ``results.parquet`` gathers a
finished run's rows. A Ctrl-C stops the study (no further experiment starts) and marks the run
``interrupted``; ``mtl resume`` continues it in the same folder.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from orchestrator import baselines as bl
from orchestrator import report, results, runs
from orchestrator.plan import Experiment, complexity, expand, smoke, validate
from orchestrator.ray_env import alive_nodes, cluster_resources, joins_cluster, start_ray
from orchestrator.spec import SUPERVISED_MTL, SearchSpec, SpecError, StudySpec
from orchestrator.storage import TUNE, Mirror, check_shared, join, stage_study
from orchestrator.tuning import (
    ExperimentInterrupted,
    batchable,
    check_fits,
    dashboards,
    run_experiments,
    run_name,
    slots,
)
from trainables.atomic import write_json
from trainables.build import (
    architecture_info,
    build_dataset,
    build_tasks,
    prepare_model,
    primary_directions,
    regulariser_info,
)
from trainables.config import TrialConfig
from trainables.delta import delta_m
from trainables.registry import DATASETS
from trainables.tracking import TENSORBOARD, experiment_dir

DEFAULT_STORAGE = "mtl_runs"
CACHE = os.path.join("_cache", "baselines")  # <storage>/_cache/baselines/<key>: the single-task cache


@dataclass
class Prepared:
    """A validated study with its data prepared and its experiments expanded (no Ray yet)."""

    spec: StudySpec
    study_dir: str
    cache_dir: str
    single: List[Experiment]
    multi: List[Experiment]
    directions: Dict[str, bool]
    log: Callable[[str], None]
    mirror: Optional[Mirror] = None  # --storage is an object store: the local staging copy of it
    tune_path: str = ""              # Tune's and Train's storage_path: <storage>/<study>/tune (a URI too)

    def sync(self) -> None:
        """Push the study's files (not Tune's: Ray writes those to the store itself) to an object store."""
        if self.mirror is not None:
            self.mirror.push(self.spec.name, skip=(TUNE,))


def prepare(spec: StudySpec, storage: str, smoke_run: bool, log: Callable[[str], None]) -> Prepared:
    """Everything before Ray: validation, pretrained weights, the data, the plan, partial labels."""
    if smoke_run:
        spec = smoke(spec)
    info = validate(spec)  # names, params, plug-in pairs, labels: before any data or Ray work
    uri = storage
    storage, mirror = stage_study(uri, spec.name)  # an object store: a wrong endpoint, bucket or credentials
    if mirror is not None:                          # fail here in one line, before any work
        log(f"storage {uri}: object store; the study's files are staged in {mirror.staging}, "
            "Tune's state goes to the store directly")
    study_dir = os.path.join(storage, spec.name)
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
        from trainables.datasets.partial import LabelMasked, materialize

        train_set = build_dataset(spec.dataset.plugin, data_root, "train", spec.tasks)
        try:
            label_file = materialize(study_dir, len(train_set), list(spec.tasks), dict(spec.dataset.labels))
            LabelMasked.from_file(train_set, label_file, spec.tasks)  # its rows fit the split, as fit will use it
        except ValueError as err:  # e.g. a weights file with fewer rows than the training split
            raise SpecError(f"dataset.labels: {err}") from None
        log(f"partial labels {dict(spec.dataset.labels)}: {label_file}")
        single = [dataclasses.replace(e, base=dataclasses.replace(e.base, label_file=label_file)) for e in single]
        multi = [dataclasses.replace(e, base=dataclasses.replace(e.base, label_file=label_file)) for e in multi]
    log(f"{len(single[0].settings)} grid setting(s) x {len(spec.train.seeds)} seed(s) per model; "
        f"{len(single)} single-task baseline model(s)")
    tune_path = join(uri if mirror is not None else storage, spec.name, TUNE)
    return Prepared(spec, study_dir, os.path.join(storage, CACHE), single, multi,
                    primary_directions(build_tasks(spec.dataset.plugin, spec.tasks)), log, mirror, tune_path)


class Cluster:
    """The Ray side of a study: started (or joined) once, sized for the spec's workers."""

    def __init__(self, p: Prepared):
        start_ray(p.log)
        self.resources = cluster_resources()
        if p.mirror is None:  # a plain path on a multi-node cluster must be shared storage
            check_shared(os.path.dirname(p.study_dir), alive_nodes())
        res = p.spec.resources
        if not joins_cluster():  # a joined cluster may autoscale; a local one cannot
            check_fits(res, self.resources)
        self.actors = res.baseline_actors or slots(res.cpus_per_worker, res.gpus_per_worker, self.resources)
        self.actor_options = {"num_cpus": res.cpus_per_worker, "num_gpus": res.gpus_per_worker}


def baselines(p: Prepared, cluster: Cluster) -> Dict[str, List[dict]]:
    """Every single-task result of the study (cached or trained now), by experiment name."""
    configs = [c for e in p.single for c in e.trial_configs()]
    if p.mirror is not None:  # the entries other studies cached in the store
        for cfg in configs:
            p.mirror.pull(f"{CACHE}/{bl.cache_key(cfg)}")
    base_results = bl.ensure_baselines(configs, p.cache_dir, cluster.actors, cluster.actor_options, p.log,
                                       mirror=(p.mirror.uri, p.mirror.staging) if p.mirror is not None else None)
    if p.mirror is not None:  # those trained now, maybe on other nodes (each actor pushed its own)
        for r in base_results:
            if not r.get("cached"):
                p.mirror.pull(f"{CACHE}/{bl.cache_key(TrialConfig.from_dict(r['config']))}")
    bl.link_events(base_results, p.cache_dir, os.path.join(p.study_dir, TENSORBOARD))  # cached: shared by studies
    by_experiment: Dict[str, List[dict]] = {}
    for r in base_results:
        by_experiment.setdefault(r["config"]["experiment"], []).append(r)
    return by_experiment


def derive(p: Prepared, cluster: Cluster, exp: Experiment, best: Dict[str, dict]) -> Tuple[Experiment, Any]:
    """Run ``exp``'s grouping search on the single-task networks ``best``; the experiment with the
    derived architecture parameters, and the ``Derivation``."""
    from orchestrator.grouping import GROUPINGS, GroupingContext, tree_summary
    from orchestrator.grouping.actor import SearchActor

    search = GROUPINGS.get(exp.grouping.name)(params=exp.grouping.params)

    def run_jobs(method: str, jobs) -> List[Any]:  # results in the order of the jobs
        return list(bl.run_on_actors(SearchActor, method, jobs, cluster.actors, cluster.actor_options, ordered=True))

    work_dir = os.path.join(p.cache_dir, "grouping")
    p.log(f"experiment {exp.name}: grouping search {exp.grouping.name} {dict(exp.grouping.params)}")
    start = time.time()
    derivation = search.search(GroupingContext(exp, best, run_jobs, work_dir, p.log))
    seconds = time.time() - start
    derivation = dataclasses.replace(derivation, details={**derivation.details, "search_wall_time_s": seconds})
    p.log(f"  {exp.name}: tree {tree_summary(derivation.tree)} (search {seconds:.0f}s)")
    arch = exp.base.model.architecture
    model = dataclasses.replace(exp.base.model, architecture=dataclasses.replace(
        arch, params={**arch.params, **derivation.architecture_params}))
    return dataclasses.replace(exp, base=dataclasses.replace(exp.base, model=model)), derivation


def best_baselines(p: Prepared, by_experiment: Dict[str, List[dict]], exp: Experiment) -> Dict[str, dict]:
    """The best single-task network of each task for ``exp``'s backbone and head (chosen on val)."""
    return bl.best_baselines([r for name in exp.baselines for r in by_experiment.get(name, [])], p.directions)


def run_study(spec: StudySpec, storage: str = DEFAULT_STORAGE, smoke_run: bool = False,
              log: Callable[[str], None] = print, verbose: int = 0, resume: bool = False) -> Dict[str, Any]:
    """Run ``spec``; returns {"results": path, "rows": [...], "table": str, "wall_time_s": float}.

    ``resume``: continue the study's latest interrupted (or killed) run in its own folder, ``spec``
    being that run's ``spec.json``: experiments it finished are kept as they are, the one it was in
    continues through ``Tuner.restore``. A Ctrl-C marks the run ``interrupted`` and raises
    ``runs.StudyInterrupted``; ``results.parquet`` is written for a finished run only.
    """
    t0 = time.time()
    p = prepare(spec, storage, smoke_run, log)
    spec = p.spec
    run_id, run_dir, marker = _open_run(p, resume)
    tracker = runs.RunStatus(run_dir, len(p.single) + len(p.multi), marker.get("experiments_done", ()),
                             marker.get("started"))
    tracker.write(runs.RUNNING)
    p.sync()
    try:
        rows = _run_experiments(p, run_id, run_dir, tracker, marker.get("experiment_running"), verbose)
        path = results.write_rows(rows, os.path.join(p.study_dir, "results.parquet"))
    except KeyboardInterrupt:  # Ctrl-C, in Tune (ExperimentInterrupted) or anywhere else
        tracker.write(runs.INTERRUPTED)
        p.sync()
        log(f"run {run_id} interrupted after {len(tracker.done)} of {tracker.total} experiment(s); "
            f"their rows are in {run_dir}")
        raise runs.StudyInterrupted(run_dir) from None
    except BaseException:
        tracker.write(runs.FAILED)
        p.sync()
        raise
    tracker.write(runs.FINISHED)
    table = report.render(rows, primary_task=spec.primary_task)
    from orchestrator.plots import render_plots

    for png in render_plots(p.study_dir, rows, run_dir, log):  # mtl plot re-renders them
        log(f"plot: {png}")
    p.sync()
    times = report.render_times(rows)
    if times:
        log("training time per run of each model's selected setting (IAL Table II; mtl report --times):\n" + times)
    log(f"results: {path} ({len(rows)} rows; all runs under {os.path.join(p.study_dir, 'results')})")
    for line in dashboards(p.study_dir, spec.loggers, any(e.weight_search for e in p.multi)):
        log(line)  # TensorBoard, and MLflow / W&B / Optuna where the study uses them
    wall = time.time() - t0
    log(f"wall time: {wall:.0f}s")
    log("\n" + table)  # the last thing printed
    return {"results": path, "rows": rows, "table": table, "wall_time_s": wall, "study_dir": p.study_dir}


def _open_run(p: Prepared, resume: bool) -> Tuple[str, str, Dict[str, Any]]:
    """(run id, run folder, its marker): the latest unfinished run with ``resume``, else a new one."""
    results_dir = os.path.join(p.study_dir, "results")
    unfinished = runs.latest_unfinished(results_dir)
    command = f"mtl resume {p.spec.name} --storage {os.path.dirname(p.study_dir)}"
    stopped = runs.reap_orphans(runs.read_status(unfinished) or {}) if unfinished else []
    if stopped:  # the Ray agents a SIGKILLed driver leaves running
        p.log(f"stopped {len(stopped)} Ray process(es) left by the killed run {os.path.basename(unfinished)}: "
              + ", ".join(f"{pid} {cmd}" for pid, cmd in stopped))
    if resume:
        if unfinished is None:
            raise SpecError(f"study {p.spec.name!r}: no interrupted or killed run to resume under {results_dir} "
                            f"(mtl status {p.spec.name} shows its latest run)")
        marker = runs.read_status(unfinished) or {}
        how = "its driver was killed" if marker.get("killed") else "interrupted"
        p.log(f"resuming run {os.path.basename(unfinished)} ({how}): "
              f"{len(marker.get('experiments_done', []))} of {marker.get('experiments_total')} experiment(s) done")
        return os.path.basename(unfinished), unfinished, marker
    if unfinished is not None:
        p.log(f"run {os.path.basename(unfinished)} of this study did not finish: `{command}` continues it; "
              "this run starts afresh")
    run_id, run_dir = runs.create_run_dir(results_dir)
    with open(os.path.join(run_dir, "spec.json"), "w") as fh:
        json.dump(p.spec.to_dict(), fh, indent=1)
    results.write_provenance(run_dir)  # package versions, git commit, host, command line
    return run_id, run_dir, {}


def _run_experiments(p: Prepared, run_id: str, run_dir: str, tracker: runs.RunStatus, resuming: Optional[str],
                     verbose: int) -> List[Dict[str, Any]]:
    """Every experiment's rows, each experiment's written to ``run_dir`` as it ends. Experiments in
    ``tracker.done`` keep their files as they are; ``resuming`` names the one Tune continues."""
    spec, directions, log = p.spec, p.directions, p.log
    cluster = Cluster(p)
    tracker.write(runs.RUNNING)  # now with the local Ray's processes, for a resume after a SIGKILL to stop
    by_experiment = baselines(p, cluster)
    common = dict(study=spec.name, run_id=run_id, delta_baseline=DELTA_TEXT[spec.delta_baseline])

    rows: List[Dict[str, Any]] = []
    complexity_cache: Dict[str, tuple] = {}
    supervised = None  # JTR's Delta baseline: (val, test) metrics of the selected supervised MTL setting
    for exp in p.single:  # from the cache: computed again on a resume, written once
        if exp.role == SUPERVISED_MTL:
            supervised, exp_rows = _supervised_mtl(p, by_experiment, exp, common, complexity_cache)
        else:
            task = exp.base.tasks[0]
            mine = by_experiment.get(exp.name, [])
            chosen = bl.best_baselines(mine, {k: v for k, v in directions.items() if k.split("/")[0] == task})
            exp_rows = [_row(r, exp, common, complexity_cache, directions, chosen[task]["val"], chosen[task]["test"])
                        for r in mine]
            for row in exp_rows:
                row["selected"] = row["setting_hash"] == chosen[task]["setting_hash"] and row["status"] == "completed"
        if exp.name not in tracker.done:
            _write(exp_rows, run_dir, exp.name)
            tracker.experiment_done(exp.name)
        rows += exp_rows

    pending: List[_Pending] = []
    kept: Dict[str, List[Dict[str, Any]]] = {}
    for index, exp in enumerate(p.multi, 1):
        if exp.name in tracker.done:
            kept[exp.name] = results.read_rows(_file(run_dir, exp.name))
            log(f"experiment {index}/{len(p.multi)} {exp.name}: done in this run before, "
                f"{len(kept[exp.name])} row(s) kept")
        else:
            pending.append(_prepare_experiment(p, cluster, by_experiment, supervised, index, exp))
    leader: Optional[Tuple[str, float]] = None  # the best selected model so far, on val
    for group in _schedule(pending, spec.search, lambda e: _cost(e, complexity_cache)):
        exps = [g.exp for g in group]
        name = run_name(exps)
        tracker.experiment_started(name)
        started = time.time()
        first, trials = min(g.index for g in group), sum(e.num_trials for e in exps)
        if len(group) == 1:
            log(f"experiment {first}/{len(p.multi)} {exps[0].name}: {trials} trial(s) through Ray Tune")
        else:
            log(f"experiments {first}-{first + len(group) - 1}/{len(p.multi)} ({', '.join(e.name for e in exps)}, "
                f"longest first): {trials} trial(s) through one Ray Tune run")
        try:
            outcomes = run_experiments(exps, spec.search, spec.resources, p.tune_path,
                                       cluster.resources, verbose, position=(first, len(p.multi)),
                                       study_dir=p.study_dir, loggers=spec.loggers, resume=name == resuming, log=log)
        except ExperimentInterrupted as stop:  # the trials that ended are kept; the experiments are not done
            for g in group:
                mine = [o for o in stop.outcomes if o["config"].get("experiment") == g.exp.name]
                _write(g.rows(mine, common, complexity_cache, directions), run_dir, g.exp.name)
                log(f"experiment {g.index}/{len(p.multi)} {g.exp.name} interrupted: {len(mine)} ended trial(s) "
                    f"kept in {_file(run_dir, g.exp.name)}")
            raise
        seconds = time.time() - started
        for g in sorted(group, key=lambda g: g.index):
            mine = [o for o in outcomes if o["config"].get("experiment") == g.exp.name]
            exp_rows = kept[g.exp.name] = _write(g.rows(mine, common, complexity_cache, directions), run_dir, g.exp.name)
            tracker.experiment_done(g.exp.name)
            leader = _experiment_done(exp_rows, g.exp.name, g.index, len(p.multi), seconds, leader, log)
            chosen = next((r for r in exp_rows if r["selected"] and os.path.isdir(r["checkpoint_path"] or "")), None)
            if g.exp.base.regularisers and chosen is not None:  # e.g. MGM's generated images, beside the results
                from trainables.train_loop import regulariser_artifacts

                for path in regulariser_artifacts(chosen["checkpoint_path"], run_dir, g.exp.name.replace("/", "__")):
                    log(f"  {g.exp.name}: {path}")
        p.sync()
    return rows + [r for exp in p.multi for r in kept[exp.name]]  # in the spec's order, whatever ran first


@dataclass
class _Pending:
    """A multi-task experiment ready for Tune: its baselines known, its tree derived, its start
    (single-task networks, teachers) and its TensorBoard folder set in ``exp.base``."""

    index: int
    exp: Experiment  # its base carries the Delta_m baseline (baseline_val / baseline_test)
    derivation_json: str = ""

    def rows(self, outcomes: List[dict], common: dict, cache: dict, directions: Dict[str, bool]) -> List[Dict[str, Any]]:
        base = self.exp.base
        made = [_row(o, self.exp, common, cache, directions, base.baseline_val, base.baseline_test) for o in outcomes]
        for row in made:
            row["derivation_json"] = self.derivation_json
        _select(made)
        return made


def _prepare_experiment(p: Prepared, cluster: Cluster, by_experiment: Dict[str, List[dict]],
                        supervised: Optional[Tuple[Dict[str, float], Dict[str, float]]], index: int,
                        exp: Experiment) -> _Pending:
    """Everything an experiment needs before its trials: its Delta_m baseline, its grouping search
    (run now, on the actor pool), its start from single-task networks and its teachers."""
    log, directions = p.log, p.directions
    best = best_baselines(p, by_experiment, exp)
    derivation_json = ""
    if exp.grouping is not None:
        exp, derivation = derive(p, cluster, exp, best)
        derivation_json = json.dumps(derivation.details, sort_keys=True, default=float)
    baseline_val = {k: best[k.split("/")[0]]["val"][k] for k in directions}
    baseline_test = {k: best[k.split("/")[0]]["test"][k] for k in directions}
    if supervised is not None:
        baseline_val, baseline_test = supervised
    init = {}
    if architecture_info(exp.base.model.architecture).init_from_single_task:
        # auxiliary tasks have no single-task network: their part of the model starts fresh
        init = {task: best[task]["checkpoint"] for task in exp.base.scored_tasks}
        log(f"  {exp.name} starts from the single-task networks: {init}")
    teachers = {}
    if any(regulariser_info(r).needs_teachers for r in exp.base.regularisers):  # MuST: frozen teachers
        teachers = {task: best[task]["checkpoint"] for task in exp.base.scored_tasks}
        log(f"  {exp.name} learns from the single-task networks as teachers: {teachers}")
    if (init or teachers) and p.mirror is not None and alive_nodes() > 1:
        raise SpecError(f"experiment {exp.name}: it starts from (or learns from) the single-task networks, whose "
                        f"checkpoints are staged on this node only with --storage {p.mirror.uri}; on a multi-node "
                        "cluster give a shared filesystem path as --storage for this study")
    events = experiment_dir(os.path.join(p.study_dir, TENSORBOARD), exp.name)  # + /<setting>-seed<k> per trial
    exp = dataclasses.replace(exp, base=dataclasses.replace(exp.base, baseline_val=baseline_val,
                                                            baseline_test=baseline_test, init_checkpoints=init,
                                                            teacher_checkpoints=teachers, events_dir=events))
    return _Pending(index, exp, derivation_json)


def _schedule(pending: List[_Pending], search: SearchSpec, cost: Callable[[Experiment], float]) -> List[List[_Pending]]:
    """The Tune runs of the pending experiments: one for all the ``batchable`` ones (longest trials
    first), then one per other experiment in the spec's order."""
    batch = sorted((g for g in pending if batchable(g.exp, search)), key=lambda g: -cost(g.exp))  # stable
    return ([batch] if batch else []) + [[g] for g in pending if not batchable(g.exp, search)]


def _complexity(cfg: TrialConfig, cache: dict) -> tuple:
    """(#parameters, GMACs) of ``cfg``'s model, computed once per model, tasks and dataset."""
    model_key = json.dumps([cfg.model.to_dict(), cfg.tasks, cfg.dataset.to_dict()], sort_keys=True, default=str)
    if model_key not in cache:
        cache[model_key] = complexity(cfg)
    return cache[model_key]


def _cost(exp: Experiment, cache: dict) -> float:
    """The relative cost of one of ``exp``'s trials: forward GMACs x epochs."""
    return _complexity(exp.base, cache)[1] * exp.base.epochs


def _experiment_done(rows: List[Dict[str, Any]], name: str, index: int, total: int, seconds: float,
                     leader: Optional[Tuple[str, float]], log: Callable[[str], None]) -> Optional[Tuple[str, float]]:
    """Log the end of an experiment: its selected setting's val Delta_m and the best so far."""
    chosen = [r["val_delta_m"] for r in rows if r["selected"] and r["val_delta_m"] is not None]
    failed = sum(1 for r in rows if r["status"] != "completed")
    note = f", {failed} trial(s) not completed" if failed else ""
    if not chosen:
        log(f"experiment {index}/{total} {name} done in {seconds:.0f}s: no completed trial with a val Δm{note}")
        return leader
    dm = sum(chosen) / len(chosen)
    if leader is None or dm > leader[1]:
        leader = (name, dm)
    log(f"experiment {index}/{total} {name} done in {seconds:.0f}s: val Δm {dm:+.2f}% (selected setting, "
        f"mean of {len(chosen)} seed(s)){note}; best so far {leader[0]} {leader[1]:+.2f}%")
    return leader


def _row(outcome: dict, exp: Experiment, common: dict, cache: dict, directions: Dict[str, bool],
         baseline_val: Dict[str, float], baseline_test: Dict[str, float]) -> Dict[str, Any]:
    # the row's config leaves out the baselines' numbers: they are the row's delta_baseline
    cfg = TrialConfig.from_dict({k: v for k, v in outcome["config"].items()
                                 if k not in ("baseline_val", "baseline_test")})
    metrics = outcome["metrics"]
    keys = {k: d for k, d in directions.items() if k.split("/")[0] in cfg.tasks}
    val = {k[4:]: v for k, v in metrics.items() if k.startswith("val/")}
    test = {k[5:]: v for k, v in metrics.items() if k.startswith("test/")}
    params, gmacs = _complexity(cfg, cache)
    has = lambda m: all(k in m for k in keys)  # noqa: E731
    return dict(
        common, experiment=exp.name, role=exp.role, architecture=cfg.model.architecture.name, balancer=cfg.balancer.name,
        tasks=list(cfg.tasks), trial_id=outcome.get("trial_id", ""),
        config_json=json.dumps(cfg.to_dict(), sort_keys=True), config_hash=cfg.config_hash(),
        setting_hash=cfg.config_hash(exclude=("seed",)), seed=cfg.seed, val_metrics=val, test_metrics=test,
        val_delta_m=delta_m(val, baseline_val, keys) if has(val) else None,
        test_delta_m=delta_m(test, baseline_test, keys) if has(test) else None,
        params=params, flops_g=gmacs, wall_time_s=outcome.get("wall_time_s"),
        # a failed run reports the epoch it diverged in, which it did not finish
        epochs_done=int(metrics.get("epoch", -1)) + (0 if metrics.get("failed") else 1),
        status=outcome["status"], error=outcome.get("error", ""), selected=False,  # set by the selection
        cached=bool(outcome.get("cached", False)), checkpoint_path=outcome.get("checkpoint_path", ""))


DELTA_TEXT = {"single_task": "single-task networks, best grid setting on val",
              SUPERVISED_MTL: "supervised MTL (mtl_baseline, fixed weights) on the same labels, best grid setting on val"}


def _supervised_mtl(p: Prepared, by_experiment: Dict[str, List[dict]], exp: Experiment, common: dict,
                    cache: dict) -> Tuple[Tuple[Dict[str, float], Dict[str, float]], List[Dict[str, Any]]]:
    """The supervised MTL baseline's rows (Delta_m against the single-task networks, selected on
    val like every model) and the (val, test) metrics of its selected setting, mean over seeds."""
    best = best_baselines(p, by_experiment, exp)
    single_val = {k: best[k.split("/")[0]]["val"][k] for k in p.directions}
    single_test = {k: best[k.split("/")[0]]["test"][k] for k in p.directions}
    exp_rows = [_row(r, exp, {**common, "delta_baseline": DELTA_TEXT["single_task"]}, cache, p.directions,
                     single_val, single_test) for r in by_experiment.get(exp.name, [])]
    _select(exp_rows)
    chosen = [r for r in exp_rows if r.get("selected")]
    if not chosen:
        raise bl.BaselineFailed(f"the supervised MTL baseline {exp.name} "
                                f"{bl.failure_summary(by_experiment.get(exp.name, []))}{bl.BaselineFailed.CONSEQUENCE}")
    metrics = tuple({k: sum(r[f"{split}_metrics"][k] for r in chosen) / len(chosen) for k in p.directions}
                    for split in ("val", "test"))
    p.log(f"Delta baseline: supervised MTL, {len(chosen)} seed(s) of its best setting on val")
    return metrics, exp_rows


def _select(rows: List[Dict[str, Any]]) -> None:
    """Mark the setting with the best mean validation Delta_m over its seeds (never test)."""
    best = results.best_setting([r for r in rows if r["status"] in ("completed", "failed")],
                                setting=lambda r: r["setting_hash"], score=lambda r: r["val_delta_m"],
                                failed=lambda r: r["status"] == "failed")  # a diverged seed rules its setting out
    for row in rows:  # every row says (an experiment whose trials all failed has none selected)
        row["selected"] = best is not None and row["setting_hash"] == best and row["status"] == "completed"


def _file(run_dir: str, experiment: str) -> str:
    return os.path.join(run_dir, experiment.replace("/", "__") + ".parquet")


def _write(rows: List[Dict[str, Any]], run_dir: str, experiment: str) -> List[Dict[str, Any]]:
    results.write_rows(rows, _file(run_dir, experiment))
    return rows


def group_study(spec: StudySpec, storage: str = DEFAULT_STORAGE, smoke_run: bool = False,
                log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """``mtl group``: only the grouping searches of ``spec`` (training the baselines they need).

    Logs each search's affinities per sharing location and its tree with #P and FLOPS; writes
    ``<study>/grouping/<experiment>-tree.png``, ``-affinity.png`` and ``.json``. Returns one
    {"experiment", "tree", "params", "flops_g", "files", "details"} per searched experiment.
    """
    from orchestrator.grouping import plain_tree, tree_summary
    from orchestrator.grouping.plots import draw_affinity, draw_tree

    p = prepare(spec, storage, smoke_run, log)
    grouped = [e for e in p.multi if e.grouping is not None]
    if not grouped:
        raise SpecError("experiments: none names a grouping search (experiments[i].grouping; mtl list grouping)")
    cluster = Cluster(p)
    by_experiment = baselines(p, cluster)
    out_dir = os.path.join(p.study_dir, "grouping")
    os.makedirs(out_dir, exist_ok=True)
    found = []
    for exp in grouped:
        derived, derivation = derive(p, cluster, exp, best_baselines(p, by_experiment, exp))
        params, gmacs = complexity(derived.base)
        tasks, details = list(exp.base.tasks), dict(derivation.details)
        for location, matrix in details.get("affinity", {}).items():
            log(f"  affinity at location {location} ({', '.join(tasks)}):")
            for task, row in zip(tasks, matrix):
                log(f"    {task:>14} " + " ".join(f"{v:+.2f}" for v in row))
        log(f"  {exp.name}: {tree_summary(derivation.tree)}  #P {params / 1e6:.2f} M, FLOPS {gmacs:.2f} G")
        stem = os.path.join(out_dir, exp.name)
        files = [draw_tree(plain_tree(derivation.tree), f"{stem}-tree.png", f"{spec.name} / {exp.name}")]
        if details.get("affinity"):
            files.append(draw_affinity(details["affinity"], tasks, f"{stem}-affinity.png", f"{exp.name}: task affinity"))
        entry = {"experiment": exp.name, "tree": plain_tree(derivation.tree), "params": params, "flops_g": gmacs,
                 "files": files, "details": details}
        files.append(write_json(f"{stem}.json", entry))
        found.append(entry)
    return found

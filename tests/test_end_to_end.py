"""One small study through the real stack: actor-pool baselines, Tune + Train V2 trials,
ASHA on forwarded worker metrics, the Parquet store, the report, and the baseline cache."""
import json
import os

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.results import read_rows
from orchestrator.spec import load_spec
from orchestrator.study import run_study

pytestmark = pytest.mark.ray

SPEC = {
    "name": "e2e",
    "dataset": {"name": "synthetic", "params": {"image_size": 32, "num_train": 96, "num_val": 32, "num_test": 32}},
    "tasks": ["semseg", "depth"],
    "experiments": [{"name": "mtl_baseline", "architecture": "mtl_baseline", "balancer": "fixed"}],
    "search": {"batch_sizes": [16], "schedulers": ["poly"], "lrs": [2e-4, 1e-2], "asha": True,
               "grace_period": 1, "reduction_factor": 2},
    "train": {"epochs": 2, "max_steps_per_epoch": 3, "eval_batch_size": 32},
}


@pytest.fixture(scope="module")
def first_run(ray_session, tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    spec = load_spec({**SPEC, "dataset": {**SPEC["dataset"], "root": str(storage / "data")}})
    lines = []
    out = run_study(spec, storage=str(storage), log=lines.append)
    return spec, storage, out, lines


def test_ctrl_c_mid_study_then_mtl_resume(tmp_path):
    """SIGINT to ``mtl run`` once a multi-task trial has ended (the next ones have started): exit
    130, the run marked interrupted, no results.parquet; ``mtl resume`` finishes it in the same
    folder with every trial once, and the rows of the trials that ended before the interrupt
    unchanged. The two
    experiments (no ASHA) are trials of one Tune run, which the resume restores. First in this
    module and without the shared ``ray_session``: each command starts (and ends) its own local Ray."""
    import glob
    import signal
    import subprocess
    import sys
    import time

    from orchestrator.plan import expand, validate
    from orchestrator.runs import read_status, run_dirs

    data = {**SPEC, "name": "e2e_resume", "dataset": {**SPEC["dataset"], "root": str(tmp_path / "data")},
            "experiments": [{"name": "first", "architecture": "mtl_baseline", "balancer": "fixed"},
                            {"name": "second", "architecture": "mtl_baseline", "balancer": "dwa"}],
            "search": {**SPEC["search"], "asha": False},
            "train": {**SPEC["train"], "epochs": 12}}  # long enough that the Ctrl-C cuts trials short
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    storage = tmp_path / "runs"
    env = {**os.environ, "MTL_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)

    def mtl(*argv):
        return [sys.executable, "-m", "orchestrator.cli", *argv, "--storage", str(storage)]

    results_dir = storage / "e2e_resume" / "results"
    reports = str(storage / "e2e_resume" / "tune" / "batch_first_and_1_more" / "*" / "result.json")
    run = subprocess.Popen(mtl("run", str(path)), env=env)
    deadline = time.time() + 900
    ended = False  # a trial reported its last epoch: its pair ends, the next pair (2 slots) starts
    while not ended and run.poll() is None and time.time() < deadline:
        time.sleep(0.2)
        ended = any(sum(1 for _ in open(f)) >= data["train"]["epochs"] for f in glob.glob(reports))
    assert ended and run.poll() is None, "no multi-task trial ended, or the study ended"
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=300) == 130
    (run_dir,) = run_dirs(str(results_dir))
    assert read_status(run_dir)["status"] == "interrupted"
    assert not (storage / "e2e_resume" / "results.parquet").exists()
    ended = [r for name in ("first", "second") for r in read_rows(os.path.join(run_dir, f"{name}.parquet"))]

    assert subprocess.run(mtl("resume", "e2e_resume"), env=env, timeout=900).returncode == 0
    assert run_dirs(str(results_dir)) == [run_dir] and read_status(run_dir)["status"] == "finished"
    spec = load_spec(data)
    single, multi = expand(spec, validate(spec), str(tmp_path / "data"))
    expected = sum(len(e.trial_configs()) for e in single) + sum(e.num_trials for e in multi)
    rows = read_rows(str(storage / "e2e_resume" / "results.parquet"))
    print(f"rows: {len(ended)} multi-task trial(s) ended before the interrupt, {len(rows)} after the resume "
          f"(expected {expected})")
    assert 0 < len(ended) < sum(e.num_trials for e in multi)  # some ended, the interrupt cut the others short
    assert len(rows) == expected
    keys = [(r["experiment"], r["config_hash"], r["seed"]) for r in rows]
    assert len(set(keys)) == len(keys)
    assert {r["experiment"] for r in rows if r["role"] == "multi_task"} == {"first", "second"}
    final = {(r["experiment"], r["config_hash"], r["seed"]): r for r in rows}
    for r in ended:  # a trial that ended before the interrupt is kept as it was, not trained again
        assert final[(r["experiment"], r["config_hash"], r["seed"])]["val_metrics"] == r["val_metrics"]


def test_rows_carry_config_metrics_delta_params_flops(first_run):
    spec, storage, out, lines = first_run
    rows = read_rows(out["results"])
    assert out["results"] == os.path.join(str(storage), "e2e", "results.parquet")
    single = [r for r in rows if r["role"] == "single_task"]
    multi = [r for r in rows if r["role"] == "multi_task"]
    assert len(single) == 4 and len(multi) == 2  # 2 tasks x 2 settings; 2 Tune trials
    for r in rows:
        cfg = json.loads(r["config_json"])
        assert cfg["dataset"]["name"] == "synthetic" and r["config_hash"] and r["params"] > 0 and r["flops_g"] > 0
        assert r["status"] in ("completed", "stopped"), r["error"]
    done = [r for r in multi if r["status"] == "completed"]
    assert done, "no multi-task trial completed"
    for r in done:
        assert set(r["test_metrics"]) >= {"semseg/miou", "depth/rmse"}
        assert r["val_delta_m"] is not None and r["test_delta_m"] is not None
        assert r["epochs_done"] == 2 and r["checkpoint_path"]
    assert sum(r["selected"] for r in multi) == 1
    assert sum(r["selected"] for r in single) == 2  # one setting per task
    # the MTL baseline shares its encoder: fewer parameters than the two single-task networks
    assert multi[0]["params"] < sum({r["tasks"][0]: r["params"] for r in single}.values())


def test_worker_metrics_reach_tune(first_run):
    _, storage, _, lines = first_run
    epoch_lines = [l for l in lines if "val Δm" in l]
    assert epoch_lines or os.path.isdir(os.path.join(str(storage), "e2e", "tune", "mtl_baseline"))
    # Tune's own record of each trial holds the per-epoch worker metrics ASHA acted on
    results = []
    for d, _, files in os.walk(os.path.join(str(storage), "e2e", "tune", "mtl_baseline")):
        if "result.json" in files:
            with open(os.path.join(d, "result.json")) as fh:
                results += [json.loads(line) for line in fh if line.strip()]
    assert results and all("val_delta_m" in r and "val/semseg/miou" in r for r in results)


def test_every_run_writes_tensorboard_events_under_the_study(first_run):
    """Multi-task trials write into <study>/tensorboard/<experiment>/<run>; the single-task
    baselines write into their cache entries, linked under tensorboard/single_task/<task>/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainables.config import TrialConfig
    from trainables.tracking import run_name

    _, storage, out, lines = first_run
    board = os.path.join(str(storage), "e2e", "tensorboard")
    assert f"TensorBoard: tensorboard --logdir {board}" in lines
    for row in read_rows(out["results"]):
        cfg = TrialConfig.from_dict(json.loads(row["config_json"]))
        folder = os.path.join(board, row["experiment"], run_name(cfg))
        acc = EventAccumulator(folder)
        acc.Reload()
        task = cfg.tasks[0]
        metric = "miou" if task == "semseg" else "rmse"
        values = [e.value for e in acc.Scalars(f"{task}/val_{metric}")]  # one per epoch, the last one the row's
        assert len(values) == row["epochs_done"] and values[-1] == pytest.approx(row["val_metrics"][f"{task}/{metric}"])
        assert not any(t.startswith("ray/") for t in acc.Tags()["scalars"])  # Tune's own events stay in tune/
        if row["role"] == "single_task":  # cached across studies: a link into the cache
            assert os.path.islink(folder) and "_cache" in os.path.realpath(folder)
        else:
            assert [e.step for e in acc.Scalars("delta_m/val")] == list(range(1, row["epochs_done"] + 1))
            assert {"semseg/weight", "depth/weight", "lr"} <= set(acc.Tags()["scalars"])


def test_report_prints_the_table(first_run, capsys):
    _, storage, out, _ = first_run
    assert main(["report", out["results"]]) == 0
    table = capsys.readouterr().out
    assert "| Single task" in table and "| mtl_baseline" in table and "Δm (%)" in table


def test_second_study_trains_no_baseline(first_run):
    spec, storage, _, _ = first_run
    lines = []
    out = run_study(spec.replace(name="e2e_again"), storage=str(storage), log=lines.append)
    assert "single-task baselines: 4 cached, 0 to train" in lines
    single = [r for r in out["rows"] if r["role"] == "single_task"]
    assert single and all(r["cached"] for r in single)
    linked = os.path.join(str(storage), "e2e_again", "tensorboard", "single_task", "semseg")
    assert len(os.listdir(linked)) == 2  # the cached baselines' runs, shown in this study too


def test_loss_weight_search_through_optuna(first_run):
    """The weight search, recorded in the study's Optuna database, with every trial logged to MLflow."""
    import optuna
    from mlflow.tracking import MlflowClient

    spec, storage, _, _ = first_run
    tpe = spec.replace(name="e2e_tpe", experiments=load_spec({**SPEC, "experiments": [
        {"name": "fixed_tpe", "balancer": "fixed", "weight_search": {"num_samples": 2, "seed": 0}}]}).experiments,
        loggers=load_spec({**SPEC, "loggers": ["mlflow"]}).loggers)
    lines = []
    out = run_study(tpe, storage=str(storage), log=lines.append)
    multi = [r for r in out["rows"] if r["role"] == "multi_task"]
    weights = [json.loads(r["config_json"])["balancer"]["params"]["weights"] for r in multi]
    assert len(multi) == 2 and weights[0] != weights[1]
    assert all(set(w) == {"semseg", "depth"} and all(0.1 <= v <= 10 for v in w.values()) for w in weights)
    best = [r for r in multi if r["selected"]]
    assert len(best) == 1 and best[0]["val_delta_m"] == max(r["val_delta_m"] for r in multi if r["status"] == "completed")
    study_dir = os.path.join(str(storage), "e2e_tpe")
    # Optuna: one study per experiment, its trials told their val score, the resolved weights attached
    db = f"sqlite:///{study_dir}/optuna.db"
    assert f"Optuna: optuna-dashboard {db}" in lines
    trials = optuna.load_study(study_name="e2e_tpe/fixed_tpe", storage=db).get_trials()
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(json.dumps(t.user_attrs["weights"], sort_keys=True) for t in trials) == \
        sorted(json.dumps(w, sort_keys=True) for w in weights)
    # MLflow: one run per trial in experiment <study>/<experiment>, the per-epoch metrics as steps
    uri = f"sqlite:///{study_dir}/mlflow.db"
    assert f"MLflow: experiments e2e_tpe/<experiment> at {uri}" in lines
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("e2e_tpe/fixed_tpe").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    steps = [[m.step for m in client.get_metric_history(r.info.run_id, "val_delta_m")] for r in runs]
    assert sorted(steps) == sorted(list(range(1, r["epochs_done"] + 1)) for r in multi)  # ASHA may stop one
    assert sorted(r.data.metrics["val/semseg/miou"] for r in runs) == \
        pytest.approx(sorted(r["val_metrics"]["semseg/miou"] for r in multi))


def _nyud_writer():
    """The NYUD fixture-tree writer of the loader tests (tests/ has no packages to import from)."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "trainables", "test_datasets_nyud_cityscapes.py")
    spec = importlib.util.spec_from_file_location("nyud_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_nyud


def test_survey_nyud_preset_smoke_on_a_fixture_tree(ray_session, tmp_path):
    """The survey's NYUD study (ResNet-50 dilated + ASPP) in --smoke on files in the NYUD_MT
    format: the same code path as on the real dataset."""
    root = tmp_path / "NYUD_MT"
    _nyud_writer()(root)
    assert main(["run", "survey_nyud", "--smoke", "--data-root", str(root), "--storage", str(tmp_path / "runs")]) == 0
    rows = read_rows(str(tmp_path / "runs" / "survey_nyud"))
    multi = {r["experiment"]: r for r in rows if r["role"] == "multi_task"}
    assert set(multi) == {"mtl_baseline", "mtan", "cross_stitch", "nddr_cnn"}
    assert all(r["status"] == "completed" for r in multi.values()), {k: r["error"] for k, r in multi.items()}
    # #P at the survey's size (Table 3): MTL baseline 55.8 M, cross-stitch 79.3 M
    assert multi["mtl_baseline"]["params"] / 1e6 == pytest.approx(55.8, abs=0.1)
    assert multi["cross_stitch"]["params"] / 1e6 == pytest.approx(79.3, abs=0.1)
    # cross-stitch and NDDR started from the study's single-task networks (their cached checkpoints)
    for name in ("cross_stitch", "nddr_cnn"):
        init = json.loads(multi[name]["config_json"])["init_checkpoints"]
        assert set(init) == {"semseg", "depth"} and all(os.path.isfile(os.path.join(p, "state.pt")) for p in init.values())


def test_jtr_study_smoke_with_every_regulariser_against_supervised_mtl(ray_session, tmp_path):
    """The JTR twin in --smoke: partial labels, the supervised-MTL Delta baseline from the actor
    pool, every regulariser inside Tune trials (MuST with the cached single-task teachers)."""
    from search_spaces.jtr import METHODS

    storage = tmp_path / "runs"
    assert main(["run", "jtr_synthetic", "--smoke", "--storage", str(storage)]) == 0
    rows = read_rows(str(storage / "jtr_synthetic"))
    multi = {r["experiment"]: r for r in rows if r["role"] == "multi_task"}
    assert set(multi) == set(METHODS)
    assert all(r["status"] == "completed" for r in multi.values()), {k: r["error"] for k, r in multi.items()}
    assert all(r["delta_baseline"].startswith("supervised MTL") for r in multi.values())
    assert [r["role"] for r in rows].count("supervised_mtl") == 1
    teachers = json.loads(multi["must"]["config_json"])["teacher_checkpoints"]
    assert set(teachers) == {"semseg", "depth", "normals"}
    assert all(os.path.isfile(os.path.join(p, "state.pt")) for p in teachers.values())
    # every model was trained on the study's partial labels
    assert len({json.loads(r["config_json"])["label_file"] for r in rows}) == 1


def test_mgm_twin_smoke_with_dropped_images_and_a_sample_grid(ray_session, tmp_path, capsys):
    """The MGM twin in --smoke: ST on the labelled half, MT, and MGM with its own optimisers and the
    generated images appended to the batches inside a Tune trial; the sample grid beside the results."""
    storage = tmp_path / "runs"
    assert main(["run", "mgm_synthetic", "--smoke", "--storage", str(storage)]) == 0
    rows = read_rows(str(storage / "mgm_synthetic"))
    multi = {r["experiment"]: r for r in rows if r["role"] == "multi_task"}
    assert set(multi) == {"mt", "mgm"}
    assert all(r["status"] == "completed" for r in multi.values()), {k: r["error"] for k, r in multi.items()}
    from trainables.datasets.partial import load_label_mask

    label_files = {json.loads(r["config_json"])["label_file"] for r in rows}  # ST too: the labelled half only
    assert len(label_files) == 1 and load_label_mask(label_files.pop())[2]["unlabelled"] == "drop"
    grids = [os.path.join(d, f) for d, _, files in os.walk(storage / "mgm_synthetic" / "results") for f in files
             if f.endswith("_samples.png")]
    assert [os.path.basename(g) for g in grids] == ["mgm_samples.png"]
    assert "mgm_samples.png" in capsys.readouterr().out


def test_data_parallel_trial_with_two_workers(first_run):
    """Two Ray Train workers (DDP over gloo) in one trial: prepare_model / prepare_data_loader,
    metrics all-reduced over the split, and the trial still completes on a 2-CPU machine."""
    spec, storage, _, _ = first_run
    ddp = spec.replace(name="e2e_ddp", resources=spec.resources.__class__(workers_per_trial=2),
                       search=spec.search.__class__(batch_sizes=(16,), schedulers=("poly",), lrs=(2e-4,)))
    out = run_study(ddp, storage=str(storage), log=lambda _: None)
    multi = [r for r in out["rows"] if r["role"] == "multi_task"]
    assert len(multi) == 1 and multi[0]["status"] == "completed", multi[0]["error"]


def test_grouping_search_derives_the_tree_before_tune(first_run):
    """An experiment that names a grouping search: the study computes the single-task networks'
    RDMs on the actor pool, derives the tree, trains it through Tune, and keeps the evidence."""
    spec, storage, _, _ = first_run
    grouped = spec.replace(name="e2e_grouping", experiments=load_spec({**SPEC, "experiments": [
        {"name": "branched", "architecture": "branched", "balancer": "fixed",
         "grouping": {"name": "branched_mtl", "params": {"budget": 1.0, "num_images": 16}}}]}).experiments,
        search=spec.search.__class__(batch_sizes=(16,), schedulers=("poly",), lrs=(2e-4,)))
    lines = []
    out = run_study(grouped, storage=str(storage), log=lines.append)
    assert any("RDMs of the single-task networks: 0 cached, 2 computed" in line for line in lines)
    (row,) = [r for r in out["rows"] if r["role"] == "multi_task"]
    assert row["status"] == "completed", row["error"]
    derivation = json.loads(row["derivation_json"])
    tree = json.loads(row["config_json"])["model"]["architecture"]["params"]["tree"]
    assert derivation["search"] == "branched_mtl" and derivation["tree"] == tree
    assert set(derivation["affinity"]) == {"0", "1", "2", "3"}  # tiny_cnn: 4 sharing locations
    assert tree[-1] == [["semseg"], ["depth"]]  # budget 1.0: everything from stage 1 on can split
    # a second study over the same cached baselines computes no features
    lines = []
    run_study(grouped.replace(name="e2e_grouping_again"), storage=str(storage), log=lines.append)
    assert any("RDMs of the single-task networks: 2 cached, 0 computed" in line for line in lines)


def test_mtl_group_runs_only_the_search_and_draws_it(first_run, capsys):
    spec, storage, _, _ = first_run
    path = os.path.join(str(storage), "group.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump({**SPEC, "name": "e2e_group", "dataset": spec.to_dict()["dataset"],
                        "experiments": [{"name": "branched", "architecture": "branched",
                                         "grouping": {"name": "branched_mtl", "params": {"num_images": 16}}}]}, fh)
    assert main(["group", path, "--storage", str(storage)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]  # "<experiment>: <file>, <file>, <file>"
    assert last.startswith("branched: ")
    files = last.split(": ", 1)[1].split(", ")
    assert [os.path.basename(f) for f in files] == ["branched-tree.png", "branched-affinity.png", "branched.json"]
    assert all(os.path.getsize(f) > 1000 for f in files)
    assert not os.path.exists(os.path.join(str(storage), "e2e_group", "tune"))  # nothing trained but baselines


class _Sleeper:
    """An actor body whose jobs finish in the reverse of the order they were given."""

    def __init__(self, num_threads):
        pass

    def nap(self, index, seconds):
        import time

        time.sleep(seconds)
        return index


def test_actor_pool_results_in_job_order_when_asked(ray_session):
    """Grouping searches pair each result with its task: run_on_actors(ordered=True) must return the
    results in the order of the jobs, even when later jobs finish first."""
    import sys

    import ray.cloudpickle

    from orchestrator.baselines import run_on_actors

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable on workers
    jobs = [(i, 0.6 - 0.1 * i) for i in range(6)]
    assert list(run_on_actors(_Sleeper, "nap", jobs, 2, {"num_cpus": 0.5}, ordered=True)) == list(range(6))
    assert sorted(run_on_actors(_Sleeper, "nap", jobs, 2, {"num_cpus": 0.5})) == list(range(6))

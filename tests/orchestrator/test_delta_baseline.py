"""What Delta_m is measured against: the single-task networks (survey, MTPSL) or supervised MTL on
the same partial labels (JTR), trained and cached like the single-task baselines."""
from __future__ import annotations

import json

import pytest

from orchestrator import study
from orchestrator.plan import expand, validate
from orchestrator.report import render
from orchestrator.spec import SpecError, load_spec

SPEC = {"name": "d", "tasks": ["semseg", "depth"], "delta_baseline": "supervised_mtl",
        "dataset": {"name": "synthetic", "labels": {"setting": "onelabel"}},
        "experiments": [{"name": "consistency", "regularisers": [{"name": "consistency"}]}]}


def test_spec_names_the_delta_baseline():
    assert load_spec({**SPEC, "delta_baseline": "single_task"}).delta_baseline == "single_task"
    with pytest.raises(SpecError, match="delta_baseline: 'mtl' is not one of single_task, supervised_mtl"):
        load_spec({**SPEC, "delta_baseline": "mtl"})


def test_supervised_mtl_is_a_cached_baseline_of_the_study():
    spec = load_spec(SPEC)
    single, multi = expand(spec, validate(spec), None)
    sup = [e for e in single if e.role == "supervised_mtl"]
    assert len(sup) == 1 and sup[0].name == "supervised_mtl"
    cfg = sup[0].base
    assert cfg.model.architecture.name == "mtl_baseline" and cfg.balancer.name == "fixed" and not cfg.regularisers
    assert cfg.tasks == ("semseg", "depth") and sup[0].baselines == ("single_task/semseg", "single_task/depth")
    assert multi[0].base.regularisers[0].name == "consistency"
    # without it, no such baseline
    plain = load_spec({**SPEC, "delta_baseline": "single_task"})
    assert not [e for e in expand(plain, validate(plain), None)[0] if e.role == "supervised_mtl"]


def _result(experiment, tasks, lr, seed, val, test):
    cfg = {"experiment": experiment, "tasks": list(tasks), "lr": lr, "seed": seed, "epochs": 1,
           "model": {"architecture": {"name": "single_task" if len(tasks) == 1 else "mtl_baseline", "params": {}},
                     "backbone": {"name": "tiny_cnn", "params": {}}, "head": {"name": "conv", "params": {}}}}
    metrics = {**{f"val/{k}": v for k, v in val.items()}, **{f"test/{k}": v for k, v in test.items()},
               "val_score": sum(val.values()), "epoch": 0}
    return {"config": cfg, "metrics": metrics, "status": "completed", "checkpoint_path": f"/ckpt/{experiment}/{lr}"}


def test_supervised_mtl_metrics_are_the_delta_reference(monkeypatch):
    spec = load_spec(SPEC)
    single, _ = expand(spec, validate(spec), None)
    sup = next(e for e in single if e.role == "supervised_mtl")
    monkeypatch.setattr(study, "complexity", lambda cfg: (1000, 0.5))
    by_exp = {
        "single_task/semseg": [_result("single_task/semseg", ["semseg"], 1e-3, 0, {"semseg/miou": 50.0}, {"semseg/miou": 48.0})],
        "single_task/depth": [_result("single_task/depth", ["depth"], 1e-3, 0, {"depth/rmse": 1.0}, {"depth/rmse": 1.1})],
        # two settings: the second is better on val (higher Delta_m against the single-task networks)
        "supervised_mtl": [
            _result("supervised_mtl", ["semseg", "depth"], 1e-3, 0, {"semseg/miou": 40.0, "depth/rmse": 1.2},
                    {"semseg/miou": 39.0, "depth/rmse": 1.3}),
            _result("supervised_mtl", ["semseg", "depth"], 1e-2, 0, {"semseg/miou": 45.0, "depth/rmse": 1.0},
                    {"semseg/miou": 44.0, "depth/rmse": 1.05})],
    }
    p = study.Prepared(spec, "/tmp", "/tmp", single, [], {"semseg/miou": True, "depth/rmse": False}, lambda m: None)
    (val, test), rows = study._supervised_mtl(p, by_exp, sup, {"study": "d", "run_id": "r"}, {})
    assert val == {"semseg/miou": 45.0, "depth/rmse": 1.0} and test == {"semseg/miou": 44.0, "depth/rmse": 1.05}
    assert [r["selected"] for r in rows] == [False, True]
    # its own Delta_m is against the single-task networks: 50 * ((44 - 48) / 48 - (1.05 - 1.1) / 1.1)
    assert rows[1]["test_delta_m"] == pytest.approx(50 * ((44 - 48) / 48 - (1.05 - 1.1) / 1.1))


def test_report_shows_the_supervised_row_as_the_reference():
    def row(experiment, role, tasks, metrics, dm, baseline):
        return {"experiment": experiment, "role": role, "tasks": tasks, "selected": True, "seed": 0,
                "config_json": json.dumps({"dataset": {"name": "synthetic", "params": {}}}), "balancer": "fixed",
                "test_metrics": metrics, "params": 1e6, "flops_g": 1.0, "test_delta_m": dm, "delta_baseline": baseline}

    single = "single-task networks, best grid setting on val"
    sup = "supervised MTL (mtl_baseline, fixed weights) on the same labels, best grid setting on val"
    rows = [row("single_task/semseg", "single_task", ["semseg"], {"semseg/miou": 48.0}, 0.0, single),
            row("single_task/depth", "single_task", ["depth"], {"depth/rmse": 1.1}, 0.0, single),
            row("supervised_mtl", "supervised_mtl", ["semseg", "depth"], {"semseg/miou": 44.0, "depth/rmse": 1.05}, -3.9, single),
            row("jtr", "multi_task", ["semseg", "depth"], {"semseg/miou": 46.0, "depth/rmse": 1.0}, 7.0, sup)]
    text = render(rows)
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert lines["Supervised MTL"].rstrip(" |").endswith("+0.00")
    assert lines["Single task"].rstrip(" |").endswith("-")
    assert "against supervised MTL on the same labels" in text

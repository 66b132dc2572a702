"""IAL's table presets (search_spaces/ial.py): each loads and validates the way ``mtl run`` checks a
spec before Ray starts, and holds its table's tasks, methods, primary tasks and training setting; the
report composes each auxiliary method's row from Table VII's 20 primary-task experiments."""
from __future__ import annotations

import json

import pytest

from orchestrator.cli import _load
from orchestrator.plan import expand, settings_of, smoke, validate
from orchestrator.report import table_rows
from search_spaces import PRESETS

NORMAL = ["uniform", "uw", "gradnorm", "dwa", "mgda", "pcgrad", "rlw_normal", "imtl_l", "imtl_g", "imtl",
          "auto_lambda_mtl", "miraliev", "atw", "puw"]
AUXILIARY = {"gcs": "gcs", "ol_aux": "ol_aux", "auto_lambda": "auto_lambda", "ial": "ial"}  # name -> balancer
NYUV2, CITYSCAPES = ["depth", "semseg", "normals"], ["depth", "parts", "semseg"]
PASCAL = ["semseg", "human_parts", "normals", "saliency", "edge"]
CIFAR = [f"task_{k:02d}" for k in range(20)]
NOISY = ["semseg_noisy", "noise"]
SEEDS5 = (0, 1, 2, 3, 4)

# preset: (tasks, auxiliary tasks, Normal methods, the one grid setting, epochs, seeds)
TABLES = {
    "ial_synthetic": (NYUV2, [], NORMAL, (16, "poly", "sgd", 1e-2), 4, (0, 1, 2)),
    "ial_noisy_synthetic": (NYUV2, NOISY, NORMAL, (16, "poly", "sgd", 1e-2), 4, (0, 1, 2)),
    "ial_nyuv2": (NYUV2, [], NORMAL, (4, "step", "adam", 1e-4), 200, SEEDS5),  # Table I
    "ial_nyuv2_noisy": (NYUV2, NOISY, NORMAL, (4, "step", "adam", 1e-4), 200, SEEDS5),  # Table IV
    "ial_cityscapes": (CITYSCAPES, [], NORMAL, (4, "poly", "sgd", 0.1), 200, SEEDS5),  # Table I
    "ial_pascal": (PASCAL, [], NORMAL, (12, "poly", "adam", 1e-4), 100, SEEDS5),  # Table III
    "ial_cityscapes_noisy": (CITYSCAPES, NOISY, [], (4, "poly", "sgd", 0.1), 200, SEEDS5),  # Table V
    "ial_pascal_noisy": (PASCAL, NOISY, ["uniform", "uw", "gradnorm", "imtl"], (12, "poly", "adam", 1e-4), 100,
                         SEEDS5),  # Table VI
    "ial_cifar100": (CIFAR, [], ["uniform", "uw", "auto_lambda_mtl"], (640, "poly", "sgd", 0.1), 200,
                     SEEDS5),  # Table VII
}


def test_every_ial_preset_is_covered():
    assert sorted(n for n in PRESETS if n.startswith("ial_")) == sorted(TABLES)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_ial_preset_validates_with_its_tables_methods(name):
    tasks, auxiliary, normal, setting, epochs, seeds = TABLES[name]
    spec = _load(name)  # what `mtl run <preset>` loads
    info = validate(spec)  # every name, parameter and plug-in pair, models on the meta device; no data read
    validate(smoke(spec))
    assert list(spec.tasks) == tasks and list(spec.auxiliary_tasks) == auxiliary
    assert (spec.train.epochs, spec.train.seeds) == (epochs, seeds)
    batch, scheduler, optimizer, lr = setting
    assert settings_of(spec, info) == [{"batch_size": batch, "scheduler": scheduler, "optimizer": optimizer, "lr": lr}]
    single, multi = expand(spec, info, data_root=None)
    assert sorted(e.name for e in single) == sorted(f"single_task/{t}" for t in tasks)  # the "Single task" row
    assert len(multi) == len(normal) + len(AUXILIARY) * len(tasks)
    assert [e.name for e in multi[:len(normal)]] == normal
    assert all(e.base.primary_task is None for e in multi[:len(normal)])
    primaries = {(e.name, e.base.balancer.name, e.base.primary_task) for e in multi[len(normal):]}
    assert primaries == {(f"{m}_{t}", b, t) for m, b in AUXILIARY.items() for t in tasks}  # each task primary in turn
    for e in multi:
        assert e.base.tasks == tuple(tasks + auxiliary) and e.base.auxiliary_tasks == tuple(auxiliary)
        if e.name.startswith("auto_lambda_") and e.name != "auto_lambda_mtl":
            assert e.base.balancer.params["mode"] == "auxiliary"


def test_table_specific_choices():
    cityscapes = _load("ial_cityscapes")
    assert cityscapes.dataset.params == {"layout": "auto_lambda"}
    assert (cityscapes.backbone.name, dict(cityscapes.backbone.params), cityscapes.head.name) == \
        ("resnet50", {"dilated": True}, "aspp")
    gradnorm = next(e for e in cityscapes.experiments if e.name == "gradnorm")
    assert gradnorm.balancer.params == {"alpha": 0.0}  # IAL: GradNorm's eta 0 on Cityscapes
    noisy = _load("ial_cityscapes_noisy")
    assert noisy.dataset.name == "pseudo" and noisy.dataset.params["base"] == {
        "name": "cityscapes_mtan", "params": {"layout": "auto_lambda"}}
    pascal = _load("ial_pascal")
    assert (pascal.backbone.name, dict(pascal.backbone.params), pascal.head.name) == \
        ("resnet18", {"dilated": True}, "aspp")
    pseudo = _load("ial_pascal_noisy").dataset.params["pseudo"]
    assert pseudo["noise"] == {"source": "normals", "kind": "noise"}  # PASCAL has no depth
    cifar = _load("ial_cifar100")
    assert (cifar.backbone.name, cifar.head.name, cifar.train.weight_decay) == ("vgg16", "linear", 5e-4)


def _row(cfg, role, metrics, seed=0):
    return dict(experiment=cfg.experiment, role=role, balancer=cfg.balancer.name, tasks=list(cfg.tasks),
                config_json=json.dumps(cfg.to_dict()), seed=seed, selected=True, test_metrics=metrics,
                test_delta_m=0.0, params=1_000_000, flops_g=1.0)


def test_report_composes_auxiliary_rows_from_twenty_primary_experiments():
    spec = _load("ial_cifar100")
    single, multi = expand(spec, validate(spec), data_root=None)
    rows = []
    for seed in (0, 1):
        rows += [_row(e.trial_configs()[seed], "single_task", {f"{e.base.tasks[0]}/top1": 80.0}, seed) for e in single]
        for e in multi:  # the primary task reaches 84 (+5 %), the other tasks 40
            cfg, primary = e.trial_configs()[seed], e.base.primary_task
            rows.append(_row(cfg, "multi_task", {f"{t}/top1": 84.0 if t == primary else 40.0 for t in CIFAR}, seed))
    header, body = table_rows(rows)
    assert header[1:21] == [f"{t} (top1) ↑" for t in CIFAR]
    composed = {line[0]: line for line in body if line[0].endswith("(each task primary)")}
    assert sorted(composed) == [f"{b} (each task primary)" for b in sorted(AUXILIARY.values())]
    for line in composed.values():
        assert line[1:21] == ["84.00 ± 0.00"] * 20  # each task's accuracy from the run where it was primary
        assert line[-1] == "+5.00 ± 0.00"

"""The train loop without Ray: schedulers, optimisers, resume from a checkpoint, determinism."""
import math

import pytest
import torch

from trainables.config import TrialConfig
from trainables.optim import make_optimizer, make_scheduler
from trainables.plugins import Plugin
from trainables.session import Session
from trainables.train_loop import fit


def tiny(tmp_path, **kw):
    base = dict(experiment="t", tasks=("semseg", "depth"), data_root=str(tmp_path / "data"),
                dataset=Plugin("synthetic", {"image_size": 32, "num_train": 32, "num_val": 16, "num_test": 16}),
                batch_size=8, eval_batch_size=16, epochs=2, max_steps_per_epoch=2, lr=1e-3)
    base.update(kw)
    return TrialConfig(**base)


def lrs(cfg, steps_per_epoch):
    opt = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    sched = make_scheduler(cfg, opt, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_poly_schedule_matches_formula(tmp_path):
    cfg = tiny(tmp_path, scheduler="poly", epochs=2, lr=0.1)
    got = lrs(cfg, 5)
    assert got == pytest.approx([0.1 * (1 - i / 10) ** 0.9 for i in range(10)])


def test_step_schedule_divides_by_ten_at_milestones(tmp_path):
    cfg = tiny(tmp_path, scheduler="step", epochs=10, lr=1.0, step_milestones=(0.5, 0.8))
    got = lrs(cfg, 2)
    assert got[:10] == pytest.approx([1.0] * 10)
    assert got[10:16] == pytest.approx([0.1] * 6)
    assert got[16:] == pytest.approx([0.01] * 4)


def test_survey_optimisers(tmp_path):
    sgd = make_optimizer(tiny(tmp_path, optimizer="sgd"), [torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    assert isinstance(make_optimizer(tiny(tmp_path, optimizer="adam"), [torch.nn.Parameter(torch.zeros(1))]),
                      torch.optim.Adam)


def test_reports_every_epoch_and_tests_only_at_the_end(tmp_path):
    session = Session(device=torch.device("cpu"))
    last = fit(tiny(tmp_path), session)
    assert [r["epoch"] for r in session.reports] == [0, 1]
    assert not any(k.startswith("test/") for k in session.reports[0])
    assert last["finished"] and math.isfinite(last["test/semseg/miou"]) and math.isfinite(last["val_score"])


def test_same_seed_same_result_and_resume_continues(tmp_path):
    full = Session(device=torch.device("cpu"))
    a = fit(tiny(tmp_path), full)
    assert fit(tiny(tmp_path), Session(device=torch.device("cpu")))["val/depth/rmse"] == a["val/depth/rmse"]

    # a run cut after epoch 0 restarts from its checkpoint and finishes with the same numbers
    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(_Died):
        fit(tiny(tmp_path), _StopAfter(ckpt, epochs=1))
    resumed = Session(device=torch.device("cpu"), checkpoint_dir=ckpt)
    b = fit(tiny(tmp_path), resumed)
    assert [r["epoch"] for r in resumed.reports] == [1]
    assert b["val/depth/rmse"] == pytest.approx(a["val/depth/rmse"], rel=1e-5)


class _Died(Exception):
    pass


class _StopAfter(Session):
    """A session whose process 'dies' after ``epochs`` reports (checkpoint written)."""

    def __init__(self, checkpoint_dir, epochs):
        super().__init__(device=torch.device("cpu"), checkpoint_dir=checkpoint_dir)
        self.limit = epochs

    def report(self, metrics, state=None):
        super().report(metrics, state)
        if len(self.reports) >= self.limit:
            raise _Died


def test_trial_config_rejects_bad_values():
    with pytest.raises(ValueError, match="optimizer: 'rmsprop'"):
        TrialConfig(experiment="t", tasks=("semseg",), optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"^lrr: unknown key; accepted here: experiment, tasks, dataset"):
        TrialConfig.from_dict({"experiment": "t", "tasks": ["semseg"], "lrr": 1})
    with pytest.raises(ValueError, match=r"^balancer.params: expected a mapping"):
        TrialConfig.from_dict({"experiment": "t", "tasks": ["semseg"], "balancer": {"name": "fixed", "params": 3}})


def test_epoch_mean_loss_skips_batches_that_do_not_label_the_task(tmp_path, monkeypatch):
    """DWA's L(t) and the train/<task>/loss report average a task's loss over the batches that
    labelled it (partially labelled data), not over every batch with 0 for the others."""
    import trainables.train_loop as loop

    step = {"n": 0}

    def fake_step(model, balancer, tasks, batch, optimizer, session=None, regularisers=(), meta_batch=None,
                  amp=None, scaler=None):
        step["n"] += 1  # depth is labelled in every other batch only
        optimizer.step()
        return {"semseg": 1.0, "depth": 4.0} if step["n"] % 2 else {"semseg": 3.0}

    seen = []
    monkeypatch.setattr(loop, "training_step", fake_step)
    monkeypatch.setattr("trainables.balancers.dwa.DWA.on_epoch_end", lambda self, epoch, losses: seen.append(losses))
    session = Session(device=torch.device("cpu"))
    fit(tiny(tmp_path, balancer="dwa", epochs=1, max_steps_per_epoch=4), session)
    assert session.reports[0]["train/semseg/loss"] == pytest.approx(2.0)
    assert session.reports[0]["train/depth/loss"] == pytest.approx(4.0)  # not (4 + 0 + 4 + 0) / 4
    assert seen == [{"semseg": pytest.approx(2.0), "depth": pytest.approx(4.0)}]


def test_cross_stitch_starts_from_single_task_nets_and_keeps_its_unit_learning_rate(tmp_path):
    """The study hands cross-stitch its single-task networks (init_checkpoints) and fit loads them;
    the units train at lr_mult x the base rate for the whole run (the survey's code loses its 100x
    after the first epoch)."""
    from trainables.build import build_model, build_tasks
    from trainables.train_loop import load_state

    single = {t: str(tmp_path / f"single_{t}") for t in ("semseg", "depth")}
    for task, folder in single.items():
        fit(tiny(tmp_path, experiment=f"single/{task}", tasks=(task,), model={"architecture": "single_task"}),
            Session(device=torch.device("cpu"), checkpoint_dir=folder))
    cfg = tiny(tmp_path, model={"architecture": "cross_stitch"}, init_checkpoints=single, optimizer="sgd", lr=1e-9)
    ckpt = str(tmp_path / "cross_stitch")
    fit(cfg, Session(device=torch.device("cpu"), checkpoint_dir=ckpt))

    expected = build_model(build_tasks(cfg.dataset, cfg.tasks), cfg.model)
    for task, folder in single.items():
        expected.load_single_task(task, load_state(folder)["model"])
    trained = load_state(ckpt)["model"]
    # at lr 1e-9 every weight is still the single-task network's it was loaded from
    for name, p in expected.named_parameters():
        torch.testing.assert_close(trained[name], p.detach(), rtol=0, atol=1e-6)

    groups = load_state(ckpt)["optimizer"]["param_groups"]
    declared = expected.param_groups()
    unit = next(i for i, g in enumerate(declared) if g["lr_mult"] != 1.0)
    base = next(i for i, g in enumerate(declared) if g["lr_mult"] == 1.0)
    factor = groups[base]["lr"] / cfg.lr  # the poly schedule after the last epoch
    assert 0 < factor < 1 and declared[unit]["lr_mult"] == 100.0
    assert groups[unit]["lr"] == pytest.approx(100.0 * cfg.lr * factor)

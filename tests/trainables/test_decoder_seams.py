"""The seams decoder-based models need: intermediate predictions supervised by the step (deep
supervision), models served one task per forward pass, auxiliary tasks (trained, not scored),
multi-scale heads. Toy models here; the real architectures have their own test files."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import trainables  # noqa: F401  (registers every plug-in)
from trainables.architectures.base import MultiTaskModel, Predictions, check_level_weights
from trainables.build import build_balancer, build_model, build_tasks, primary_directions
from trainables.config import TrialConfig
from trainables.plugins import ArchitectureInfo, ConfigError, ModelRef, Plugin
from trainables.session import Session
from trainables.steps import task_losses, training_step
from trainables.train_loop import fit
from tests.trainables.test_steps import TOY_TASKS, MSETask, toy_batch


class DeepToy(MultiTaskModel):
    """Shared Linear encoder; per task two intermediate heads and a final head over them."""

    INFO = ArchitectureInfo(deep_supervision=True)

    def __init__(self, tasks, weights=(1.0, 1.0)):
        super().__init__(tasks)
        self.weights = weights
        self.enc = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.inter = nn.ModuleDict({t: nn.ModuleList([nn.Linear(6, 1), nn.Linear(6, 1)]) for t in tasks})
        self.final = nn.ModuleDict({t: nn.Linear(6 + 2, 1) for t in tasks})

    def forward(self, x):
        z = self.enc(x)
        aux = {t: [head(z) for head in self.inter[t]] for t in self.task_names}
        final = {t: self.final[t](torch.cat([z] + aux[t], dim=1)) for t in self.task_names}
        return Predictions(final, aux, self.weights)

    def shared_parameters(self):
        return list(self.enc.parameters())

    def task_specific_parameters(self, task):
        return list(self.inter[task].parameters()) + list(self.final[task].parameters())

    def last_shared_module(self):
        return self.enc[0]


def deep_toy(weights):
    torch.manual_seed(0)
    tasks = {t: MSETask(t) for t in TOY_TASKS}
    return DeepToy(tasks, weights), tasks


def grads(model):
    return {n: p.grad.clone() if p.grad is not None else None for n, p in model.named_parameters()}


def test_zero_aux_weights_give_the_gradients_of_the_final_losses_alone():
    batch = toy_batch(unlabelled={"b": [0, 1]})
    model, tasks = deep_toy((0.0, 0.0))
    sum(task_losses(model(batch["image"]), tasks, batch).values()).backward()
    with_aux = grads(model)
    model.zero_grad(set_to_none=True)
    out = model(batch["image"])
    plain = {t: out[t] for t in tasks}  # a plain dict: no intermediate predictions at all
    sum(task_losses(plain, tasks, batch).values()).backward()
    for name, g in grads(model).items():
        assert torch.equal(with_aux[name], g), name


def test_each_intermediate_prediction_gets_gradient_with_a_nonzero_weight():
    batch = toy_batch()
    model, tasks = deep_toy((0.5, 0.25))
    out = model(batch["image"])
    for preds in out.aux.values():
        for p in preds:
            p.retain_grad()
    losses = task_losses(out, tasks, batch)
    sum(losses.values()).backward()
    for t, preds in out.aux.items():
        for level, p in enumerate(preds):
            assert p.grad is not None and p.grad.abs().sum() > 0, (t, level)
    # the loss is final + 0.5 * loss(level 0) + 0.25 * loss(level 1), by hand
    for t in tasks:
        target = batch["targets"][t]
        expected = (tasks[t].loss(out[t], target) + 0.5 * tasks[t].loss(out.aux[t][0], target)
                    + 0.25 * tasks[t].loss(out.aux[t][1], target))
        torch.testing.assert_close(losses[t], expected)


def test_dense_intermediate_predictions_are_upsampled_and_masked():
    tasks = build_tasks(Plugin("synthetic"), ["depth"])
    coarse = torch.randn(3, 1, 4, 4, requires_grad=True)
    final = torch.randn(3, 1, 8, 8)
    target = torch.rand(3, 1, 8, 8) + 0.5
    batch = {"targets": {"depth": target}, "mask": {"depth": torch.tensor([True, False, True])}}
    loss = task_losses(Predictions({"depth": final}, {"depth": [coarse]}, [2.0]), tasks, batch)["depth"]
    up = nn.functional.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    keep = batch["mask"]["depth"]
    expected = tasks["depth"].loss(final[keep], target[keep]) + 2.0 * tasks["depth"].loss(up[keep], target[keep])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert coarse.grad[1].abs().sum() == 0 and coarse.grad[0].abs().sum() > 0  # the unlabelled sample is out


def test_predictions_check_their_levels_and_survive_pickling():
    import pickle

    with pytest.raises(ValueError, match="2 levels.*1 level weights"):
        Predictions({"a": torch.zeros(1)}, {"a": [torch.zeros(1), torch.zeros(1)]}, [1.0])
    with pytest.raises(ValueError, match="no final prediction"):
        Predictions({"a": torch.zeros(1)}, {"b": [torch.zeros(1)]}, [1.0])
    p = pickle.loads(pickle.dumps(Predictions({"a": torch.ones(1)}, {"a": [torch.zeros(1)]}, [0.3])))
    assert p.aux_weights == (0.3,) and torch.equal(p.aux["a"][0], torch.zeros(1))
    assert check_level_weights([0.5], 4, "x") == (0.5,) * 4
    with pytest.raises(ValueError, match="x: 2 weights given for 4 levels"):
        check_level_weights([1, 2], 4, "x")


class PerTaskToy(DeepToy):
    """Serves one task per forward pass, counting them (ASTMT's contract)."""

    INFO = ArchitectureInfo(forward_per_task=True)

    def __init__(self, tasks):
        super().__init__(tasks)
        self.calls = []

    def forward(self, x, task=None):
        if task is None:
            out = {}
            for t in self.task_names:
                out.update(self.forward(x, task=t))
            return out
        self.calls.append(task)
        z = self.enc(x)
        aux = [head(z) for head in self.inter[task]]
        return {task: self.final[task](torch.cat([z] + aux, dim=1))}


@pytest.mark.parametrize("balancer", ["fixed", "uncertainty", "pcgrad"])
def test_forward_per_task_model_gets_one_pass_per_task(balancer):
    batch = toy_batch(unlabelled={"c": [0, 1, 2]})
    torch.manual_seed(0)
    tasks = {t: MSETask(t) for t in TOY_TASKS}
    model = PerTaskToy(tasks)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    training_step(model, build_balancer(Plugin(balancer), TOY_TASKS), tasks, batch, opt, Session())
    assert sorted(model.calls) == sorted(TOY_TASKS)  # one pass per task, each serving one task
    got = grads(model)
    assert all(g is not None and torch.isfinite(g).all() for g in got.values())
    if balancer == "fixed":  # the step's gradient is that of the sum of the per-task losses
        model.zero_grad(set_to_none=True)
        out = model(batch["image"])
        keep = batch["mask"]
        sum(tasks[t].loss(out[t][keep[t]], batch["targets"][t][keep[t]]) for t in TOY_TASKS).backward()
        for name, g in grads(model).items():
            torch.testing.assert_close(got[name], g)


# -- auxiliary tasks -----------------------------------------------------------------------------
def test_auxiliary_tasks_are_flagged_and_left_out_of_delta_m_directions():
    tasks = build_tasks(Plugin("synthetic"), ["semseg", "depth", "normals"], auxiliary=["normals"])
    assert [t.auxiliary for t in tasks.values()] == [False, False, True]
    assert set(primary_directions(tasks)) == {"semseg/miou", "depth/rmse"}
    assert not build_tasks(Plugin("synthetic"), ["normals"])["normals"].auxiliary  # a fresh object each time


def test_trial_config_checks_auxiliary_tasks():
    with pytest.raises(ConfigError, match="auxiliary_tasks: \\['edge'\\] are not among the tasks"):
        TrialConfig(experiment="x", tasks=("semseg",), auxiliary_tasks=("edge",))
    with pytest.raises(ConfigError, match="leave no scored task"):
        TrialConfig(experiment="x", tasks=("semseg",), auxiliary_tasks=("semseg",))
    cfg = TrialConfig(experiment="x", tasks=("semseg", "edge"), auxiliary_tasks=("edge",))
    assert cfg.scored_tasks == ("semseg",)


def test_auxiliary_tasks_are_trained_and_logged_but_not_in_delta_m(tmp_path):
    cfg = TrialConfig(
        experiment="aux", tasks=("semseg", "depth", "normals"), auxiliary_tasks=("normals",),
        data_root=str(tmp_path / "data"), epochs=1, max_steps_per_epoch=2, batch_size=8, eval_batch_size=16, lr=1e-3,
        dataset=Plugin("synthetic", {"image_size": 32, "num_train": 32, "num_val": 16, "num_test": 16}),
        baseline_val={"semseg/miou": 50.0, "depth/rmse": 1.0}, baseline_test={"semseg/miou": 50.0, "depth/rmse": 1.0})
    reports = []

    class Recorder(Session):
        def report(self, metrics, state=None):
            reports.append(metrics)

    last = fit(cfg, Recorder())
    assert "train/normals/loss" in last and "val/normals/mean_angle" in last and "test/normals/mean_angle" in last
    # Delta_m over the two scored tasks only (survey Eq. 10), from the logged metrics
    expected = 50.0 * ((last["val/semseg/miou"] - 50.0) / 50.0 - (last["val/depth/rmse"] - 1.0) / 1.0)
    assert last["val_delta_m"] == pytest.approx(expected)


def test_spec_auxiliary_tasks_expand_to_trained_not_scored_tasks():
    from orchestrator.plan import expand, validate
    from orchestrator.spec import SpecError, load_spec

    base = {"name": "aux", "tasks": ["semseg", "depth"], "auxiliary_tasks": ["normals", "edge"],
            "experiments": [{"name": "mtl"}, {"name": "plain", "auxiliary_tasks": []}]}
    spec = load_spec(base)
    info = validate(spec)
    single, multi = expand(spec, info, None)
    assert sorted(e.base.tasks[0] for e in single) == ["depth", "semseg"]  # no baseline for auxiliary tasks
    assert multi[0].base.tasks == ("semseg", "depth", "normals", "edge")
    assert multi[0].base.auxiliary_tasks == ("normals", "edge")
    assert multi[1].base.tasks == ("semseg", "depth") and multi[1].base.auxiliary_tasks == ()
    with pytest.raises(SpecError, match="auxiliary_tasks: \\['depth'\\] are also in tasks"):
        load_spec({**base, "auxiliary_tasks": ["depth"]})
    with pytest.raises(SpecError, match="experiments\\[0\\].auxiliary_tasks: \\['cars'\\] not offered"):
        validate(load_spec({**base, "experiments": [{"name": "m", "auxiliary_tasks": ["cars"]}]}))


def test_report_leaves_auxiliary_tasks_out_of_the_columns_and_names_them():
    import json

    from orchestrator.report import render

    def row(experiment, role, tasks, aux=(), selected=True, metrics=None, dm=0.0):
        return {"experiment": experiment, "role": role, "tasks": list(tasks), "selected": selected,
                "config_json": json.dumps({"dataset": {"name": "synthetic", "params": {}}, "auxiliary_tasks": list(aux)}),
                "test_metrics": metrics or {}, "params": 1e6, "flops_g": 1.0, "test_delta_m": dm, "balancer": "fixed",
                "seed": 0}

    rows = [row("single_task/semseg", "single_task", ["semseg"], metrics={"semseg/miou": 50.0}),
            row("single_task/depth", "single_task", ["depth"], metrics={"depth/rmse": 1.0}),
            row("pad_net", "multi_task", ["semseg", "depth", "normals"], aux=["normals"],
                metrics={"semseg/miou": 55.0, "depth/rmse": 0.9, "normals/mean_angle": 20.0}, dm=10.0)]
    text = render(rows)
    header = text.splitlines()[0]
    assert "semseg" in header and "depth" in header and "normals" not in header
    assert "pad_net: auxiliary tasks normals (trained and supervised, not scored in Δm)" in text


# -- multi-scale heads ---------------------------------------------------------------------------
def test_multi_scale_head_reads_every_scale_and_single_scale_architectures_refuse_it():
    tasks = build_tasks(Plugin("synthetic"), ["semseg", "depth"])
    model = build_model(tasks, ModelRef(architecture=Plugin("mtl_baseline"), backbone=Plugin("resnet18"),
                                        head=Plugin("hrnet")))
    assert model.heads["semseg"].in_channels == [64, 128, 256, 512]  # layer1..layer4, finest first
    x = torch.randn(1, 3, 64, 64)
    z = model.encode(x)
    assert [t.shape[-1] for t in z] == [16, 8, 4, 2]
    out = model(x)
    # every scale reaches the output: perturbing the coarsest map changes it
    z2 = tuple(t.clone() for t in z[:-1]) + (z[-1] + 1.0,)
    assert not torch.allclose(model.decode(z2, x.shape[-2:])["semseg"], out["semseg"])
    with pytest.raises(ValueError, match="head 'hrnet' reads every scale.*architecture 'cross_stitch'"):
        build_model(tasks, ModelRef(architecture=Plugin("cross_stitch"), backbone=Plugin("resnet18"),
                                    head=Plugin("hrnet")))


# -- data parallel ---------------------------------------------------------------------------------
SEAM_MODELS = {"deep_supervision": DeepToy, "forward_per_task": PerTaskToy}


def _seam_steps(model, balancer, batches):
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    bal = build_balancer(Plugin(balancer), TOY_TASKS)
    opt = torch.optim.SGD(list(model.parameters()) + list(bal.parameters()), lr=0.1)
    for batch in batches:
        training_step(model, bal, net.tasks, batch, opt)
    return [p.detach().clone() for p in list(net.parameters()) + list(bal.parameters())]


def _seam_model(kind):
    torch.manual_seed(0)
    return SEAM_MODELS[kind]({t: MSETask(t) for t in TOY_TASKS})


def _seam_ddp_worker(rank, world, init_file, out_file):
    import torch.distributed as dist

    from tests.trainables.test_steps import _rows

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    full = toy_batch(b=12)
    results = {}
    for kind in SEAM_MODELS:
        for balancer in ("fixed", "uncertainty"):
            ddp = nn.parallel.DistributedDataParallel(_seam_model(kind))
            results[(kind, balancer)] = _seam_steps(ddp, balancer, [_rows(full, slice(6 * rank, 6 * rank + 6))] * 2)
            # task "c" labelled on rank 0 only: the replicas stay identical
            partial = toy_batch({"c": list(range(6))} if rank == 1 else None)
            params = torch.cat([p.flatten() for p in _seam_steps(
                nn.parallel.DistributedDataParallel(_seam_model(kind)), balancer, [partial])])
            gathered = [torch.zeros_like(params) for _ in range(world)]
            dist.all_gather(gathered, params)
            results[(kind, balancer, "in_sync")] = all(torch.equal(gathered[0], g) for g in gathered)
    if rank == 0:
        torch.save(results, out_file)
    dist.destroy_process_group()


def test_seams_under_data_parallel_match_one_process(tmp_path):
    """Two gloo workers on half batches == one process on the whole batch, for a deep-supervised
    model (Predictions through DDP's forward) and a one-forward-per-task model (DDP bypassed,
    gradients averaged by the step)."""
    import torch.multiprocessing as mp

    out = tmp_path / "seams.pt"
    mp.spawn(_seam_ddp_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    results = torch.load(out, weights_only=False)
    full = toy_batch(b=12)
    for kind in SEAM_MODELS:
        for balancer in ("fixed", "uncertainty"):
            expected = _seam_steps(_seam_model(kind), balancer, [full] * 2)
            for got, want in zip(results[(kind, balancer)], expected, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"{kind}/{balancer}")
            assert results[(kind, balancer, "in_sync")], f"{kind}/{balancer}: replicas diverged"

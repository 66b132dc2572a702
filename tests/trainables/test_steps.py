"""The training step: what it writes into .grad for each kind of balancer, and the contract every
registered balancer meets (one step, determinism, checkpoint round trip, the train loop).

Exactness tests use a toy model (2-layer MLP encoder, small MLP heads, MSE tasks) whose
expected gradients are computed by hand with plain autograd, one task at a time.
"""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainables  # noqa: F401  (registers every plug-in)
from trainables.architectures.base import MultiTaskModel
from trainables.balancers.gradnorm import GradNorm
from trainables.balancers.ial import IAL
from trainables.balancers.mgda import MGDA
from trainables.balancers.min_norm import min_norm_weights
from trainables.build import build_balancer, build_model, build_tasks
from trainables.config import TrialConfig
from trainables.plugins import ArchitectureInfo, Plugin, RunContext
from trainables.registry import BALANCERS
from trainables.session import Session
from trainables import steps
from trainables.steps import task_vjp, training_step, vjp_mode
from trainables.tasks.base import Task
from trainables.train_loop import fit

TOY_TASKS = ["a", "b", "c"]


class MSETask(Task):
    kind = "image"
    primary_metric = "mse"
    higher_is_better = False

    @property
    def out_channels(self) -> int:
        return 1

    def loss(self, pred, target):
        return F.mse_loss(pred, target)

    def metric_state(self, device="cpu"):
        return torch.zeros(2, dtype=torch.float64, device=device)

    def update_metric(self, state, pred, target):
        state += torch.stack([((pred - target) ** 2).sum().double(), torch.tensor(float(pred.numel()))])

    def compute_metric(self, state):
        return {"mse": float(state[0] / state[1])}


class Toy(MultiTaskModel):
    """Encoder Linear-Tanh-Linear -> z [B, dims[2]] (default 4 -> 6 -> 5); one Linear-Tanh-Linear
    head per task."""

    INFO = ArchitectureInfo(has_shared_representation=True)

    def __init__(self, tasks, dims=(4, 6, 5)):
        super().__init__(tasks)
        d_in, d_hidden, d_z = dims
        self.enc = nn.Sequential(nn.Linear(d_in, d_hidden), nn.Tanh(), nn.Linear(d_hidden, d_z))
        self.heads = nn.ModuleDict({t: nn.Sequential(nn.Linear(d_z, 3), nn.Tanh(), nn.Linear(3, 1)) for t in tasks})

    def encode(self, x):
        return self.enc(x)

    def decode(self, z, input_hw):
        return {t: head(z) for t, head in self.heads.items()}

    def shared_parameters(self):
        return list(self.enc.parameters())

    def task_specific_parameters(self, task):
        return list(self.heads[task].parameters())

    def last_shared_module(self):
        return self.enc[2]


class ToyNoRep(Toy):
    """The same network, without declaring a shared representation (the generic VJP path)."""

    INFO = ArchitectureInfo(has_shared_representation=False)

    def forward(self, x):
        return self.decode(self.encode(x), None)


def toy(cls=Toy, seed=0):
    torch.manual_seed(seed)
    tasks = {t: MSETask(t) for t in TOY_TASKS}
    return cls(tasks), tasks


def toy_batch(unlabelled=None, b=6):
    g = torch.Generator().manual_seed(1)
    mask = {t: torch.ones(b, dtype=torch.bool) for t in TOY_TASKS}
    for task, rows in (unlabelled or {}).items():
        mask[task][rows] = False
    return {"image": torch.randn(b, 4, generator=g),
            "targets": {t: torch.randn(b, 1, generator=g) * (i + 1) for i, t in enumerate(TOY_TASKS)},
            "mask": mask}


def step_grads(model, balancer, tasks, batch):
    """Run the step with lr 0 and return the gradients it wrote."""
    opt = torch.optim.SGD(list(model.parameters()) + list(balancer.parameters()), lr=0.0)
    training_step(model, balancer, tasks, batch, opt)
    return opt


def by_hand(model, tasks, batch):
    """z, per-task losses and dL_t/dz computed one task at a time."""
    z = model.encode(batch["image"])
    out = model.decode(z, None)
    losses, gz = {}, {}
    for t in TOY_TASKS:
        keep = batch["mask"][t]
        if keep.any():
            losses[t] = tasks[t].loss(out[t][keep], batch["targets"][t][keep])
            gz[t] = torch.autograd.grad(losses[t], z, retain_graph=True)[0]
    return z, losses, gz


def close(a, b, tol=1e-5):
    assert a is not None and b is not None
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# -- representation level ------------------------------------------------------------------------
@pytest.mark.parametrize("unlabelled", [None, {"c": [0, 1, 2]}])
def test_ial_encoder_gradient_is_eq7_eq8(unlabelled):
    model, tasks = toy()
    batch = toy_batch(unlabelled)
    bal = IAL(TOY_TASKS, primary_task="b", init_log_var=math.log(0.36))  # sigma 0.6 -> f = 0.4
    with torch.no_grad():
        bal.log_vars[2] = math.log(0.64)  # task c: sigma 0.8 -> f = 0.2
    step_grads(model, bal, tasks, batch)

    ref, _ = toy()
    z, losses, gz = by_hand(ref, tasks, batch)
    f = {"a": 0.4, "c": 0.2}
    combined = gz["b"] + sum(f[t] * gz["b"].norm() / gz[t].norm() * gz[t] for t in ("a", "c"))  # Eq. 7-8
    expected = torch.autograd.grad(z, list(ref.enc.parameters()), grad_outputs=combined, retain_graph=True)
    for p, e in zip(model.enc.parameters(), expected):
        close(p.grad, e)
    # decoders: Eq. 5, 1 / (2 sigma_t^2) grad L_t; uncertainties: Eq. 4 in s = log sigma^2
    sigma2 = {"a": 0.36, "b": 0.36, "c": 0.64}
    for t in TOY_TASKS:
        expected = torch.autograd.grad(losses[t], list(ref.heads[t].parameters()), retain_graph=True)
        for p, e in zip(model.heads[t].parameters(), expected):
            close(p.grad, e / (2 * sigma2[t]))
    s_grad = torch.tensor([0.5 - 0.5 * float(losses[t].detach()) / sigma2[t] for t in TOY_TASKS])
    close(bal.log_vars.grad, s_grad)


def test_ial_without_primary_leaves_the_encoder_alone():
    model, tasks = toy()
    step_grads(model, IAL(TOY_TASKS, primary_task="a"), tasks, toy_batch({"a": list(range(6))}))
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.enc.parameters())
    assert all(p.grad is not None for p in model.heads["b"].parameters())


def test_mgda_ub_encoder_gradient_and_scaled_heads():
    model, tasks = toy()
    batch = toy_batch()
    bal = MGDA(TOY_TASKS, normalization="loss+", scale_heads=True)
    step_grads(model, bal, tasks, batch)
    ref, _ = toy()
    z, losses, gz = by_hand(ref, tasks, batch)
    flat = torch.stack([gz[t].flatten() for t in TOY_TASKS])
    scale = torch.stack([losses[t].detach() for t in TOY_TASKS]) * flat.norm(dim=1)
    alpha = min_norm_weights((flat / scale[:, None]) @ (flat / scale[:, None]).T)
    expected = torch.autograd.grad(z, list(ref.enc.parameters()), grad_outputs=sum(a * gz[t] for a, t in zip(alpha, TOY_TASKS)), retain_graph=True)
    for p, e in zip(model.enc.parameters(), expected):
        close(p.grad, e)
    for a, t in zip(alpha, TOY_TASKS):
        for p, e in zip(model.heads[t].parameters(), torch.autograd.grad(losses[t], list(ref.heads[t].parameters()), retain_graph=True)):
            close(p.grad, a * e)


# -- parameter level -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["loop", "batched"])
@pytest.mark.parametrize("cls", [Toy, ToyNoRep])
@pytest.mark.parametrize("name", ["mgda", "cagrad", "imtl"])
def test_param_level_direction_equals_combination_of_explicit_grads(cls, name, mode, monkeypatch):
    """Both ways of taking the per-task vector-Jacobian products (``steps.task_vjp``) give the
    hand-computed gradients."""
    monkeypatch.setattr(steps, "VJP_MODE", mode)
    params = {"mgda": {"variant": "params"}, "cagrad": {}, "imtl": {"mode": "g", "target": "params"}}[name]
    model, tasks = toy(cls)
    batch = toy_batch({"a": [0, 1]})
    bal = build_balancer(Plugin(name, params), TOY_TASKS)
    twin = copy.deepcopy(bal)
    step_grads(model, bal, tasks, batch)

    ref, _ = toy(cls)
    out = ref(batch["image"]) if cls is ToyNoRep else ref.decode(ref.encode(batch["image"]), None)
    losses = {t: tasks[t].loss(out[t][batch["mask"][t]], batch["targets"][t][batch["mask"][t]]) for t in TOY_TASKS}
    shared = ref.shared_parameters()
    g = torch.stack([torch.cat([x.flatten() for x in torch.autograd.grad(losses[t], shared, retain_graph=True)]) for t in TOY_TASKS])
    direction = twin.combine_grads(g, {t: l.detach() for t, l in losses.items()})
    close(torch.cat([p.grad.flatten() for p in model.shared_parameters()]), direction)
    for t in TOY_TASKS:  # heads follow their own losses
        for p, e in zip(model.heads[t].parameters(), torch.autograd.grad(losses[t], list(ref.heads[t].parameters()), retain_graph=True)):
            close(p.grad, e)


def test_task_vjp_rows_loop_equal_batched_and_the_device_picks_the_mode():
    torch.manual_seed(0)
    w, x = torch.randn(3, 4, requires_grad=True), torch.randn(4)
    unused = torch.randn(2, requires_grad=True)
    y = torch.tanh(w @ x)  # [3]
    rows = torch.randn(5, 3)  # five grad-output rows
    loop = task_vjp((y,), [w, unused], (rows,), retain_graph=True, mode="loop")
    batched = task_vjp((y,), [w, unused], (rows,), retain_graph=True, mode="batched")
    expected = torch.stack([torch.outer(r * (1 - y.detach() ** 2), x) for r in rows])  # d(r . tanh(wx))/dw by hand
    close(loop[0], expected)
    close(batched[0], expected)
    assert loop[1] is None and batched[1] is None
    assert vjp_mode(torch.device("cpu")) == "loop" and vjp_mode(torch.device("cuda")) == "batched"


def test_gradnorm_last_shared_layer_path():
    model, tasks = toy()
    batch = toy_batch()
    bal = GradNorm(TOY_TASKS)
    step_grads(model, bal, tasks, batch)
    assert not torch.equal(bal.weights, torch.ones(3))  # the weights took their step
    ref, _ = toy()
    z, losses, _ = by_hand(ref, tasks, batch)
    total = sum(losses.values())  # w(0) = 1 for this step's network update
    for p, e in zip(model.parameters(), torch.autograd.grad(total, list(ref.parameters()))):
        close(p.grad, e)


# -- every registered balancer -------------------------------------------------------------------
REAL_TASKS = ["semseg", "depth", "normals"]


def real_batch(seed, unlabelled=None, b=4, size=32):
    g = torch.Generator().manual_seed(seed)
    mask = {t: torch.ones(b, dtype=torch.bool) for t in REAL_TASKS}
    if unlabelled:
        mask[unlabelled][:] = False
    return {"image": torch.randn(b, 3, size, size, generator=g),
            "targets": {"semseg": torch.randint(0, 7, (b, size, size), generator=g),
                        "depth": torch.rand(b, 1, size, size, generator=g) * 5 + 0.5,
                        "normals": F.normalize(torch.randn(b, 3, size, size, generator=g), dim=1)},
            "mask": mask}


def build(name, seed=0):
    torch.manual_seed(seed)
    tasks = build_tasks(Plugin("synthetic", {"image_size": 32}), REAL_TASKS)
    model = build_model(tasks)
    bal = build_balancer(name, REAL_TASKS, RunContext(primary_task="semseg", seed=seed + 7))
    opt = torch.optim.Adam(list(model.parameters()) + list(bal.parameters()), lr=1e-3)
    return tasks, model, bal, opt


def snapshot(model, bal):
    """Every tensor of the model's and the balancer's state (including extra state, e.g. RNGs)."""
    values = list(model.state_dict().values()) + list(bal.state_dict().values())
    values += [v for x in values if isinstance(x, dict) for v in x.values()]
    return [t.detach().clone() for t in values if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", BALANCERS.names())
def test_balancer_contract(name):
    def run(restore_from=None):
        tasks, model, bal, opt = build(name, seed=0 if restore_from is None else 123)
        if restore_from is not None:
            state = torch.load(io.BytesIO(restore_from), weights_only=False)
            model.load_state_dict(state["model"])
            bal.load_state_dict(state["balancer"])
            opt.load_state_dict(state["optimizer"])
        else:
            before = [p.detach().clone() for p in model.parameters()]
            training_step(model, bal, tasks, real_batch(1), opt, meta_batch=real_batch(101))
            changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
            assert all(changed), f"{name}: {changed.count(False)} parameters did not move"
            if bal.info.needs_epoch_losses:
                bal.on_epoch_end(0, {"semseg": 2.0, "depth": 1.0, "normals": 0.5})
                bal.on_epoch_end(1, {"semseg": 1.5, "depth": 0.9, "normals": 0.45})
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "balancer": bal.state_dict(), "optimizer": opt.state_dict()}, buffer)
            restore_from = buffer.getvalue()
        for seed, unlabelled in [(2, "depth"), (3, None)]:
            losses = training_step(model, bal, tasks, real_batch(seed, unlabelled), opt, meta_batch=real_batch(seed + 100))
            assert all(math.isfinite(v) for v in losses.values())
        weights = bal.current_weights()
        assert all(math.isfinite(w) for w in weights.values())
        return snapshot(model, bal), weights, restore_from

    first, weights, checkpoint = run()
    again, _, _ = run()
    assert all(torch.equal(a, b) for a, b in zip(first, again)), f"{name} is not deterministic"
    restored, restored_weights, _ = run(restore_from=checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(first, restored)), f"{name} does not continue identically after a restore"
    assert weights == restored_weights


# -- the train loop ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


@pytest.mark.parametrize("balancer,params", [("uncertainty", {}), ("mgda", {}), ("pcgrad", {}), ("ial", {})])
def test_fit_runs_with_every_kind_of_balancer(balancer, params, data_root):
    cfg = TrialConfig(experiment="t", tasks=("semseg", "depth", "normals"), balancer=Plugin(balancer, params),
                      primary_task="depth", data_root=data_root, epochs=1, batch_size=8, max_steps_per_epoch=2,
                      dataset=Plugin("synthetic", {"image_size": 32, "num_train": 32, "num_val": 16, "num_test": 16}))
    report = fit(cfg, Session(device=torch.device("cpu")))
    assert report["finished"]
    for key in ("val/semseg/miou", "val/depth/rmse", "val/normals/mean_angle", "test/depth/rmse",
                "train/semseg/loss", "val_score"):
        assert math.isfinite(report[key]), key
    assert all(math.isfinite(v) for k, v in report.items() if k.startswith("weight/"))


# -- data parallel -------------------------------------------------------------------------------
DDP_CASES = [("fixed", {}), ("uncertainty", {}), ("mgda", {}), ("mgda", {"variant": "params"}), ("pcgrad", {}),
             ("gradnorm", {}), ("ial", {}), ("imtl", {}), ("cagrad", {})]


def _run_steps(model, case, batches):
    name, params = case
    bal = build_balancer(Plugin(name, params), TOY_TASKS, RunContext(primary_task="b", seed=0))
    opt = torch.optim.SGD(list(model.parameters()) + list(bal.parameters()), lr=0.1)
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    for batch in batches:
        training_step(model, bal, net.tasks, batch, opt)
    return [p.detach().clone() for p in list(net.parameters()) + list(bal.parameters())]


def _rows(batch, rows):
    return {"image": batch["image"][rows], "targets": {t: v[rows] for t, v in batch["targets"].items()},
            "mask": {t: v[rows] for t, v in batch["mask"].items()}}


def _ddp_worker(rank, world, init_file, out_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    full = toy_batch(b=12)
    mine = slice(6 * rank, 6 * rank + 6)
    results = {}
    for case in DDP_CASES:
        model, _ = toy()
        ddp = nn.parallel.DistributedDataParallel(model)
        results[repr(case)] = _run_steps(ddp, case, [_rows(full, mine)] * 2)
        # task "c" labelled on rank 0 only: the replicas must stay identical
        partial = toy_batch({"c": list(range(6))} if rank == 1 else None)
        model, _ = toy()
        params = torch.cat([p.flatten() for p in _run_steps(nn.parallel.DistributedDataParallel(model), case, [partial])])
        gathered = [torch.zeros_like(params) for _ in range(world)]
        dist.all_gather(gathered, params)
        results[repr(case) + "/in_sync"] = all(torch.equal(gathered[0], g) for g in gathered)
    if rank == 0:
        torch.save(results, out_file)
    dist.destroy_process_group()


def test_data_parallel_matches_single_process(tmp_path):
    """Two gloo workers on half batches each == one process on the whole batch (no BN in the toy)."""
    import torch.multiprocessing as mp

    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    results = torch.load(out, weights_only=False)
    full = toy_batch(b=12)
    for case in DDP_CASES:
        model, _ = toy()
        expected = _run_steps(model, case, [full] * 2)
        for got, want in zip(results[repr(case)], expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"{case}")
        assert results[repr(case) + "/in_sync"], f"{case}: replicas diverged with a task labelled on one worker"

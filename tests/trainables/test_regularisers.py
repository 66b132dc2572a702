"""The regulariser seam: terms on every output (labelled or not) added outside the balancer at
every balancer level, extra views, features, own parameters; and the consistency method."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import trainables  # noqa: F401  (registers every plug-in)
from trainables.build import build_balancer, build_regularisers, build_tasks
from trainables.datasets.views import Views, photometric
from trainables.plugins import Plugin, RegulariserInfo, RunContext
from trainables.regularisers.base import Regulariser
from trainables.session import Session
from trainables.steps import training_step
from tests.trainables.test_steps import TOY_TASKS, MSETask, Toy, ToyNoRep, toy_batch


class Probe(Regulariser):
    """A known term with a learnable scale: a * sum_t mean((view1_t - view0_t)^2) + b * |z|^2 mean."""

    INFO = RegulariserInfo(views=2, needs_features=True)

    def __init__(self, tasks, needs_features=True):
        super().__init__(tasks)
        self.a = nn.Parameter(torch.tensor(0.7))
        self.b = 0.3 if needs_features else 0.0
        self.info = RegulariserInfo(views=2, needs_features=needs_features)

    def terms(self, outputs, batch, features=None):
        out = {"probe/views": self.a * sum(((outputs[1][t] - outputs[0][t]) ** 2).mean() for t in self.task_names)}
        if features is not None:
            out["probe/features"] = self.b * features.square().mean()
        return out


def with_views(batch, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {**batch, "views": batch["image"][:, None] + 0.3 * torch.randn(batch["image"].shape[0], 1, 4, generator=g)}


def grads(model, extra=()):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for p in list(model.parameters()) + list(extra)]


def step(cls, balancer, regs, batch, seed=0):
    torch.manual_seed(seed)
    tasks = {t: MSETask(t) for t in TOY_TASKS}
    model = cls(tasks)
    bal = build_balancer(Plugin(*balancer), TOY_TASKS, RunContext(primary_task="a", seed=0))
    reg_modules = [r(tasks) for r in regs]
    extra = [p for r in reg_modules for p in r.parameters()]
    opt = torch.optim.SGD(list(model.parameters()) + list(bal.parameters()) + extra, lr=0.0)
    report = training_step(model, bal, tasks, batch, opt, Session(), reg_modules)
    return model, reg_modules, grads(model, extra), report


def by_hand(model, reg, batch):
    """d(terms)/d(model params, reg params) from two plain forward passes."""
    model.zero_grad(set_to_none=True)
    reg.zero_grad(set_to_none=True)
    x0, x1 = batch["image"], batch["views"][:, 0]
    outputs = [model(x0), model(x1)]
    features = model.encode(x0) if reg.info.needs_features else None
    sum(reg.terms(outputs, batch, features).values()).backward()
    return grads(model, list(reg.parameters()))


LEVELS = [(Toy, ("fixed", {}), True), (Toy, ("mgda", {}), True), (Toy, ("pcgrad", {}), True),
          (Toy, ("uncertainty", {}), True), (ToyNoRep, ("pcgrad", {}), False), (ToyNoRep, ("fixed", {}), False)]


@pytest.mark.parametrize("cls, balancer, features", LEVELS)
def test_terms_are_added_outside_the_balancer_at_every_level(cls, balancer, features):
    """Step gradient with the regulariser = step gradient without it + the terms' own gradient."""
    batch = with_views(toy_batch(unlabelled={"c": [0, 1, 2]}))
    probe = lambda tasks: Probe(tasks, needs_features=features)  # noqa: E731
    model, regs, with_reg, report = step(cls, balancer, [probe], batch)
    _, _, without, _ = step(cls, balancer, [], batch)
    expected = by_hand(model, regs[0], batch)
    n = len(list(model.parameters()))
    for k, (a, b, e) in enumerate(zip(with_reg[:n], without, expected[:n])):
        torch.testing.assert_close(a - b, e, rtol=1e-4, atol=1e-6, msg=f"{balancer} parameter {k}")
    torch.testing.assert_close(with_reg[n], expected[n])  # the regulariser's own parameter
    assert report["reg/probe/views"] > 0 and ("reg/probe/features" in report) == features


def test_a_task_without_any_label_still_trains_through_consistency():
    batch = with_views(toy_batch(unlabelled={"c": list(range(6))}))
    model, _, got, report = step(Toy, ("fixed", {}), [lambda t: build_regularisers(["consistency"], t)[0]], batch)
    assert "c" not in report and report["reg/consistency"] > 0
    head_c = [p.grad for p in model.heads["c"].parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in head_c)  # only the regulariser reaches it
    assert all(torch.isfinite(g).all() for g in got)


def test_consistency_by_hand():
    """JTR Eq. 2: per sample, the mean over its unlabelled tasks of L_t(view 1, pseudo-label of view 0),
    averaged over the batch."""
    tasks = build_tasks(Plugin("synthetic"), ["semseg", "depth"])
    reg = build_regularisers([Plugin("consistency", {"weight": 2.0})], tasks)[0]
    g = torch.Generator().manual_seed(0)
    v0 = {"semseg": torch.randn(3, 7, 4, 4, generator=g), "depth": torch.rand(3, 1, 4, 4, generator=g) + 1}
    v1 = {k: (v + 0.1 * torch.randn(v.shape, generator=g)).requires_grad_() for k, v in v0.items()}
    mask = {"semseg": torch.tensor([True, False, False]), "depth": torch.tensor([False, False, True])}
    term = reg.terms([v0, v1], {"mask": mask})["consistency"]
    ce = lambda i: tasks["semseg"].loss(v1["semseg"][i:i + 1], v0["semseg"][i:i + 1].argmax(1))  # noqa: E731
    l1 = lambda i: (v1["depth"][i] - v0["depth"][i]).abs().mean()  # noqa: E731
    # sample 0: depth unlabelled (1 task); sample 1: both (2 tasks); sample 2: semseg (1 task)
    expected = 2.0 * (l1(0) / 1 + (ce(1) + l1(1)) / 2 + ce(2) / 1) / 3
    torch.testing.assert_close(term, expected)
    term.backward()
    assert v1["semseg"].grad[0].abs().sum() == 0 and v1["depth"].grad[2].abs().sum() == 0  # labelled: untouched
    fully = {t: torch.ones(3, dtype=torch.bool) for t in tasks}
    assert float(reg.terms([v0, v1], {"mask": fully})["consistency"].detach()) == 0.0


def test_views_differ_and_share_the_labels(tmp_path):
    from trainables.build import build_dataset

    torch.manual_seed(0)
    base = build_dataset(Plugin("synthetic", {"image_size": 32, "num_train": 4, "num_val": 2, "num_test": 2}),
                         str(tmp_path), "train", ["semseg", "depth"])
    views = Views(base, 3)
    item, plain = views[1], base[1]
    assert item["views"].shape == (2,) + tuple(item["image"].shape)
    assert not torch.allclose(item["views"][0], item["image"]) and not torch.allclose(item["views"][0], item["views"][1])
    for t in ("semseg", "depth"):
        assert torch.equal(item["targets"][t], plain["targets"][t])
    # photometric only: per-channel affine + small noise of the same image (correlation stays high)
    x = torch.randn(3, 16, 16)
    y = photometric(x)
    assert torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1] > 0.9
    with pytest.raises(ValueError, match="views >= 2"):
        Views(base, 1)


def test_regulariser_parameters_join_optimiser_and_checkpoint_through_fit(tmp_path, monkeypatch):
    """The components table: a regulariser's own parameters are optimised at lr * lr_mult, saved and
    restored with the checkpoint."""
    from trainables import train_loop
    from trainables.config import TrialConfig

    class Scaled(Regulariser):
        INFO = RegulariserInfo()

        def __init__(self, tasks, params=None, context=None):
            super().__init__(tasks)
            self.scale = nn.Parameter(torch.tensor(1.0))

        def terms(self, outputs, batch, features=None):
            return {"scaled": self.scale * sum(o.square().mean() for o in outputs[0].values())}

        def param_groups(self):
            return [{"name": "scaled", "params": [self.scale], "lr_mult": 10.0}]

    monkeypatch.setattr(train_loop, "build_regularisers", lambda refs, tasks, context: nn.ModuleList([Scaled(tasks)]))
    saved = []

    class Recorder(Session):
        def report(self, metrics, state=None):
            saved.append(state)

    cfg = TrialConfig(experiment="r", tasks=("semseg", "depth"), data_root=str(tmp_path / "data"), epochs=1,
                      max_steps_per_epoch=2, batch_size=8, eval_batch_size=16, lr=1e-3, optimizer="sgd",
                      dataset=Plugin("synthetic", {"image_size": 32, "num_train": 32, "num_val": 16, "num_test": 16}),
                      regularisers=(Plugin("consistency"),))
    last = train_loop.fit(cfg, Recorder())
    assert last["train/reg/scaled"] > 0
    state = saved[-1]
    assert float(state["regularisers"]["0.scale"]) < 1.0  # trained: the term pushes the scale down
    lrs = [g["lr"] for g in state["optimizer"]["param_groups"]]
    assert any(abs(lr - 10 * lrs[0]) < 1e-12 for lr in lrs[1:])  # its group at 10x the (decayed) base rate

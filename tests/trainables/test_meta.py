"""The meta-batch seam: a meta split carved out of train (never val or test), cycled, and a
functional forward that leaves the model untouched; balancers' own parameter groups."""
from __future__ import annotations

import torch
from torch import nn

import trainables  # noqa: F401
from trainables.balancers.base import Balancer
from trainables.build import build_balancer, build_model, build_tasks
from trainables.config import TrialConfig
from trainables.meta import MetaContext, cycle, split_meta
from trainables.plugins import BalancerInfo, ModelRef, Plugin
from trainables.session import Session
from trainables.steps import labelled, task_losses


class Indexed(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"index": i}


def test_meta_split_is_disjoint_from_the_rest_of_train_and_seeded():
    train, meta = split_meta(Indexed(50), 0.1, seed=3)
    a, b = set(train.indices), set(meta.indices)
    assert len(b) == 5 and not a & b and a | b == set(range(50))
    assert split_meta(Indexed(50), 0.1, seed=3)[1].indices == meta.indices
    assert split_meta(Indexed(50), 0.1, seed=4)[1].indices != meta.indices
    loader = torch.utils.data.DataLoader(meta, batch_size=2)
    seen = [int(i) for _, batch in zip(range(6), cycle(loader)) for i in batch["index"]]
    assert set(seen) == b and len(seen) == 10  # two passes over its 5 items (batches 2, 2, 1)


def test_functional_losses_match_the_model_and_leave_it_untouched():
    torch.manual_seed(0)
    tasks = build_tasks(Plugin("synthetic"), ["semseg", "depth"])
    model = build_model(tasks, ModelRef(architecture=Plugin("mtl_baseline"), backbone=Plugin("tiny_cnn")))
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(4, 3, 32, 32, generator=g),
             "targets": {"semseg": torch.randint(0, 7, (4, 32, 32), generator=g), "depth": torch.rand(4, 1, 32, 32) + 1},
             "mask": {"semseg": torch.ones(4, dtype=torch.bool), "depth": torch.tensor([True, False, True, True])}}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    ctx = MetaContext(model, tasks, batch, batch, opt)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    got = ctx.losses(ctx.params, batch)
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n  # running statistics untouched by the functional pass
    out = model(batch["image"])
    expected = task_losses(out, tasks, batch, labelled(out, tasks, batch))
    for t in tasks:
        torch.testing.assert_close(got[t], expected[t])
    moved = {n: p + 0.1 for n, p in ctx.params.items()}
    assert float(ctx.losses(moved, batch)["depth"].detach()) != float(got["depth"].detach())
    assert (ctx.lr, ctx.momentum, ctx.weight_decay) == (0.05, 0.9, 1e-4)
    assert ctx.momentum_buffer(next(iter(ctx.params))) is None  # before the first step


class Recorder(Balancer):
    """A bilevel stand-in: records what meta_update sees; its weight w trains from the meta step."""

    INFO = BalancerInfo(needs_meta_batch=True, meta_fraction=0.25)
    seen_meta, seen_train = set(), set()

    def __init__(self, task_names, params=None, context=None):
        super().__init__(task_names, params, context)
        self.w = nn.Parameter(torch.ones(len(task_names)))

    def combine(self, losses):
        return sum(self.w[i].detach() * losses[t] for i, t in enumerate(self.task_names) if t in losses)

    def meta_update(self, ctx):
        Recorder.seen_meta.update(ctx.meta_batch["index"].tolist())
        Recorder.seen_train.update(ctx.batch["index"].tolist())
        self.w.grad = torch.full_like(self.w, 1.0)  # the step's optimiser applies it


def test_fit_draws_meta_batches_from_train_only_and_applies_the_balancer_gradient(tmp_path, monkeypatch):
    from trainables import train_loop
    from trainables.datasets import synthetic

    class WithIndex(torch.utils.data.Dataset):
        def __init__(self, base, split):
            self.base, self.split = base, split

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            return {**self.base[i], "index": torch.tensor(i if self.split == "train" else 10_000 + i)}

    real = train_loop.build_dataset
    monkeypatch.setattr(train_loop, "build_dataset", lambda ref, root, split, tasks, augment=False:
                        WithIndex(real(ref, root, split, tasks, augment), split))
    monkeypatch.setattr(train_loop, "balancer_info", lambda ref: Recorder.INFO)
    monkeypatch.setattr(train_loop, "build_balancer", lambda ref, tasks, context: Recorder(list(tasks)))
    saved = []

    class Keep(Session):
        def report(self, metrics, state=None):
            saved.append(state)

    cfg = TrialConfig(experiment="m", tasks=("semseg", "depth"), data_root=str(tmp_path / "data"), epochs=2,
                      batch_size=4, eval_batch_size=16, lr=0.1, optimizer="sgd", weight_decay=0.5,
                      dataset=Plugin("synthetic", {"image_size": 32, "num_train": 32, "num_val": 16, "num_test": 16}))
    train_loop.fit(cfg, Keep())
    assert Recorder.seen_meta and max(Recorder.seen_meta) < 10_000  # never a val or test item
    assert not Recorder.seen_meta & Recorder.seen_train  # disjoint from the batches it trains on
    assert len(Recorder.seen_meta) == 8 and len(Recorder.seen_train) == 24  # a quarter of the 32 held out
    w = saved[-1]["balancer"]["w"]
    # 16 steps of SGD (momentum 0.9) on a constant gradient 1, poly-decayed, WITHOUT weight decay:
    # the weights went down by the same amount, which weight decay 0.5 would have made larger
    assert torch.allclose(w, w[0].expand_as(w)) and float(w[0]) < 1.0
    groups = saved[-1]["optimizer"]["param_groups"]
    assert groups[-1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 0.5
    assert synthetic  # the dataset module is the real one


def test_balancer_parameters_have_no_weight_decay():
    bal = build_balancer(Plugin("uncertainty"), ["a", "b"])
    (group,) = bal.param_groups()
    assert group["weight_decay"] == 0.0 and len(group["params"]) == len(list(bal.parameters()))
    assert build_balancer(Plugin("fixed"), ["a", "b"]).param_groups() == []

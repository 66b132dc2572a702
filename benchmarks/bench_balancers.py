"""Step time of every registered balancer relative to ``fixed``, on one model, in one run.

Model: ``mtl_baseline`` = ``tiny_cnn`` encoder + ``conv`` heads for semseg / depth / normals
(the synthetic dataset's dense tasks), batch 8 at 64 x 64, Adam, on the CPU with as many
threads as there are cores (``--device cuda`` to time a GPU). Each method gets its own copy of
the same initial model; after a warm-up, repetitions are interleaved in a fresh random order
every round so that machine noise hits every method alike, and the median step time is
reported as a ratio to ``fixed``'s. A bilevel balancer (``needs_meta_batch``: Auto-Lambda) gets
the same batch as its meta batch (``training_step`` ignores it for the others). "naive" is the
reference loop the step's batched vector-Jacobian products replace: one full backward per task
(``loss_t.backward(retain_graph=True)`` and a copy of the shared gradients each time), then their
sum.

Targets: representation-level methods <= 1.3x fixed, parameter-level methods <= 1.8x.

    python benchmarks/bench_balancers.py [--rounds 30] [--warmup 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import time

import torch
import torch.nn.functional as F

from trainables.build import build_balancer, build_model, build_tasks
from trainables.plugins import Plugin, RunContext
from trainables.registry import BALANCERS
from trainables.steps import task_losses, training_step

TASKS = ["semseg", "depth", "normals"]
TARGETS = {"loss": None, "representation": 1.3, "params": 1.8}


def make_batch(batch: int, size: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    targets = {
        "semseg": torch.randint(0, 7, (batch, size, size), generator=g),
        "depth": torch.rand(batch, 1, size, size, generator=g) * 8 + 0.5,
        "normals": F.normalize(torch.randn(batch, 3, size, size, generator=g), dim=1),
    }
    return {"image": torch.randn(batch, 3, size, size, generator=g).to(device),
            "targets": {k: v.to(device) for k, v in targets.items()},
            "mask": {k: torch.ones(batch, dtype=torch.bool, device=device) for k in TASKS}}


def naive_step(model, tasks, batch, optimizer) -> None:
    """One full backward per task, the shared gradients copied out each time, then summed."""
    optimizer.zero_grad(set_to_none=True)
    shared = model.shared_parameters()
    losses = task_losses(model(batch["image"]), tasks, batch)
    per_task = []
    for loss in losses.values():
        for p in shared:
            p.grad = None
        loss.backward(retain_graph=True)  # heads accumulate their own gradients
        per_task.append(torch.cat([p.grad.reshape(-1) for p in shared]))
    direction = torch.stack(per_task).sum(0)
    offset = 0
    for p in shared:
        p.grad = direction[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    optimizer.step()


def level(balancer) -> str:
    return balancer.info.grad_target if balancer.info.needs_task_grads else "loss"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    device = torch.device(args.device)
    tasks = build_tasks(Plugin("synthetic", {"image_size": args.size}), TASKS)
    torch.manual_seed(0)
    base = build_model(tasks).to(device)
    batch = make_batch(args.batch, args.size, device)

    runs = {}
    for name in BALANCERS.names():
        model = copy.deepcopy(base)
        balancer = build_balancer(name, TASKS, RunContext(primary_task=TASKS[0], seed=0)).to(device)
        optimizer = torch.optim.Adam(list(model.parameters()) + list(balancer.parameters()), lr=1e-4)
        # bilevel methods get the training batch as meta batch: the cost does not depend on its samples
        runs[name] = (level(balancer), lambda m=model, b=balancer, o=optimizer: training_step(m, b, tasks, batch, o,
                                                                                              meta_batch=batch))
    model = copy.deepcopy(base)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    runs["naive (1 backward/task)"] = ("params", lambda: naive_step(model, tasks, batch, optimizer))

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {name: [] for name in runs}
    order = list(runs)
    rng = random.Random(0)
    for r in range(args.warmup + args.rounds):
        rng.shuffle(order)
        for name in order:
            sync()
            t0 = time.perf_counter()
            runs[name][1]()
            sync()
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    ref = statistics.median(times["fixed"])
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch} x {args.size}x{args.size}, tasks {TASKS}, {args.rounds} rounds")
    print(f"{'balancer':<26}{'level':<16}{'median ms':>10}{'x fixed':>9}{'target':>8}")
    for name in sorted(runs, key=lambda n: (n.startswith("naive"), n)):
        lvl = runs[name][0]
        med = statistics.median(times[name])
        target = TARGETS[lvl] if not name.startswith("naive") else None
        verdict = "" if target is None else (f"<={target}" + (" ok" if med / ref <= target else " MISS"))
        print(f"{name:<26}{lvl:<16}{med * 1e3:>10.1f}{med / ref:>9.2f}  {verdict}")


if __name__ == "__main__":
    main()

"""Step time of every registered balancer relative to ``fixed``, on one model, in one run.

Model: ``mtl_baseline`` = ``tiny_cnn`` encoder + ``conv`` heads for semseg / depth / normals
(the synthetic dataset's dense tasks), batch 8 at 64 x 64, Adam, on the CPU with as many
threads as there are cores (``--device cuda`` to time a GPU). Each method gets its own copy of
the same initial model; after a warm-up, repetitions are interleaved in a fresh random order
every round so that machine noise hits every method alike, and the median step time is
reported as a ratio to ``fixed``'s. The whole measurement runs ``--repeats`` times and the table
shows the median over repeats of those medians (and the range of the ratio). A bilevel balancer
(``needs_meta_batch``: Auto-Lambda) gets the same batch as its meta batch (``training_step``
ignores it for the others). "naive" is the reference loop the step's batched vector-Jacobian
products replace: one full backward per task (``loss_t.backward(retain_graph=True)`` and a copy
of the shared gradients each time), then their sum.

Loop vs batched: parameter-level balancers need per-task vector-Jacobian products, which the
step (``trainables/steps.py`` ``task_vjp``) takes as one batched product
(``autograd.grad(..., is_grads_batched=True)``) or one product per task, chosen per device
(``vjp_mode``: the loop on the CPU, batched elsewhere). The table times each of them the shipped
way and, in its last two columns, the other way (same step, same result). Representation-level
balancers take per-task gradients of z only through the heads, one call per task already: no
batched path to compare.

Targets: representation-level methods <= 1.3x fixed, parameter-level methods <= 1.8x.

    python benchmarks/bench_balancers.py [--rounds 30] [--warmup 5] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import random
import statistics
import time

import torch
import torch.nn.functional as F

from trainables import steps
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


@contextlib.contextmanager
def vjp(mode: str):
    """Within the block, the step takes its per-task vector-Jacobian products ``mode``'s way
    ("loop", "batched"; "auto": the per-device choice it ships with, ``steps.vjp_mode``)."""
    before = steps.VJP_MODE
    steps.VJP_MODE = mode
    try:
        yield
    finally:
        steps.VJP_MODE = before


def level(balancer) -> str:
    return balancer.info.grad_target if balancer.info.needs_task_grads else "loss"


def measure(runs: dict, rounds: int, warmup: int, sync, seed: int) -> dict:
    """Median seconds per step of every run: ``rounds`` interleaved rounds in a fresh random order
    each, after ``warmup`` untimed ones."""
    times = {name: [] for name in runs}
    order = list(runs)
    rng = random.Random(seed)
    for r in range(warmup + rounds):
        rng.shuffle(order)
        for name in order:
            sync()
            t0 = time.perf_counter()
            runs[name][1]()
            sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="whole measurements; the table shows their median")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--widths", default=None, help="tiny_cnn's stage widths, e.g. 32,64,128,192 for a wider "
                                                       "model (default: its own, 16,32,64,96)")
    parser.add_argument("--balancers", default=None, help="comma-separated names (default: every registered one; "
                                                          "fixed is always timed)")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    device = torch.device(args.device)
    tasks = build_tasks(Plugin("synthetic", {"image_size": args.size}), TASKS)
    torch.manual_seed(0)
    backbone = Plugin("tiny_cnn", {"widths": [int(w) for w in args.widths.split(",")]} if args.widths else {})
    base = build_model(tasks, {"backbone": backbone}).to(device)
    batch = make_batch(args.batch, args.size, device)

    def step(name: str, mode: str):
        model = copy.deepcopy(base)
        balancer = build_balancer(name, TASKS, RunContext(primary_task=TASKS[0], seed=0)).to(device)
        optimizer = torch.optim.Adam(list(model.parameters()) + list(balancer.parameters()), lr=1e-4)

        def run() -> None:  # bilevel methods get the training batch as meta batch: same cost
            with vjp(mode):
                training_step(model, balancer, tasks, batch, optimizer, meta_batch=batch)
        return level(balancer), run

    runs, loops = {}, {}  # runs[name]: the step as shipped (auto); loops[name]: its other way
    other = "batched" if steps.vjp_mode(device) == "loop" else "loop"
    chosen = sorted({"fixed", *args.balancers.split(",")}) if args.balancers else BALANCERS.names()
    for name in chosen:
        runs[name] = step(name, "auto")
        if runs[name][0] == "params":  # the only level with per-task vector-Jacobian products
            loops[name] = f"{name} [{other}]"
            runs[loops[name]] = step(name, other)
    model = copy.deepcopy(base)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    runs["naive (1 backward/task)"] = ("params", lambda: naive_step(model, tasks, batch, optimizer))

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    medians = [measure(runs, args.rounds, args.warmup, sync, seed) for seed in range(args.repeats)]
    ms = {name: statistics.median(m[name] for m in medians) * 1e3 for name in runs}
    ratios = {name: [m[name] / m["fixed"] for m in medians] for name in runs}

    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch} x {args.size}x{args.size}, tasks {TASKS}, {args.rounds} rounds x {args.repeats} repeats")
    shipped = steps.vjp_mode(device)
    print(f"per-task vector-Jacobian products on {device.type}: {shipped} (steps.vjp_mode); the last two "
          f"columns time the {other} way")
    print(f"{'balancer':<26}{'level':<16}{'median ms':>10}{'x fixed':>9}{'(range)':>13}{'target':>10}"
          f"{other + ' ms':>11}{other + '/' + shipped:>15}")
    shown = [n for n in runs if n not in loops.values()]
    for name in sorted(shown, key=lambda n: (n.startswith("naive"), n)):
        lvl = runs[name][0]
        ratio = statistics.median(ratios[name])
        spread = f"({min(ratios[name]):.2f}-{max(ratios[name]):.2f})"
        target = TARGETS[lvl] if not name.startswith("naive") else None
        verdict = "" if target is None else (f"<={target}" + (" ok" if ratio <= target else " MISS"))
        loop = ""
        if name in loops:
            loop = f"{ms[loops[name]]:>11.1f}{ms[loops[name]] / ms[name]:>15.2f}"
        print(f"{name:<26}{lvl:<16}{ms[name]:>10.1f}{ratio:>9.2f}{spread:>13}  {verdict:<8}{loop}")
    if loops:
        faster = sum(ms[loops[n]] < ms[n] for n in loops)
        print(f"{other} faster than {shipped} for {faster} of {len(loops)} parameter-level balancers on this "
              f"{device.type}")


if __name__ == "__main__":
    main()

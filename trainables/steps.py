"""One optimisation step, served according to the balancer's declared needs.

The step branches on the balancer's ``BalancerInfo`` (``needs_task_grads``, ``grad_target``,
``grad_scope``, ``needs_outputs``; see ``trainables/plugins.py``) and the architecture's
``ArchitectureInfo`` (``has_shared_representation``), never on a name:

loss level (``needs_task_grads=False``): one forward, ``balancer.combine(losses)``, one backward.

representation level (``grad_target="representation"``, needs a shared representation):
    z = encode(x) (a tensor, or a tuple of tensors whose gradients are concatenated into one
    vector per task); the heads run on a detached copy z_d; one ``autograd.grad`` per task through
    its own head gives both dL_t/dz and dL_t/d(head params) (the heads are disjoint, so this is
    one backward through the heads in total). The balancer turns the Gram matrix of the z
    gradients into coefficients c, the encoder gets z.backward(sum_t c_t dL_t/dz), and every
    decoder parameter gets sum_t w_t dL_t/dtheta with w_t = d combine(losses) / dL_t.

parameter level (``grad_target="params"``): the per-task gradients w.r.t. the shared
    parameters (or only the last shared layer, ``grad_scope="last_shared"``) as a [T, P] matrix
    of vector-Jacobian products (``task_vjp``: one batched product with ``is_grads_batched`` on a
    GPU, one product per task on the CPU, where that is faster - ``vjp_mode``). With a shared
    representation the VJP starts at z from the per-head z gradients above, so the heads are
    traversed once, not T times. ``combine_grads`` gives the shared update, written into .grad;
    everything else (heads, shared parameters outside the scope, the balancer's own parameters)
    gets the gradient of ``combine(losses)``.

Partially labelled batches: a task without a labelled sample is absent from ``losses``; the
per-task mask drops unlabelled samples from each loss.

Architecture metadata (``ArchitectureInfo``): with ``deep_supervision`` each task's loss also
carries its weighted intermediate predictions (``task_losses``); with ``forward_per_task`` the
outputs come from one forward pass per task (``forward``).

Mixed precision (``Runtime.amp``, given as ``amp``, the autocast dtype): the forward pass
runs under ``torch.autocast``; its outputs (and the shared representation z) are cast to fp32
before the losses, the balancer and the regularisers read them, so losses, Gram matrices and
combined gradients are fp32, and the parameters stay fp32. With float16 a ``GradScaler``
scales the loss-level objective before its backward pass and unscales the gradients in its
``step``; the gradient-level modes take no scaler (``fit`` refuses float16 with them: their
per-task gradients would need unscaling before the balancer reads them).

Data parallel: gradient-level steps run on the bare module (``model.module`` under DDP), so
DDP's own all-reduce is bypassed and done here instead, through the session's collectives
(``trainables/session.py``), when more than one worker runs: parameter-level per-task
gradients [T, P] are averaged over workers BEFORE they are combined (exact, at T times the
communication of plain DDP); representation-level steps sum the
per-worker Gram matrices (exact: the global z gradient is the concatenation of the workers'),
then average the resulting parameter gradients. The balancer's own parameter gradients are
averaged in every mode (DDP does not wrap the balancer). BatchNorm buffers are not broadcast
from rank 0 on gradient-level steps (DDP does that in its forward, which is bypassed).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.architectures.base import Predictions
from trainables.balancers.base import Balancer
from trainables.regularisers.base import Regulariser
from trainables.step_terms import Regularised, first_view, model_input, regulariser_grads, split_views
from trainables.session import Session
from trainables.tasks.base import Task


def labelled(out: Mapping[str, Tensor], tasks: Mapping[str, Task], batch) -> Dict[str, Tuple[Tensor, Tensor]]:
    """task -> (outputs, targets) of the samples labelled for it; unlabelled tasks are absent."""
    pairs = {}
    for name in tasks:
        keep = batch["mask"][name]
        if keep.any():
            pairs[name] = (out[name][keep], batch["targets"][name][keep])
    return pairs


def task_losses(out: Mapping[str, Tensor], tasks: Mapping[str, Task], batch,
                pairs: Optional[Dict[str, Tuple[Tensor, Tensor]]] = None) -> Dict[str, Tensor]:
    """Per-task losses over the samples labelled for each task; unlabelled tasks are absent.

    Deep supervision: when ``out`` carries intermediate predictions (``Predictions.aux``), task
    t's loss is loss(final) + sum_k w_k * loss(aux_k), each aux prediction upsampled (bilinear)
    to the target's size and restricted to the same labelled samples; the balancer sees this
    one loss per task. A level of weight 0 is still added (times 0), so the graph, and the
    set of parameters DDP expects gradients for, do not depend on the weights.
    """
    pairs = labelled(out, tasks, batch) if pairs is None else pairs
    aux = getattr(out, "aux", {})
    losses = {}
    for name, (pred, target) in pairs.items():
        loss = tasks[name].loss(pred, target)
        if aux.get(name):
            keep = batch["mask"][name]
            for weight, inter in zip(out.aux_weights, aux[name]):
                inter = inter[keep]
                if tasks[name].kind == "dense" and inter.shape[-2:] != pred.shape[-2:]:
                    inter = F.interpolate(inter, size=pred.shape[-2:], mode="bilinear", align_corners=False)
                loss = loss + weight * tasks[name].loss(inter, target)
        losses[name] = loss
    return losses


def autocast(device: torch.device, amp: Optional[torch.dtype]):
    """``torch.autocast`` to ``amp`` on ``device``'s type; None: fp32 (no autocast at all)."""
    return nullcontext() if amp is None else torch.autocast(device.type, dtype=amp)


def fp32(out: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """A model's outputs under autocast, intermediate predictions included, cast to float32
    (a differentiable cast), so the losses and metrics are computed in fp32."""
    final = {t: o.float() for t, o in out.items()}
    aux = getattr(out, "aux", None)
    return Predictions(final, {t: [a.float() for a in p] for t, p in aux.items()}, out.aux_weights) if aux else final


def forward(model: nn.Module, x: Tensor):
    """The model's outputs for a training step. A model that serves one task per forward pass
    (``ArchitectureInfo.forward_per_task``, ASTMT) runs once per task on the bare module: DDP's
    hooks expect one forward per backward, so the step averages those gradients itself."""
    net = _bare(model)
    if not net.info.forward_per_task:
        return model(x)
    out: Dict[str, Tensor] = {}
    aux: Dict[str, List[Tensor]] = {}
    weights: Tuple[float, ...] = ()
    for name in net.task_names:
        part = net(x, task=name)
        out.update(part)
        aux.update(getattr(part, "aux", {}))
        weights = getattr(part, "aux_weights", weights)
    return Predictions(out, aux, weights) if aux else out


def training_step(model: nn.Module, balancer: Balancer, tasks: Mapping[str, Task], batch, optimizer,
                  session: Optional[Session] = None, regularisers: Sequence[Regulariser] = (),
                  meta_batch=None, amp: Optional[torch.dtype] = None,
                  scaler: Optional[torch.amp.GradScaler] = None) -> Dict[str, float]:
    """Forward, balance, backward, optimiser step; returns the per-task loss values and each
    regulariser term's value (as ``"reg/<term>"``).

    ``session`` provides the collectives under data parallelism (default: a local session,
    which all-reduces only when a torch.distributed process group runs). ``regularisers`` add
    their terms outside the balancer (``trainables/regularisers/base.py``): the model runs on
    every view they ask for (``batch["views"]``, in the same forward pass), the supervised losses
    read view 0, and the terms' gradient is added to the parameters at every balancer level.
    A balancer with ``needs_meta_batch`` first gets ``meta_update`` on ``meta_batch``
    (``trainables/meta.py``), which writes its own gradients (in fp32, outside autocast).
    ``amp``: the forward pass's autocast dtype (None: fp32); ``scaler``: float16's loss scaling,
    loss-level balancers only (see the module docstring).
    """
    session = session or Session()
    optimizer.zero_grad(set_to_none=True)
    if balancer.info.needs_meta_batch:
        from trainables.meta import MetaContext

        if meta_batch is None:
            raise ValueError(f"{balancer.label()} needs a meta batch; fit carves it out of the training split")
        balancer.meta_update(MetaContext(_bare(model), tasks, batch, meta_batch, optimizer))
    regs = Regularised(list(regularisers))
    if balancer.info.needs_task_grads:
        losses = _grad_level(_bare(model), balancer, tasks, batch, session, regs, amp)
    else:
        losses = _loss_level(model, balancer, tasks, batch, session, regs, amp, scaler)
    session.average_grads_([p for p in balancer.parameters() if p.requires_grad] + regs.own_parameters())
    if scaler is not None:  # unscales every gradient of the optimiser; skips a step with inf/NaN in them
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    report = {name: float(loss.detach()) for name, loss in losses.items()}
    report.update({f"reg/{name}": float(term.detach()) for name, term in regs.values.items()})
    return report


# -- loss level ----------------------------------------------------------------------------------
def _loss_level(model: nn.Module, balancer: Balancer, tasks, batch, session: Session, regs: Regularised,
                amp: Optional[torch.dtype], scaler: Optional[torch.amp.GradScaler]) -> Dict[str, Tensor]:
    net = _bare(model)
    x, size = model_input(batch, regs.views), batch["image"].shape[0]
    features = None
    # DDP is bypassed when the model runs once per task or its features are needed: the step
    # then averages the gradients itself
    bypass = net.info.forward_per_task or regs.needs_features or regs.needs_model
    with autocast(x.device, amp):
        if regs.needs_features:
            z = net.encode(x)
            out_all = net.decode(z, x.shape[-2:])
        else:
            out_all = forward(model, x)
    if amp is not None:
        out_all = fp32(out_all)
    if regs.needs_features:
        features = first_view(z if amp is None else _z_fp32(z), size)
    outputs = split_views(out_all, size, regs.views)
    out = outputs[0]
    pairs = labelled(out, tasks, batch)
    losses = task_losses(out, tasks, batch, pairs)
    _observe(balancer, pairs)
    total = balancer.combine(losses) if losses else 0.0
    extra = regs.total(outputs, batch, features)
    if extra is not None:
        total = total + extra
    total = total + _keep_graph_connected(out_all, losses)
    (total if scaler is None else scaler.scale(total)).backward()
    if bypass:
        session.average_grads_([p for p in net.parameters() if p.requires_grad])
    return losses


def _keep_graph_connected(out: Mapping[str, Tensor], losses: Dict[str, Tensor]) -> Tensor:
    # A head whose task has no label in this batch must still take part in the backward pass:
    # DDP expects a gradient (here zero) for every parameter on every worker.
    aux = getattr(out, "aux", {})
    unused = [o for n, o in out.items() if n not in losses] + [a for n, preds in aux.items() if n not in losses for a in preds]
    return sum((0.0 * o.sum() for o in unused), torch.zeros((), device=next(iter(out.values())).device))


def _observe(balancer: Balancer, pairs: Dict[str, Tuple[Tensor, Tensor]]) -> None:
    if balancer.info.needs_outputs:
        balancer.observe_outputs({n: p.detach() for n, (p, _) in pairs.items()}, {n: t for n, (_, t) in pairs.items()})


# -- gradient level ------------------------------------------------------------------------------
@dataclass
class _Step:
    """What the helpers of one gradient-level step share."""

    net: nn.Module                  # the bare model (DDP bypassed)
    balancer: Balancer
    session: Session                # collectives over the workers
    losses: Dict[str, Tensor]       # this worker's per-task losses (its labelled tasks only)
    names: List[str]                # tasks labelled on any worker, in the balancer's order
    values: Dict[str, Tensor]       # their detached loss values (mean over the workers that have them)
    z: Tuple[Tensor, ...] = ()      # the shared representation's tensors, when the step goes through it
    grad_z: Optional[Tensor] = None  # [T, D]: dL_t/dz for each task of ``names``, z's tensors flattened
    decoder: List[nn.Parameter] = field(default_factory=list)  # trainable parameters outside the encoder
    grad_decoder: List[List[Optional[Tensor]]] = field(default_factory=list)  # per task, per decoder parameter

    @property
    def device(self) -> torch.device:
        return next(iter(self.values.values())).device


def _grad_level(net: nn.Module, balancer: Balancer, tasks, batch, session: Session, regs: Regularised,
                amp: Optional[torch.dtype]) -> Dict[str, Tensor]:
    x, size = model_input(batch, regs.views), batch["image"].shape[0]
    info = balancer.info
    via_z = net.info.has_shared_representation
    if info.grad_target == "representation" and not via_z:  # the plan refuses this pair before Ray starts
        raise ValueError(f"{balancer.label()} works on the shared representation (grad_target 'representation'), "
                         f"but {net.label()} has none; use an architecture with a shared representation, or a "
                         "parameter-level variant of the balancer")
    features = None
    if via_z:
        with autocast(x.device, amp):
            z = net.encode(x)
        zs = z if isinstance(z, tuple) else (z,)
        if amp is not None:  # the z gradients, their Gram matrix and the balancer's arithmetic in fp32
            zs = _z_fp32(zs)
        z_d = tuple(t.detach().requires_grad_() for t in zs)
        with autocast(x.device, amp):
            out_all = net.decode(z_d if isinstance(z, tuple) else z_d[0], x.shape[-2:])
        features = first_view(z_d if isinstance(z, tuple) else z_d[0], size)
    else:
        if regs.needs_features:  # the plan refuses this pair before Ray starts
            raise ValueError(f"a regulariser needs the shared features, but {net.label()} has none")
        zs, z_d = (), ()
        with autocast(x.device, amp):
            out_all = forward(net, x)
    if amp is not None:
        out_all = fp32(out_all)
    outputs = split_views(out_all, size, regs.views)
    out = outputs[0]
    pairs = labelled(out, tasks, batch)
    losses = task_losses(out, tasks, batch, pairs)
    _observe(balancer, pairs)
    reg_grads = regulariser_grads(net, regs, regs.total(outputs, batch, features), zs, z_d, session)
    names, values = _present(balancer, losses, x.device, session)
    if names:  # else no task labelled on any worker: only the regularisers' terms train
        _balanced_grads(net, balancer, session, losses, names, values, zs, z_d)
    for p, g in reg_grads:
        p.grad = g if p.grad is None else p.grad + g
    return losses


def _balanced_grads(net, balancer, session, losses, names, values, zs, z_d) -> None:
    """Write the balanced gradient of the labelled tasks' losses into .grad (every level)."""
    info = balancer.info
    step = _Step(net, balancer, session, losses, names, values)
    shared = _params(net.shared_parameters())
    scope = shared if info.grad_scope == "shared" else _params(net.last_shared_module().parameters())
    if info.grad_target == "params" and not zs:
        _params_generic(step, scope)
        return
    shared_ids = {id(p) for p in shared}
    step.decoder = [p for p in net.parameters() if p.requires_grad and id(p) not in shared_ids]
    step.z = zs
    step.grad_z, step.grad_decoder = _per_task(step, z_d)
    if info.grad_target == "representation":
        _representation_level(step)
    else:
        _params_via_z(step, shared, scope)


def _representation_level(s: _Step) -> None:
    """The encoder gets z.backward(sum_t c_t dL_t/dz); c from the (all-reduced) Gram matrix."""
    flat = s.grad_z
    if s.balancer.has_grad_weights():
        gram = flat @ flat.T
        world = s.session.world_size
        if world > 1:  # the global z gradient is the concatenation of the workers' (each / W)
            gram = s.session.all_reduce_(gram) / world**2
        direction = s.balancer.grad_weights(gram, s.values).to(flat.dtype) @ flat
    else:  # a balancer that needs the vectors themselves: a local combination under DDP
        direction = s.balancer.combine_grads(flat, s.values)
    weights = _objective_weights(s)
    torch.autograd.backward(s.z, _split(direction, s.z))
    _write_decoder(s, weights)
    s.session.average_grads_([p for p in s.net.parameters() if p.requires_grad])


def _params_via_z(s: _Step, shared: List[nn.Parameter], scope: List[nn.Parameter]) -> None:
    """Per-task gradients of the scope as ONE batched VJP from the per-task z gradients."""
    scope_ids = {id(p) for p in scope}
    rest = [p for p in shared if id(p) not in scope_ids]
    rows = len(s.names)
    grads = task_vjp(s.z, scope, _split(s.grad_z, s.z), retain_graph=bool(rest), mode=vjp_mode(s.device))
    direction = s.balancer.combine_grads(s.session.average_(_flatten(grads, scope, rows)), s.values)
    weights = _objective_weights(s)
    if rest:  # shared parameters outside the scope follow the objective (GradNorm's cheap variant)
        w = torch.stack(weights).to(s.grad_z.dtype).view(-1, 1)
        torch.autograd.backward(s.z, _split((w * s.grad_z).sum(0), s.z), inputs=rest)
    _write_decoder(s, weights)
    s.session.average_grads_(rest + s.decoder)
    _write_flat(scope, direction)


def _params_generic(s: _Step, scope: List[nn.Parameter]) -> None:
    """Parameter level without a shared representation: batched VJP of the stacked losses."""
    if s.losses:
        zero = torch.zeros((), device=s.device)
        stacked = torch.stack([s.losses[n] if n in s.losses else zero for n in s.names])
        eye = torch.eye(len(s.names), dtype=stacked.dtype, device=stacked.device)
        grads = task_vjp((stacked,), scope, (eye,), retain_graph=True, mode=vjp_mode(stacked.device))
    else:  # labelled on other workers only
        grads = [None] * len(scope)
    direction = s.balancer.combine_grads(s.session.average_(_flatten(grads, scope, len(s.names))), s.values)
    scope_ids = {id(p) for p in scope}
    others = [p for p in s.net.parameters() if p.requires_grad and id(p) not in scope_ids]
    objective = s.balancer.combine(s.losses) if s.losses else None
    if isinstance(objective, Tensor) and objective.requires_grad:
        balancer_params = [p for p in s.balancer.parameters() if p.requires_grad]
        torch.autograd.backward(objective, inputs=others + balancer_params)
    s.session.average_grads_(others)
    _write_flat(scope, direction)


def _per_task(s: _Step, z_d: Tuple[Tensor, ...]) -> Tuple[Tensor, List[List[Optional[Tensor]]]]:
    """dL_t/dz [T, D] (z's tensors flattened and concatenated) and dL_t/d(decoder params) per task
    (zeros for a task absent here)."""
    grad_z, grad_decoder = [], []
    k = len(z_d)
    for name in s.names:
        if name not in s.losses:  # labelled on another worker only
            grad_z.append(torch.cat([t.new_zeros(t.numel()) for t in z_d]))
            grad_decoder.append([None] * len(s.decoder))
            continue
        # only the part of the graph that L_t reaches is traversed: its own head for disjoint heads
        g = torch.autograd.grad(s.losses[name], list(z_d) + s.decoder, retain_graph=True, allow_unused=True)
        grad_z.append(torch.cat([(gi if gi is not None else torch.zeros_like(t)).flatten() for gi, t in zip(g[:k], z_d)]))
        grad_decoder.append(list(g[k:]))
    return torch.stack(grad_z), grad_decoder


def _split(flat: Tensor, like: Tuple[Tensor, ...]) -> List[Tensor]:
    """The inverse of ``_per_task``'s concatenation: [D] -> one tensor shaped as each tensor t of
    ``like``; [n, D] (per-task rows) -> one [n, *t.shape] block each."""
    lead = tuple(flat.shape[:-1])
    out, offset = [], 0
    for t in like:
        out.append(flat[..., offset:offset + t.numel()].reshape(*lead, *t.shape))
        offset += t.numel()
    return out


def _objective_weights(s: _Step) -> List[Tensor]:
    """w_t = d combine(losses) / d L_t, and the balancer's own parameter gradients, in one backward."""
    leaves = {n: l.detach().requires_grad_() for n, l in s.losses.items()}
    objective = s.balancer.combine(leaves) if leaves else None
    if isinstance(objective, Tensor) and objective.requires_grad:
        objective.backward()
    zero = torch.zeros((), device=s.device)
    return [leaves[n].grad if n in leaves and leaves[n].grad is not None else zero for n in s.names]


def _write_decoder(s: _Step, weights: List[Tensor]) -> None:
    for k, p in enumerate(s.decoder):
        total = None
        for w, per_task in zip(weights, s.grad_decoder):
            g = per_task[k]
            if g is not None:
                total = w.to(g.dtype) * g if total is None else total + w.to(g.dtype) * g
        if total is None and s.session.world_size > 1:
            total = torch.zeros_like(p)  # every worker must take part in the all-reduce
        if total is not None:
            p.grad = total if p.grad is None else p.grad + total


def _present(balancer: Balancer, losses, device: torch.device, session: Session) -> Tuple[List[str], Dict[str, Tensor]]:
    """Tasks labelled on any worker (balancer order) and their loss values (worker mean)."""
    if session.world_size == 1:
        names = balancer.present(losses)
        return names, {n: losses[n].detach() for n in names}
    stats = torch.zeros(2, len(balancer.task_names), device=device)
    for i, name in enumerate(balancer.task_names):
        if name in losses:
            stats[0, i], stats[1, i] = losses[name].detach().float(), 1.0
    session.all_reduce_(stats)
    names = [n for i, n in enumerate(balancer.task_names) if stats[1, i] > 0]
    return names, {n: stats[0, i] / stats[1, i] for i, n in enumerate(balancer.task_names) if stats[1, i] > 0}


VJP_MODE = "auto"  # "auto": vjp_mode's per-device choice; "loop" / "batched" force one (benchmarks, tests)


def vjp_mode(device: torch.device) -> str:
    """How ``task_vjp`` computes the per-task rows on ``device``. On this project's CPU machines
    the two ways measured even (benchmarks/bench_balancers.py: batched / loop 0.97-1.03 on tiny_cnn
    at two widths), so the CPU loops, which holds one row of intermediate gradients at a time
    instead of T; other devices take the batched product (``vmap`` over the rows: one backward
    for all tasks), which is what LibMTL-style GPU training is built on (not measured here: no
    GPU). ``VJP_MODE`` overrides it."""
    if VJP_MODE != "auto":
        return VJP_MODE
    return "loop" if device.type == "cpu" else "batched"


def task_vjp(outputs: Sequence[Tensor], inputs: Sequence[Tensor], rows: Sequence[Tensor], *, retain_graph: bool,
             mode: str) -> List[Optional[Tensor]]:
    """Per-input gradients [T, *input.shape] of ``outputs`` with the T stacked ``rows`` of
    grad-outputs (one [T, *output.shape] tensor per output): ``torch.autograd.grad`` with
    ``is_grads_batched`` ("batched"), or once per row, stacked ("loop"). None for an input no
    row reaches. Both give the same numbers (up to float summation order)."""
    if mode == "batched":
        return list(torch.autograd.grad(outputs, inputs, grad_outputs=list(rows), is_grads_batched=True,
                                        retain_graph=retain_graph, allow_unused=True))
    count = rows[0].shape[0]
    per_row = [torch.autograd.grad(outputs, inputs, grad_outputs=[r[t] for r in rows],
                                   retain_graph=retain_graph or t < count - 1, allow_unused=True)
               for t in range(count)]
    out: List[Optional[Tensor]] = []
    for i, p in enumerate(inputs):
        got = [g[i] for g in per_row]
        out.append(None if all(g is None for g in got)
                   else torch.stack([g if g is not None else torch.zeros_like(p) for g in got]))
    return out


def _flatten(grads, params, rows: int) -> Tensor:
    """[T, P] from batched per-parameter gradients (None -> zeros)."""
    return torch.cat([(g if g is not None else torch.zeros(rows, *p.shape, device=p.device, dtype=p.dtype)).reshape(rows, -1)
                      for g, p in zip(grads, params)], dim=1)


def _write_flat(params: Sequence[nn.Parameter], direction: Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        g = direction[offset:offset + n].view_as(p).to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad + g
        offset += n


def _z_fp32(z):
    return tuple(t.float() for t in z) if isinstance(z, tuple) else z.float()


def _params(params) -> List[nn.Parameter]:
    return [p for p in params if p.requires_grad]


def _bare(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

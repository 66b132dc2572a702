"""The cross-task mapping regularisers: MTPSL (joint pairwise task spaces, FiLM per task pair),
the direct-map and perceptual-map baselines, and their shared inputs (``maps.py``)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainables  # noqa: F401  (registers every plug-in)
from trainables.build import build_balancer, build_model, build_regularisers, build_tasks
from trainables.plugins import ModelRef, Plugin, RunContext
from trainables.registry import TASKS
from trainables.regularisers import maps
from trainables.regularisers.direct_map import DirectMap
from trainables.regularisers.mtpsl import MTPSL, MTPSLParams
from trainables.regularisers.perceptual_map import PerceptualMap
from trainables.session import Session
from trainables.steps import training_step

TINY = {"channels": (3, 4), "convs": (1, 1)}
C = math.sqrt(1 + 1e-5)  # BatchNorm in eval mode with its initial running statistics divides by this


def make_tasks(*names):
    kinds = {"seg": ("semseg", {"num_classes": 3}), "depth": ("depth", {}), "normals": ("normals", {}),
             "parts": ("human_parts", {}), "edge": ("edge", {}), "sal": ("saliency", {}),
             "scene": ("scene", {"num_classes": 4})}
    return {n: TASKS.get(kinds[n][0])(n, **kinds[n][1]) for n in names}


def data(tasks, mask, size=4, seed=0):
    """Outputs (requiring grad) and a batch with valid targets for ``tasks``; ``mask``: task -> [bool]*B."""
    g = torch.Generator().manual_seed(seed)
    b = len(next(iter(mask.values())))
    out, targets = {}, {}
    for name, task in tasks.items():
        out[name] = torch.randn(b, task.out_channels, size, size, generator=g).requires_grad_()
        if task.plugin_name in ("semseg", "human_parts"):
            targets[name] = torch.randint(0, task.out_channels, (b, size, size), generator=g)
        elif task.plugin_name == "depth":
            targets[name] = torch.rand(b, 1, size, size, generator=g) + 0.5
            out[name] = (out[name].detach().abs() + 0.5).requires_grad_()  # a positive depth map
        elif task.plugin_name == "normals":
            targets[name] = F.normalize(torch.randn(b, 3, size, size, generator=g), dim=1)
        else:  # binary maps
            targets[name] = (torch.rand(b, 1, size, size, generator=g) > 0.5).float()
    batch = {"targets": targets, "mask": {t: torch.tensor(m) for t, m in mask.items()}}
    return out, batch


def centre(matrix):
    """A 3x3 kernel that is the per-pixel linear map ``matrix`` [cout, cin] (zero padding is harmless)."""
    w = torch.zeros(*matrix.shape, 3, 3)
    w[:, :, 1, 1] = matrix
    return w


def cos(a, b):
    return (a * b).sum() / (a.norm() * b.norm())


# -- inputs --------------------------------------------------------------------------------------
def test_inputs_per_kind_of_task():
    tasks = make_tasks("seg", "depth", "normals", "edge")
    seg = torch.tensor([[[0, 2], [255, 1]]])
    onehot = maps.label_input(tasks["seg"], "classes", seg, torch.float32)
    assert onehot[0, :, 0, 0].tolist() == [1, 0, 0] and onehot[0, :, 1, 0].tolist() == [0, 0, 0]  # ignored: zeros
    depth = torch.tensor([[[[2.0, 0.0], [4.0, float("nan")]]], [[[1.0, 1.0], [0.5, 0.5]]]])
    got = maps.label_input(tasks["depth"], "depth", depth, torch.float32)
    expected = torch.tensor([[[[0.5, 0.0], [1.0, 0.0]]], [[[1.0, 1.0], [0.5, 0.5]]]])  # each sample by its own max
    torch.testing.assert_close(got, expected)
    pred = torch.tensor([[[[1.0, 3.0]]]])
    torch.testing.assert_close(maps.prediction_input(tasks["depth"], "depth", pred), pred / 3.0)
    normals = torch.zeros(1, 3, 1, 2)
    normals[0, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0])  # pixel 1 invalid (zero vector): (0 + 1) / 2
    got = maps.label_input(tasks["normals"], "normals", normals, torch.float32)
    assert got[0, :, 0].tolist() == [[0.5, 0.5], [0.5, 0.5], [1.0, 0.5]]
    pred = torch.tensor([[[[3.0]], [[0.0]], [[-4.0]]]])  # unit vector (0.6, 0, -0.8)
    got = maps.prediction_input(tasks["normals"], "normals", pred)
    torch.testing.assert_close(got, torch.tensor([[[[0.8]], [[0.5]], [[0.1]]]]))
    edge = torch.tensor([[[[1.0, 255.0]]]])
    assert maps.label_input(tasks["edge"], "binary", edge, torch.float32).tolist() == [[[[1.0, 0.0]]]]
    # a class map's prediction: a one-hot sample carrying the soft sample's gradient
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    sample = maps.gumbel_hard(logits)
    assert set(sample.unique().tolist()) == {0.0, 1.0} and torch.equal(sample.sum(1), torch.ones(2, 4, 4))
    (sample * torch.randn(2, 3, 4, 4)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_kinds_cover_edge_saliency_human_parts_and_refuse_image_level_tasks():
    tasks = make_tasks("parts", "edge", "sal")
    kinds = {n: maps.input_kind(t, "x") for n, t in tasks.items()}
    assert kinds == {"parts": "classes", "edge": "binary", "sal": "binary"}
    out, batch = data(tasks, {"parts": [True, False], "edge": [False, True], "sal": [False, False]})
    for cls in (MTPSL, DirectMap, PerceptualMap):
        terms = cls(tasks, **TINY, **({"reg_weight": 0.0} if cls is MTPSL else {})).terms([out], batch)
        assert all(torch.isfinite(v) and v > 0 for v in terms.values())
    with pytest.raises(ValueError, match="task 'scene' .*image-level"):
        MTPSL(make_tasks("seg", "scene"))


# -- MTPSL ---------------------------------------------------------------------------------------
def test_mtpsl_pair_index_is_mtpsls_off_diagonal_flattening():
    for k in (2, 3, 4):
        reg = MTPSL({f"t{i}": TASKS.get("depth")(f"t{i}") for i in range(k)}, channels=(2,), convs=(1,))
        for s in range(k):
            for t in range(k):
                if s != t:  # MTPSL: A[s, t] = 1, A.flatten()[:-1].view(k-1, k+1)[:, 1:].flatten()
                    a = torch.zeros(k, k)
                    a[s, t] = 1
                    column = int(a.flatten()[:-1].view(k - 1, k + 1)[:, 1:].flatten().argmax())
                    assert reg.pair_index(f"t{s}", f"t{t}") == column
        assert reg.encoder.levels[0][0].gamma.shape == (2, k * (k - 1))


def test_mtpsl_by_hand():
    """Per-pixel linear convs, BatchNorm at its initial running statistics (eval): the cross-task and
    feature terms are cosine distances between max-pooled 2-vectors computed here by hand."""
    tasks = make_tasks("seg", "depth")
    reg = MTPSL(tasks, weight=2.0, reg_weight=0.5, channels=(2,), convs=(1,), class_input="softmax").eval()
    a = {"seg": torch.tensor([[1.0, -1.0, 0.5], [0.2, 0.3, -0.4]]), "depth": torch.tensor([[1.5], [0.7]])}
    m = torch.tensor([[0.6, -0.2], [0.1, 0.9]])
    gamma, beta = torch.tensor([[1.5, 0.5], [-1.0, 2.0]]), torch.tensor([[0.1, 0.2], [0.3, 0.05]])
    block = reg.encoder.levels[0][0]
    with torch.no_grad():
        for t in tasks:
            reg.stems[t].conv.weight.copy_(centre(a[t]))
        block.conv.weight.copy_(centre(m))
        block.gamma.copy_(gamma)
        block.beta.copy_(beta)

    def mapped(x, task, k):  # x: [C, 2, 2] -> the max over the 4 pixels of the 2 channels
        h = torch.relu(a[task] @ x.reshape(x.shape[0], -1) / C)
        return torch.relu(gamma[:, k:k + 1] * (m @ h / C) + beta[:, k:k + 1]).max(1).values

    out, batch = data(tasks, {"seg": [True, False], "depth": [False, True]}, size=2)
    batch["targets"]["seg"][0, 1, 1] = 255  # an ignored pixel: an all-zero one-hot vector
    batch["targets"]["depth"][1, 0, 0, 1] = 0.0  # an invalid depth pixel: 0
    z = torch.tensor([[0.3, 1.0], [0.8, -0.2]]).view(2, 2, 1, 1).requires_grad_()
    # sample 0: depth unlabelled -> pair (depth, seg), column 1; sample 1: pair (seg, depth), column 0
    assert (reg.pair_index("depth", "seg"), reg.pair_index("seg", "depth")) == (1, 0)
    d0 = out["depth"][0].detach()
    label0 = batch["targets"]["seg"][0]
    onehot0 = F.one_hot(label0.clamp(max=2), 3).permute(2, 0, 1).float() * (label0 != 255)
    src0, tgt0 = mapped(d0 / d0.max(), "depth", 1), mapped(onehot0, "seg", 1)
    t1 = batch["targets"]["depth"][1]
    src1, tgt1 = mapped(out["seg"][1].detach().softmax(0), "seg", 0), mapped(t1 / t1.max(), "depth", 0)
    assert all(v.norm() > 0 for v in (src0, tgt0, src1, tgt1))
    z0, z1 = z[0, :, 0, 0].detach(), z[1, :, 0, 0].detach()
    cross = 2.0 * ((1 - cos(src0, tgt0)) + (1 - cos(src1, tgt1))) / 2
    feature = 2.0 * 0.5 * ((1 - cos(src0, z0)) + (1 - cos(tgt0, z0)) + (1 - cos(src1, z1)) + (1 - cos(tgt1, z1))) / 2
    terms = reg.terms([out], batch, z)
    torch.testing.assert_close(terms["mtpsl/cross_task"], cross)
    torch.testing.assert_close(terms["mtpsl/feature"], feature)
    sum(terms.values()).backward()
    assert z.grad is None  # the encoder's feature is a detached target of the regularisation


def test_mtpsl_maps_one_sample_at_a_time():
    """In training mode too, a sample's term does not depend on the other samples (per-sample BatchNorm)."""
    tasks = make_tasks("seg", "depth", "normals")
    reg = MTPSL(tasks, **TINY, class_input="softmax")
    mask = {"seg": [True, False, True], "depth": [False, True, False], "normals": [False, False, True]}
    out, batch = data(tasks, mask)
    z = torch.randn(3, 4, 1, 1)
    whole = reg.terms([out], batch, z)
    parts = []
    for i in range(3):
        one = {key: {t: v[i:i + 1] for t, v in batch[key].items()} for key in ("targets", "mask")}
        parts.append(reg.terms([{t: v[i:i + 1] for t, v in out.items()}], one, z[i:i + 1]))
    for key in whole:
        torch.testing.assert_close(whole[key] * 3, sum(p[key] for p in parts))


def test_mtpsl_film_is_selected_by_the_pair():
    """Sample: seg labelled, depth and normals not -> pairs (depth, seg), (normals, seg); the other four
    pairs' FiLM columns neither change the term nor receive gradient."""
    tasks = make_tasks("seg", "depth", "normals")
    reg = MTPSL(tasks, **TINY, reg_weight=0.0)
    out, batch = data(tasks, {"seg": [True], "depth": [False], "normals": [False]})
    used = {reg.pair_index("depth", "seg"), reg.pair_index("normals", "seg")}
    others = sorted(set(range(6)) - used)

    def term():
        torch.manual_seed(0)  # the Gumbel sample
        return reg.terms([out], batch)["mtpsl/cross_task"]

    base = term()
    base.backward()
    blocks = [b for b in reg.encoder.modules() if isinstance(b, maps.ConvBlock)]
    for b in blocks:
        assert b.gamma.grad[:, others].abs().sum() == 0 and b.beta.grad[:, others].abs().sum() == 0
        assert b.gamma.grad[:, sorted(used)].abs().sum() > 0
    with torch.no_grad():
        for b in blocks:
            b.gamma[:, others] += torch.randn(b.gamma.shape[0], len(others))
            b.beta[:, others] += 1.0
    torch.testing.assert_close(term(), base.detach(), rtol=0, atol=0)
    with torch.no_grad():
        blocks[-1].gamma[:, reg.pair_index("depth", "seg")] *= -2.0
    assert not torch.allclose(term(), base.detach())


def test_mtpsl_gradient_routing_and_param_groups():
    tasks = make_tasks("seg", "depth", "normals")
    reg = MTPSL(tasks, **TINY)
    mask = {"seg": [True, False], "depth": [False, True], "normals": [False, False]}
    out, batch = data(tasks, mask)
    batch["targets"]["depth"].requires_grad_()
    z = torch.randn(2, 4, 1, 1, requires_grad=True)
    sum(reg.terms([out], batch, z).values()).backward()
    for t, labelled in mask.items():
        for i, has in enumerate(labelled):
            grad = out[t].grad[i].abs().sum()
            assert (grad == 0) if has else (grad > 0), (t, i)  # labelled: its prediction is not used
    assert batch["targets"]["depth"].grad is None and z.grad is None  # labels and the feature: no gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reg.parameters())
    groups = reg.param_groups()
    assert [(g["name"], g["lr_mult"]) for g in groups] == [("mtpsl/mapping", 1.0), ("mtpsl/film", 10.0)]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in reg.parameters())  # every parameter, exactly once
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in reg.film_parameters()}


def test_mtpsl_needs_features_only_with_the_regularisation():
    assert MTPSL.info_for(MTPSLParams()).needs_features
    assert not MTPSL.info_for(MTPSLParams(reg_weight=0.0)).needs_features
    tasks = make_tasks("seg", "depth")
    out, batch = data(tasks, {"seg": [True], "depth": [False]})
    assert set(MTPSL(tasks, **TINY, reg_weight=0.0).terms([out], batch)) == {"mtpsl/cross_task"}
    with pytest.raises(ValueError, match="channels' last entry to 7"):
        MTPSL(tasks, **TINY).terms([out], batch, torch.randn(1, 7, 1, 1))
    with pytest.raises(ValueError, match="reg_weight"):
        MTPSLParams(reg_weight=-1.0)
    with pytest.raises(ValueError, match="convs"):
        MTPSLParams(channels=(4, 8), convs=(1,))


# -- direct and perceptual maps ------------------------------------------------------------------
def test_direct_map_by_hand():
    """Each ordered pair's own network maps s's prediction into t's output space; t's loss against t's label."""
    tasks = make_tasks("seg", "depth")
    reg = DirectMap(tasks, weight=2.0, class_input="softmax", **TINY)
    assert sorted(reg.nets) == ["depth->seg", "seg->depth"]
    to_seg, to_depth = nn.Conv2d(1, 3, 1), nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        to_seg.weight.copy_(torch.tensor([1.0, -2.0, 0.5]).view(3, 1, 1, 1))
        to_seg.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
        to_depth.weight.copy_(torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1))
        to_depth.bias.fill_(0.2)
    reg.nets["depth->seg"], reg.nets["seg->depth"] = to_seg, to_depth
    out, batch = data(tasks, {"seg": [True, False], "depth": [False, True]}, size=2)
    batch["targets"]["seg"][0, 0, 0] = 255
    batch["targets"]["depth"][1, 0, 1, 1] = 0.0
    d0 = out["depth"][0].detach()
    x0 = d0 / d0.max()  # [1, 2, 2]
    logits = torch.stack([1.0 * x0[0] + 0.1, -2.0 * x0[0], 0.5 * x0[0] - 0.3])  # [3, 2, 2]
    label = batch["targets"]["seg"][0]
    keep = label != 255
    ce = -(logits.log_softmax(0).gather(0, label.clamp(max=2)[None])[0])[keep].mean()
    p1 = out["seg"][1].detach().softmax(0)
    depth = 0.5 * p1[0] + 1.0 * p1[1] + 2.0 * p1[2] + 0.2
    gt = batch["targets"]["depth"][1, 0]
    l1 = (depth - gt).abs()[gt > 0].mean()
    term = reg.terms([out], batch)["direct_map"]
    torch.testing.assert_close(term, 2.0 * (ce + l1) / 2)


def test_perceptual_map_by_hand():
    """One network per task into a common space; cosine distance between s's mapped prediction and t's mapped label."""
    tasks = make_tasks("seg", "depth")
    reg = PerceptualMap(tasks, weight=2.0, class_input="softmax", **TINY)
    assert sorted(reg.nets) == ["depth", "seg"]
    seg_net, depth_net = nn.Conv2d(3, 2, 1, bias=False), nn.Conv2d(1, 2, 1, bias=False)
    ws, wd = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.3]]), torch.tensor([[1.0], [-0.5]])
    with torch.no_grad():
        seg_net.weight.copy_(ws.view(2, 3, 1, 1))
        depth_net.weight.copy_(wd.view(2, 1, 1, 1))
    reg.nets["seg"], reg.nets["depth"] = seg_net, depth_net
    out, batch = data(tasks, {"seg": [True, False], "depth": [False, True]}, size=2)

    def distance(u, v):  # [2, 4] maps: 1 - the mean over pixels of the cosine along channels
        return 1 - torch.stack([cos(u[:, p], v[:, p]) for p in range(u.shape[1])]).mean()

    d0 = out["depth"][0].detach().reshape(1, -1)
    onehot = F.one_hot(batch["targets"]["seg"][0].reshape(-1), 3).T.float()
    p1 = out["seg"][1].detach().softmax(0).reshape(3, -1)
    t1 = batch["targets"]["depth"][1].reshape(1, -1)
    expected = 2.0 * (distance(wd @ (d0 / d0.max()), ws @ onehot) + distance(ws @ p1, wd @ (t1 / t1.max()))) / 2
    torch.testing.assert_close(reg.terms([out], batch)["perceptual_map"], expected)


@pytest.mark.parametrize("cls", [DirectMap, PerceptualMap])
def test_baseline_gradient_routing(cls):
    tasks = make_tasks("seg", "depth", "normals")
    reg = cls(tasks, **TINY)
    mask = {"seg": [True, False], "depth": [False, False], "normals": [False, True]}
    out, batch = data(tasks, mask)
    batch["targets"]["normals"].requires_grad_()
    next(iter(reg.terms([out], batch).values())).backward()
    for t, labelled in mask.items():
        for i, has in enumerate(labelled):
            grad = out[t].grad[i].abs().sum()
            assert (grad == 0) if has else (grad > 0), (t, i)
    assert batch["targets"]["normals"].grad is None
    # pairs: sample 0 (depth, seg), (normals, seg); sample 1 (seg, normals), (depth, normals)
    used = {"depth->seg", "normals->seg", "seg->normals", "depth->normals"} if cls is DirectMap else set(tasks)
    for key, net in reg.nets.items():
        assert all((p.grad is not None and p.grad.abs().sum() > 0) == (key in used) for p in net.parameters()), key
    assert {id(p) for g in reg.param_groups() for p in g["params"]} == {id(p) for p in reg.parameters()}


# -- every method --------------------------------------------------------------------------------
METHODS = [("mtpsl", {**TINY, "reg_weight": 0.0}), ("direct_map", TINY), ("perceptual_map", TINY)]


@pytest.mark.parametrize("name, params", METHODS)
def test_a_fully_labelled_batch_gives_zero_terms(name, params):
    tasks = make_tasks("seg", "depth", "normals")
    reg = build_regularisers([Plugin(name, params)], tasks)[0]
    out, batch = data(tasks, {t: [True, True] for t in tasks})
    terms = reg.terms([out], batch, torch.randn(2, 4, 1, 1))
    assert terms and all(float(v.detach()) == 0.0 and v.requires_grad for v in terms.values())
    sum(terms.values()).backward()
    assert all(o.grad is not None and o.grad.abs().sum() == 0 for o in out.values())


def test_mtpsl_all_pairs_regularises_a_fully_labelled_batch():
    """MTPSL's "full" setting: every ordered pair with a labelled target, labelled sources included."""
    tasks = make_tasks("seg", "depth")
    out, batch = data(tasks, {t: [True] for t in tasks})
    assert float(MTPSL(tasks, **TINY, reg_weight=0.0, pairs="all").terms([out], batch)["mtpsl/cross_task"].detach()) > 0


STEPS = [("mtpsl", {**TINY, "channels": (3, 8)}, "fixed"), ("mtpsl", {**TINY, "channels": (3, 8)}, "pcgrad"),
         ("direct_map", TINY, "fixed"), ("perceptual_map", TINY, "fixed")]


@pytest.mark.parametrize("name, params, balancer", STEPS)
def test_training_step_on_a_real_tiny_model(name, params, balancer):
    """A partially labelled batch in which normals have no label at all: the model, the normals head
    (reached only through the regulariser) and the mapping networks all get finite gradients."""
    torch.manual_seed(0)
    names = ["semseg", "depth", "normals"]
    tasks = build_tasks(Plugin("synthetic"), names)
    model = build_model(tasks, ModelRef(architecture=Plugin("mtl_baseline"),
                                        backbone=Plugin("tiny_cnn", {"widths": (4, 8), "output_stride": 4}),
                                        head=Plugin("conv", {"mid_channels": 4})))
    reg = build_regularisers([Plugin(name, params)], tasks)[0]
    bal = build_balancer(Plugin(balancer), names, RunContext(seed=0))
    g = torch.Generator().manual_seed(0)
    n_classes = tasks["semseg"].out_channels
    batch = {"image": torch.randn(3, 3, 16, 16, generator=g),
             "targets": {"semseg": torch.randint(0, n_classes, (3, 16, 16), generator=g),
                         "depth": torch.rand(3, 1, 16, 16, generator=g) + 0.5,
                         "normals": F.normalize(torch.randn(3, 3, 16, 16, generator=g), dim=1)},
             "mask": {"semseg": torch.tensor([True, False, True]), "depth": torch.tensor([False, True, False]),
                      "normals": torch.tensor([False, False, False])}}
    groups = [{"params": list(model.parameters())}] + [{"params": gr["params"], "lr": 0.01 * gr["lr_mult"]}
                                                        for gr in reg.param_groups()]
    opt = torch.optim.SGD(groups, lr=0.01)
    before = [p.detach().clone() for p in reg.parameters()]
    report = training_step(model, bal, tasks, batch, opt, Session(), [reg])
    assert "normals" not in report and all(math.isfinite(v) for v in report.values())
    assert all(report[k] > 0 for k in report if k.startswith("reg/"))
    params = list(model.parameters()) + list(reg.parameters())
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
    head = [p.grad for p in model.heads["normals"].parameters()]
    assert all(gr is not None and gr.abs().sum() > 0 for gr in head)  # only the regulariser reaches it
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, reg.parameters()))  # the mapping trained

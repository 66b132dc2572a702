"""PAD-Net and MTI-Net (``trainables/architectures/pad_net.py``, ``mti_net.py``, their shared
``distillation.py``): forward / backward, deep supervision through the step's ``task_losses``,
multi-modal distillation between every pair of tasks at every scale, auxiliary tasks, and the
survey's #P / FLOPS (Tables 6, 7, 9) on the meta device."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import trainables  # noqa: F401  (registers every plug-in)
from trainables.architectures.base import Predictions
from trainables.build import build_model, build_tasks
from trainables.complexity import count_flops, count_parameters
from trainables.plugins import ModelRef, Plugin
from trainables.steps import task_losses
from tests.trainables.test_models import FakeTask

HRNET_HEAD = dict(backbone=Plugin("hrnet18"), head=Plugin("hrnet"))


def tasks_for(names, auxiliary=()):
    return build_tasks(Plugin("synthetic"), list(names), auxiliary=list(auxiliary))


def pad_net(tasks, backbone="tiny_cnn", **params):
    params.setdefault("channels", 16)
    return build_model(tasks, ModelRef(Plugin("pad_net", params), backbone=backbone))


def mti_net(tasks, backbone="hrnet18", head="hrnet", **params):
    return build_model(tasks, ModelRef(Plugin("mti_net", params), backbone=backbone, head=head))


def make_batch(tasks, n=2, hw=(32, 32), seed=0):
    """Random targets of the synthetic tasks' shapes and ranges, every sample labelled."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    targets = {}
    for name, task in tasks.items():
        kind = type(task).__name__
        if kind == "SemSeg":
            targets[name] = torch.randint(0, task.out_channels, (n, h, w), generator=g)
        elif kind == "Depth":
            targets[name] = torch.rand(n, 1, h, w, generator=g) + 0.5
        elif kind == "Normals":
            targets[name] = F.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
        elif kind == "Edge":
            targets[name] = (torch.rand(n, 1, h, w, generator=g) > 0.8).float()
        else:
            raise AssertionError(kind)
    return {"image": torch.randn(n, 3, h, w, generator=g), "targets": targets,
            "mask": {name: torch.ones(n, dtype=torch.bool) for name in tasks}}


def grads(model):
    """Parameter gradients, None as zeros (a weight-0 level gives exact zeros, not None)."""
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}


def assert_every_param_has_a_finite_grad(model):
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def assert_partition(model):
    shared = {id(p) for p in model.shared_parameters()}
    groups = [shared] + [{id(p) for p in model.task_specific_parameters(t)} for t in model.task_names]
    assert sum(len(g) for g in groups) == len(set().union(*groups)) == len(list(model.parameters()))
    assert {id(p) for p in model.last_shared_module().parameters()} <= shared


# --------------------------------------------------------------------------- forward / backward
def test_pad_net_tiny_cnn_forward_backward_and_encode_decode():
    tasks = tasks_for(["semseg", "depth", "normals"], auxiliary=["normals"])
    torch.manual_seed(0)
    model = pad_net(tasks)
    assert model.fuse is None  # sequential stages: PAD-Net reads the last map
    batch = make_batch(tasks)
    out = model(batch["image"])
    assert isinstance(out, Predictions) and out.aux_weights == (1.0,)
    for name, task in tasks.items():
        assert out[name].shape == (2, task.out_channels, 32, 32)
    assert set(out.aux) == {"semseg", "depth"} and all(len(v) == 1 for v in out.aux.values())
    assert out.aux["semseg"][0].shape == (2, 7, 4, 4)  # initial predictions at the backbone's 1/8
    sum(task_losses(out, tasks, batch).values()).backward()
    assert_every_param_has_a_finite_grad(model)
    assert_partition(model)
    model.eval()
    with torch.no_grad():
        decoded = model.decode(model.encode(batch["image"]), (32, 32))
        for name, value in model(batch["image"]).items():
            assert torch.equal(decoded[name], value)


def test_pad_net_on_hrnet_fuses_every_scale():
    tasks = tasks_for(["semseg", "depth"])
    torch.manual_seed(0)
    model = pad_net(tasks, backbone=Plugin("hrnet18"))
    assert model.fuse[0].in_channels == 18 + 36 + 72 + 144  # the survey code's fuse_hrnet input
    batch = make_batch(tasks, hw=(64, 64))
    z = model.encode(batch["image"])
    assert z.shape == (2, 270, 16, 16)  # 1/4, the finest branch
    out = model(batch["image"])
    sum(task_losses(out, tasks, batch).values()).backward()
    assert_every_param_has_a_finite_grad(model)
    assert_partition(model)
    assert model.last_shared_module() is model.fuse[0]


@pytest.mark.parametrize("backbone, head, in_channels", [
    (Plugin("hrnet18"), Plugin("hrnet"), [18, 36, 72, 144]),
    (Plugin("resnet18"), Plugin("conv"), 64 + 128 + 256 + 512),  # single-scale head: the concatenated maps
    (Plugin("tiny_cnn", {"output_stride": 16}), Plugin("conv"), 16 + 32 + 64 + 96),
])
def test_mti_net_forward_backward(backbone, head, in_channels):
    tasks = tasks_for(["semseg", "depth", "normals"], auxiliary=["normals"])
    torch.manual_seed(0)
    model = mti_net(tasks, backbone=backbone, head=head)
    head_in = model.heads["semseg"].in_channels if head.name == "hrnet" else model.heads["semseg"].body[0].in_channels
    assert head_in == in_channels
    batch = make_batch(tasks, hw=(64, 64))
    out = model(batch["image"])
    assert out.aux_weights == (1.0,) * 4
    for name, task in tasks.items():
        assert out[name].shape == (2, task.out_channels, 64, 64)
    strides = sorted({model.backbone.stage_strides[i] for i in model.scales}, reverse=True)
    for name in ("semseg", "depth"):  # coarsest first
        assert [a.shape[-1] for a in out.aux[name]] == [64 // s for s in strides]
    assert [a.shape[-1] for a in out.aux["normals"]] == [64 // s for s in strides[:-1]]
    sum(task_losses(out, tasks, batch).values()).backward()
    assert_every_param_has_a_finite_grad(model)
    assert_partition(model)
    assert not model.has_shared_representation
    shared = {id(p) for p in model.shared_parameters()}
    assert {id(p) for p in model.propagation[0].mix.parameters()} <= shared  # task-mixing FPM layers


def test_mti_net_refuses_a_backbone_without_four_scales():
    with pytest.raises(ValueError, match="four scales"):
        mti_net(tasks_for(["semseg", "depth"]), backbone=Plugin("tiny_cnn"), head=Plugin("conv"))


def test_params_are_checked():
    with pytest.raises(ValueError, match="pad_net: channels"):
        pad_net(tasks_for(["semseg"]), channels=18)
    with pytest.raises(ValueError, match="pad_net: aux_weight"):
        pad_net(tasks_for(["semseg"]), aux_weight=-1.0)
    with pytest.raises(ValueError, match="aux_weights.*3 weights given for 4 levels"):
        mti_net(tasks_for(["semseg"]), backbone=Plugin("tiny_cnn", {"output_stride": 16}), head=Plugin("conv"),
                aux_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="dense tasks only"):
        pad_net(tasks_for(["semseg", "scene"]))


# --------------------------------------------------------------------------- deep supervision
BUILDERS = {
    "pad_net": (lambda tasks, w: pad_net(tasks, aux_weight=w), 1, (32, 32)),
    "mti_net": (lambda tasks, w: mti_net(tasks, backbone=Plugin("tiny_cnn", {"output_stride": 16}),
                                         head=Plugin("conv"), aux_weights=[w]), 4, (32, 32)),
    "mti_net_hrnet": (lambda tasks, w: mti_net(tasks, aux_weights=[w]), 4, (64, 64)),
}


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_zero_aux_weights_give_the_gradients_of_the_final_losses_alone(arch):
    build, _, hw = BUILDERS[arch]
    tasks = tasks_for(["semseg", "depth", "normals"], auxiliary=["normals"])
    batch = make_batch(tasks, hw=hw)
    torch.manual_seed(0)
    model = build(tasks, 0.0)
    out = model(batch["image"])
    assert out.aux_weights and set(out.aux_weights) == {0.0}
    sum(task_losses(out, tasks, batch).values()).backward()
    with_zero_levels = grads(model)
    model.zero_grad(set_to_none=True)
    out = model(batch["image"])  # train mode: BN normalises with the batch, so the same outputs
    sum(tasks[t].loss(out[t], batch["targets"][t]) for t in tasks).backward()
    final_only = grads(model)
    for name, g in final_only.items():
        torch.testing.assert_close(with_zero_levels[name], g, rtol=1e-6, atol=1e-6, msg=name)
    # a main task's initial 1x1 convs feed only its intermediate predictions: exactly zero
    zeroed = [n for n in with_zero_levels if n.startswith("initial_heads") and ".semseg." in n]
    assert zeroed and all(not with_zero_levels[n].any() for n in zeroed)


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_every_intermediate_prediction_is_supervised(arch):
    build, levels, hw = BUILDERS[arch]
    tasks = tasks_for(["semseg", "depth", "normals"], auxiliary=["normals"])
    batch = make_batch(tasks, hw=hw)
    torch.manual_seed(0)
    model = build(tasks, 0.5)
    out = model(batch["image"])
    assert out.aux_weights == (0.5,) * levels
    expected_levels = {"semseg": levels, "depth": levels, "normals": levels - 1}  # normals: auxiliary
    assert {t: len(v) for t, v in out.aux.items() if v} == {t: n for t, n in expected_levels.items() if n}
    for preds in out.aux.values():
        for pred in preds:
            pred.retain_grad()
    losses = task_losses(out, tasks, batch)
    sum(losses.values()).backward()
    for task, preds in out.aux.items():
        for level, pred in enumerate(preds):
            assert pred.grad is not None and pred.grad.abs().sum() > 0, f"{task} level {level}"
    # the step's sum: final loss + 0.5 * each level's loss, the level upsampled to the target
    for task, preds in out.aux.items():
        y = batch["targets"][task]
        expected = tasks[task].loss(out[task], y) + sum(
            0.5 * tasks[task].loss(F.interpolate(p, size=hw, mode="bilinear", align_corners=False), y) for p in preds)
        torch.testing.assert_close(losses[task], expected)


# --------------------------------------------------------------------------- distillation
def distillation_run(model, x, perturb=None):
    """(distilled, own): per scale, each target's distilled features and the features it was given;
    ``perturb`` = (scale, task): that task's initial features at that scale are changed by a hook."""
    distilled, own, handles = {}, {}, []
    modules = model.distillation if isinstance(model.distillation, torch.nn.ModuleList) else [model.distillation]
    features = model.task_features if isinstance(model.task_features, torch.nn.ModuleList) else [model.task_features]

    def keep(s):
        def hook(module, args, output):
            distilled[s] = {k: v.clone() for k, v in output.items()}
            own[s] = {k: v.clone() for k, v in args[0].items()}
        return hook

    handles = [m.register_forward_hook(keep(s)) for s, m in enumerate(modules)]
    if perturb is not None:
        s, task = perturb
        handles.append(features[s][task].register_forward_hook(lambda m, args, output: output * 1.5 + 0.25))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return distilled, own


@pytest.mark.parametrize("arch", ["pad_net", "mti_net"])
def test_distillation_at_every_scale_receives_every_other_task(arch):
    tasks = tasks_for(["semseg", "depth", "edge"])  # three main tasks: six ordered pairs
    torch.manual_seed(0)
    model = (pad_net(tasks) if arch == "pad_net" else mti_net(tasks)).eval()
    x = torch.randn(1, 3, 32, 32)  # HRNet: 8 x 8 ... 1 x 1
    base, base_own = distillation_run(model, x)
    scales = range(len(base))
    assert len(base) == (1 if arch == "pad_net" else 4)
    for s in scales:
        for a in tasks:
            distilled, own = distillation_run(model, x, perturb=(s, a))
            for b in tasks:
                if b == a:
                    continue
                # b's own features at scale s do not depend on a's at s (FPMs go coarse to fine) ...
                assert torch.equal(own[s][b], base_own[s][b]), (s, a, b)
                # ... yet its distilled features change: a's message reached b
                assert not torch.allclose(distilled[s][b], base[s][b]), (s, a, b)
    # the check can fail: without the block b <- a, perturbing a leaves b's distilled features alone
    s = scales[-1]
    block = model.distillation.blocks if arch == "pad_net" else model.distillation[s].blocks
    with torch.no_grad():
        block["depth"]["semseg"].value.weight.zero_()
    base, _ = distillation_run(model, x)
    distilled, _ = distillation_run(model, x, perturb=(s, "semseg"))
    assert torch.equal(distilled[s]["depth"], base[s]["depth"])
    assert not torch.allclose(distilled[s]["edge"], base[s]["edge"])


# --------------------------------------------------------------------------- auxiliary tasks
def test_pad_net_auxiliary_task_is_its_initial_prediction():
    tasks = tasks_for(["semseg", "depth", "normals"], auxiliary=["normals"])
    torch.manual_seed(0)
    model = pad_net(tasks).eval()
    assert set(model.heads) == {"semseg", "depth"} and set(model.distillation.blocks) == {"semseg", "depth"}
    assert set(model.distillation.blocks["semseg"]) == {"depth", "normals"}  # a source all the same
    own = {id(p) for p in model.task_specific_parameters("normals")}
    assert own == {id(p) for m in (model.task_features["normals"], model.initial_heads["normals"])
                   for p in m.parameters()}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        initial = model.initial_heads["normals"](model.initial(model.encode(x))["normals"])
    assert "normals" not in out.aux
    assert torch.equal(out["normals"], F.interpolate(initial, size=(32, 32), mode="bilinear", align_corners=False))


def test_mti_net_auxiliary_task_is_its_finest_initial_prediction():
    tasks = tasks_for(["semseg", "depth", "normals"], auxiliary=["normals"])
    torch.manual_seed(0)
    model = mti_net(tasks).eval()
    assert set(model.heads) == {"semseg", "depth"}
    for d in model.distillation:
        assert set(d.blocks) == {"semseg", "depth"} and set(d.blocks["depth"]) == {"semseg", "normals"}
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        features = model.initial(x)
        initial = [model.initial_heads[s]["normals"](features[s]["normals"]) for s in range(4)]
    assert torch.equal(out["normals"], F.interpolate(initial[0], size=(32, 32), mode="bilinear", align_corners=False))
    assert len(out.aux["normals"]) == 3  # the coarser levels, coarsest first
    for level, s in enumerate((3, 2, 1)):
        assert torch.equal(out.aux["normals"][level], initial[s])


# --------------------------------------------------------------------------- survey sizes (meta)
NYUD, PASCAL = (480, 640), (512, 512)


def nyud_tasks(auxiliary=()):
    tasks = {"semseg": FakeTask("semseg", 40), "depth": FakeTask("depth", 1),
             "edge": FakeTask("edge", 1), "normals": FakeTask("normals", 3)}
    for name in auxiliary:
        tasks[name].auxiliary = True
    return {n: t for n, t in tasks.items() if n in ("semseg", "depth") or n in auxiliary}


def pascal_tasks():
    return {n: FakeTask(n, c) for n, c in (("semseg", 21), ("human_parts", 7), ("sal", 1), ("edge", 1), ("normals", 3))}


def on_meta(tasks, arch, hw, **spec):
    with torch.device("meta"):
        model = build_model(tasks, ModelRef(arch, **spec))
    return model, count_parameters(model) / 1e6, count_flops(model, hw)["macs"] / 1e9


def conv_weights(*modules):
    return sum(m.weight.numel() for module in modules for m in module.modules() if isinstance(m, torch.nn.Conv2d))


def test_pad_net_table6_dilated_resnet50():
    model, params, macs = on_meta(nyud_tasks(), "pad_net", NYUD, backbone=Plugin("resnet50", {"dilated": True}))
    decoder = [model.task_features, model.initial_heads, model.distillation, model.heads]
    # every decoder conv runs at 1/8 = 60 x 80: its MACs are its weights x 4,800
    backbone_macs = count_flops(model.backbone, NYUD)["macs"]
    assert count_flops(model, NYUD)["macs"] == backbone_macs + conv_weights(*decoder) * 60 * 80
    # 4 distillation blocks (2 targets x 1 source, 2 gates each) of 9 * 256^2 weights
    assert count_parameters(model.distillation) == 2 * 2 * 9 * 256**2
    assert params == pytest.approx(27.73, abs=0.01) and macs == pytest.approx(137.0, abs=0.1)
    # survey Table 6: 52 M / 256 G, not reproduced (see pad_net.py): a 1/8 decoder of ~28.5 M weights
    assert (52 - 23.51) * 4800 / 1e3 == pytest.approx(256 - 116.8, rel=0.02)


def test_pad_net_tables_7_and_9_hrnet18():
    model, params, macs = on_meta(nyud_tasks(), "pad_net", NYUD, backbone=Plugin("hrnet18"))
    decoder = [model.fuse, model.task_features, model.initial_heads, model.distillation, model.heads]
    backbone_macs = count_flops(model.backbone, NYUD)["macs"]
    assert count_flops(model, NYUD)["macs"] == backbone_macs + conv_weights(*decoder) * 120 * 160  # all at 1/4
    assert params == pytest.approx(7.02, abs=0.01) and macs == pytest.approx(70.25, abs=0.05)
    assert params == pytest.approx(7, rel=0.01)  # Table 7: 7 M (MACs: 44 G, ours 70.3 G; see pad_net.py)
    model, params, macs = on_meta(pascal_tasks(), "pad_net", PASCAL, backbone=Plugin("hrnet18"))
    block = 2 * 9 * 256**2
    assert count_parameters(model.distillation) == 5 * 4 * block  # 20 ordered (target, source) pairs
    assert params == pytest.approx(29.31, abs=0.01) and macs == pytest.approx(424.9, abs=0.1)
    # Table 9's 17 M / 225 G is one block per unordered pair (10): 17.5 M / 231.6 G, both within 3 %
    assert params - 10 * block / 1e6 == pytest.approx(17, rel=0.03)
    assert macs - 10 * block * 128 * 128 / 1e9 == pytest.approx(225, rel=0.03)


def test_mti_net_tables_7_and_9_hrnet18():
    _, params, macs = on_meta(nyud_tasks(), "mti_net", NYUD, **HRNET_HEAD)
    assert params == pytest.approx(8.58, abs=0.01) and macs == pytest.approx(17.14, abs=0.02)
    model, params_en, macs_en = on_meta(nyud_tasks(("edge", "normals")), "mti_net", NYUD, **HRNET_HEAD)
    assert set(model.heads) == {"semseg", "depth"}
    assert params_en == pytest.approx(14.84, abs=0.01) and macs_en == pytest.approx(22.88, abs=0.02)
    # Table 7 prints 13 M / 20 G: between semseg + depth alone and with edges + normals auxiliary
    assert params < 13 < params_en and macs < 20 < macs_en
    _, params, macs = on_meta(pascal_tasks(), "mti_net", PASCAL, **HRNET_HEAD)
    assert params == pytest.approx(24.49, abs=0.01) and macs == pytest.approx(30.31, abs=0.02)
    # Table 9: 27 M / 31 G
    assert params == pytest.approx(27, rel=0.1) and macs == pytest.approx(31, rel=0.03)

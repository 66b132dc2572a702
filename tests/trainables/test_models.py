"""Backbones, heads, architectures, ``build_model`` and complexity counting.

Registry-wide tests build every registered backbone / head / architecture, so a new plug-in is
tested the moment it is registered. The survey-size checks (ResNet-50 + ASPP at 480 x 640) run
on the meta device: shapes and FLOPs without allocating or computing anything.
"""
from __future__ import annotations

import pytest
import torch

import trainables  # noqa: F401  (registers every plug-in)
from trainables.architectures.base import MultiTaskModel
from trainables.build import architecture_info, build_model
from trainables.complexity import count_flops, count_parameters
from trainables.plugins import ModelRef, Plugin
from trainables.registry import ARCHITECTURES, BACKBONES, HEADS, RegistryError
from trainables.tasks.base import Task


class FakeTask(Task):
    """Just enough of a task for building models: a name, a kind and a channel count."""

    def __init__(self, name: str, channels: int, kind: str = "dense"):
        super().__init__(name)
        self.kind = kind
        self._channels = channels

    @property
    def out_channels(self) -> int:
        return self._channels

    def loss(self, pred, target):
        raise NotImplementedError

    def metric_state(self, device="cpu"):
        raise NotImplementedError

    def update_metric(self, state, pred, target):
        raise NotImplementedError

    def compute_metric(self, state):
        raise NotImplementedError


def dense_and_image_tasks() -> dict:
    return {"seg": FakeTask("seg", 5), "attr": FakeTask("attr", 3, kind="image")}


def task_sets(architecture: str) -> list[dict]:
    """Task sets an architecture can take: all tasks together, or one at a time."""
    tasks = dense_and_image_tasks()
    info = architecture_info(architecture)
    if info.dense_only:
        tasks = {n: t for n, t in tasks.items() if t.kind == "dense"}
    if info.task_count is not None:
        tasks = {f"{n}{i}": FakeTask(f"{n}{i}", t.out_channels, t.kind) for i in range(info.task_count)
                 for n, t in list(tasks.items())[:1]}
    if info.supports_multiple_tasks:
        return [tasks]
    return [{name: task} for name, task in tasks.items()]


def model_ref(architecture: str) -> ModelRef:
    """The architecture on the tiny backbone; one with four strides for multi-scale models (MTI-Net)."""
    if architecture_info(architecture).needs_multi_scale:
        return ModelRef(architecture, Plugin("tiny_cnn", {"output_stride": 16}))
    return ModelRef(architecture)


def param_ids(params) -> set[int]:
    return {id(p) for p in params}


# --------------------------------------------------------------------------- survey sizes
NYUD_HW = (480, 640)


@pytest.fixture(scope="module")
def nyud_models():
    """Table 3's models (semseg 40 classes + depth), ResNet-50 dilated + ASPP, on meta."""
    tasks = {"semseg": FakeTask("semseg", 40), "depth": FakeTask("depth", 1)}
    spec = dict(backbone=Plugin("resnet50", {"dilated": True}), head="aspp")
    with torch.device("meta"):
        mtl = build_model(tasks, ModelRef("mtl_baseline", **spec))
        singles = [build_model({n: t}, ModelRef("single_task", **spec)) for n, t in tasks.items()]
    return mtl, singles


def test_paper_notes_encoder_and_aspp_head_sizes(nyud_models):
    mtl, _ = nyud_models
    assert count_parameters(mtl.backbone) / 1e6 == pytest.approx(23.51, abs=0.01)
    assert count_parameters(mtl.heads["semseg"]) / 1e6 == pytest.approx(16.13, abs=0.01)
    encoder_macs = count_flops(mtl.backbone, NYUD_HW)["macs"]
    assert encoder_macs / 1e9 == pytest.approx(116.8, rel=0.01)
    z = torch.zeros(1, 2048, 60, 80, device="meta")  # the encoder's 1/8 feature map
    head = mtl.heads["semseg"].eval()
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        head(z)
    assert counter.get_total_flops() / 2e9 == pytest.approx(74.9, rel=0.01)


def test_paper_table3_totals(nyud_models):
    mtl, singles = nyud_models
    single_params = sum(count_parameters(m) for m in singles) / 1e6
    single_macs = sum(count_flops(m, NYUD_HW)["macs"] for m in singles) / 1e9
    assert single_params == pytest.approx(79.3, abs=0.05)
    assert single_macs == pytest.approx(383, rel=0.005)
    assert count_parameters(mtl) / 1e6 == pytest.approx(55.8, abs=0.05)
    assert count_flops(mtl, NYUD_HW)["macs"] / 1e9 == pytest.approx(267, rel=0.005)


def test_count_flops_is_2x_macs_and_restores_modes():
    model = build_model({"seg": FakeTask("seg", 2)})
    model.train()
    model.heads.eval()  # mixed modes must come back as they were
    counts = count_flops(model, (32, 32), batch=2)
    assert counts["flops"] == 2 * counts["macs"] > 0
    assert model.training and model.backbone.training and not model.heads["seg"].training
    with torch.device("meta"):
        meta_model = build_model({"seg": FakeTask("seg", 2)})
    assert count_flops(meta_model, (32, 32), batch=2) == counts


# --------------------------------------------------------------------------- backbones
@pytest.mark.parametrize(
    "name, params, stride",
    [
        ("resnet18", {}, 32),
        ("resnet18", {"dilated": True}, 8),
        ("resnet50", {}, 32),
        ("resnet50", {"dilated": True}, 8),
        ("tiny_cnn", {}, 8),
        ("tiny_cnn", {"output_stride": 4}, 4),
    ],
)
def test_output_stride(name, params, stride):
    with torch.device("meta"):
        backbone = BACKBONES.get(name)(**params)
        out = backbone(torch.zeros(1, 3, 256, 320))
    assert backbone.output_stride == stride
    assert tuple(out.shape) == (1, backbone.out_channels, 256 // stride, 320 // stride)


STAGE_CASES = [(name, {}) for name in BACKBONES.names()] + [
    ("resnet18", {"dilated": True}),
    ("resnet50", {"dilated": True}),
]


@pytest.mark.parametrize("name, params", STAGE_CASES)
def test_backbone_stages_contract(name, params):
    with torch.device("meta"):
        backbone = BACKBONES.get(name)(**params)
        x = torch.zeros(1, 3, 64, 96)
        out = backbone(x)
        features = backbone.features(x)
        if backbone.info_for(backbone.params).sequential_stages:  # features == running the stages in order
            y, ran = x, []
            for stage in backbone.stages:
                y = stage(y)
                ran.append(y)
            assert [tuple(f.shape) for f in features] == [tuple(r.shape) for r in ran]
        for f, channels, stride in zip(features, backbone.stage_channels, backbone.stage_strides, strict=True):
            assert tuple(f.shape) == (1, channels, 64 // stride, 96 // stride)
        y = features[-1]
    assert out.shape == y.shape
    assert backbone.stage_channels[-1] == backbone.out_channels
    assert backbone.stage_strides[-1] == backbone.output_stride


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_forward_backward_finite(name):
    torch.manual_seed(0)
    backbone = BACKBONES.get(name)()
    x = torch.randn(2, 3, 64, 64)
    # every stage's output: a multi-scale backbone (HRNet) has parameters only its finer maps use
    sum(f.square().mean() for f in backbone.features(x)).backward()
    for pname, p in backbone.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"


def test_resnet_loads_local_weights(tmp_path):
    import torchvision

    source = torchvision.models.resnet18(weights=None, num_classes=7)
    path = tmp_path / "r18.pt"
    torch.save(source.state_dict(), path)
    backbone = BACKBONES.get("resnet18")(weights_path=str(path))
    assert torch.equal(backbone.stages[0][0].weight, source.conv1.weight)
    assert torch.equal(backbone.stages[4][1].bn2.running_var, source.layer4[1].bn2.running_var)


def test_last_shared_module_is_the_last_conv_not_a_batchnorm():
    for backbone in ("tiny_cnn", "resnet18", "resnet50"):
        with torch.device("meta"):
            model = build_model({"seg": FakeTask("seg", 2)}, ModelRef("mtl_baseline", backbone))
        convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
        assert model.last_shared_module() is convs[-1], backbone  # GradNorm's W: a kernel, not BN's scale


def test_backbone_param_validation():
    with pytest.raises(ValueError, match="output_stride"):
        BACKBONES.get("tiny_cnn")(output_stride=3)
    with pytest.raises(ValueError, match="dilated"):
        BACKBONES.get("resnet18")(dilated="yes")


# --------------------------------------------------------------------------- heads
@pytest.mark.parametrize("name", HEADS.names())
def test_head_forward_backward_finite(name):
    torch.manual_seed(0)
    cls = HEADS.get(name)
    x = torch.randn(2, 8, 6, 7)
    if cls.INFO.low_level:  # DeepLab-v3+: also the stride-4 features, here 2x the resolution
        head = cls(8, 3, low_channels=4)
        out = head(x, torch.randn(2, 4, 12, 14))
    else:
        head = cls(8, 3)
        out = head(x)
    assert out.shape[:2] == (2, 3)
    assert out.dim() in (2, 4)  # dense heads may change h x w (the architecture resizes to the input)
    out.square().mean().backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}.{pname}"


def test_linear_head_is_image_level_and_conv_head_dense():
    assert HEADS.get("linear")(8, 4)(torch.randn(2, 8, 5, 5)).shape == (2, 4)
    assert HEADS.get("conv")(8, 4, mid_channels=16)(torch.randn(2, 8, 5, 5)).shape == (2, 4, 5, 5)


# --------------------------------------------------------------------------- architectures
@pytest.mark.parametrize("architecture", ARCHITECTURES.names())
def test_architecture_forward_shapes_and_encode_decode(architecture):
    for tasks in task_sets(architecture):
        torch.manual_seed(0)
        model = build_model(tasks, model_ref(architecture)).eval()
        assert isinstance(model, MultiTaskModel)
        assert model.task_names == list(tasks)
        x = torch.randn(2, 3, 40, 56)
        with torch.no_grad():
            out = model(x)
            assert set(out) == set(tasks)
            for name, task in tasks.items():
                expected = (2, task.out_channels) + ((40, 56) if task.kind == "dense" else ())
                assert tuple(out[name].shape) == expected, name
            if model.has_shared_representation:
                z = model.encode(x)
                assert isinstance(z, torch.Tensor)
                decoded = model.decode(z, x.shape[-2:])
                for name in tasks:
                    torch.testing.assert_close(decoded[name], out[name])


@pytest.mark.parametrize("architecture", ARCHITECTURES.names())
def test_architecture_parameter_partition(architecture):
    for tasks in task_sets(architecture):
        model = build_model(tasks, model_ref(architecture))
        shared = param_ids(model.shared_parameters())
        assert shared, "gradient-based balancers need shared parameters"
        groups = [shared] + [param_ids(model.task_specific_parameters(t)) for t in model.task_names]
        union = set().union(*groups)
        assert sum(len(g) for g in groups) == len(union), "parameter groups overlap"
        assert union == param_ids(model.parameters())
        last = model.last_shared_module()
        assert param_ids(last.parameters()) and param_ids(last.parameters()) <= shared
        with pytest.raises(KeyError, match="unknown task"):
            model.task_specific_parameters("nope")


@pytest.mark.parametrize("architecture", ARCHITECTURES.names())
def test_architecture_one_step_finite_grads_and_deterministic(architecture):
    for tasks in task_sets(architecture):
        torch.manual_seed(0)
        model = build_model(tasks, model_ref(architecture))
        torch.manual_seed(0)
        twin = build_model(tasks, model_ref(architecture))
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(p, q)
        out = model(torch.randn(2, 3, 32, 32))
        # intermediate predictions of deep-supervised models too: their classifiers feed only them
        terms = list(out.values()) + [a for preds in getattr(out, "aux", {}).values() for a in preds]
        sum(o.square().mean() for o in terms).backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{architecture}: {pname}"


def test_single_task_rejects_two_tasks():
    with pytest.raises(ValueError, match="exactly one task.*seg.*attr"):
        build_model(dense_and_image_tasks(), ModelRef("single_task"))


def test_mtl_baseline_smaller_than_single_task_networks():
    tasks = {"seg": FakeTask("seg", 5), "depth": FakeTask("depth", 1), "attr": FakeTask("attr", 3, "image")}
    for backbone in ("tiny_cnn", "resnet18"):
        with torch.device("meta"):
            mtl = build_model(tasks, ModelRef("mtl_baseline", backbone))
            singles = [build_model({n: t}, ModelRef("single_task", backbone)) for n, t in tasks.items()]
        assert count_parameters(mtl) < sum(count_parameters(m) for m in singles)
        # shared encoder counted once: the difference is exactly (T - 1) encoders
        saved = sum(count_parameters(m) for m in singles) - count_parameters(mtl)
        assert saved == (len(tasks) - 1) * count_parameters(mtl.backbone)


def test_image_tasks_get_linear_heads_dense_tasks_the_chosen_head():
    model = build_model(dense_and_image_tasks(), ModelRef(head=Plugin("aspp", {"channels": 16})))
    assert type(model.heads["attr"]) is HEADS.get("linear")
    assert type(model.heads["seg"]) is HEADS.get("aspp")


# --------------------------------------------------------------------------- build_model errors
def test_build_model_unknown_names_list_valid_ones():
    tasks = {"seg": FakeTask("seg", 2)}
    with pytest.raises(RegistryError, match="tiny_cnn"):
        build_model(tasks, ModelRef(backbone="resnet7"))
    with pytest.raises(RegistryError, match="mtl_baseline"):
        build_model(tasks, ModelRef(architecture="nope"))
    with pytest.raises(RegistryError, match="aspp"):
        build_model(tasks, ModelRef(head="nope"))


def test_build_model_bad_params_name_plugin_and_kwarg():
    tasks = {"seg": FakeTask("seg", 2)}
    with pytest.raises(ValueError, match=r"backbone 'tiny_cnn'.*depth"):
        build_model(tasks, ModelRef(backbone=Plugin("tiny_cnn", {"depth": 3})))
    with pytest.raises(ValueError, match=r"head 'conv'.*mid_chanels.*mid_channels"):
        build_model(tasks, ModelRef(head=Plugin("conv", {"mid_chanels": 3})))
    with pytest.raises(ValueError, match=r"architecture 'mtl_baseline'.*alpha"):
        build_model(tasks, ModelRef(architecture=Plugin("mtl_baseline", {"alpha": 1})))
    with pytest.raises(ValueError, match=r"aspp.*rates"):
        build_model(tasks, ModelRef(head=Plugin("aspp", {"rates": (1, 2)})))
    with pytest.raises(ValueError, match="must match"):
        build_model({"seg": FakeTask("other", 2)})

"""The ``vgg16`` backbone (Auto-Lambda's CIFAR-100 trunk, IAL Table VII): size, shapes, stages, and
the same layers as torchvision's vgg16_bn without its fifth max-pool."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import trainables  # noqa: F401  (registers every plug-in)
from trainables.build import build_model
from trainables.complexity import count_parameters
from trainables.plugins import ModelRef
from trainables.registry import BACKBONES, TASKS


def test_trunk_parameter_count_by_hand():
    # conv 3x3 with bias: 9 * c_in * c_out + c_out; BN: 2 * c_out
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    weights = sum(9 * cin * cout + cout for cin, cout in convs)
    norms = sum(2 * cout for _, cout in convs)
    assert (weights, norms) == (14_714_688, 8_448)
    assert count_parameters(BACKBONES.get("vgg16")()) == 14_723_136 == weights + norms


def test_output_and_stage_shapes_at_cifar_size():
    torch.manual_seed(0)
    backbone = BACKBONES.get("vgg16")().eval()
    x = torch.randn(2, 3, 32, 32)
    assert backbone.stage_channels == [64, 128, 256, 512, 512] and backbone.stage_strides == [1, 2, 4, 8, 16]
    shapes = [tuple(f.shape) for f in backbone.features(x)]
    assert shapes == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4), (2, 512, 2, 2)]
    assert tuple(backbone(x).shape) == (2, 512, 2, 2)  # four pools: 2 x 2 left for the head's average
    # every stage after the stem opens with the previous group's pool and ends with a conv block
    for stage in backbone.stages[1:]:
        assert isinstance(stage[0], nn.MaxPool2d) and isinstance(stage[-1][0], nn.Conv2d)


def test_same_layers_as_torchvisions_vgg16_bn_without_its_last_pool():
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.vgg16_bn(weights=None).features
    assert isinstance(reference[-1], nn.MaxPool2d)
    reference = reference[:-1].eval()
    ours = BACKBONES.get("vgg16")().eval()
    mine = [m for m in ours.modules() if not isinstance(m, (nn.Sequential, nn.ModuleList, type(ours)))]
    assert [type(m) for m in mine] == [type(m) for m in reference]
    with torch.no_grad():  # copy the parameters and buffers over in order; the outputs must agree
        for a, b in zip(mine, reference, strict=True):
            for (name_a, ta), (name_b, tb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
                assert name_a == name_b and ta.shape == tb.shape
                ta.copy_(tb)
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(ours(x), reference(x))


def test_hard_sharing_with_one_linear_layer_per_task():
    tasks = {f"task_{k:02d}": TASKS.get("scene")(f"task_{k:02d}", num_classes=5) for k in range(3)}
    model = build_model(tasks, ModelRef("mtl_baseline", "vgg16", "linear")).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert {t: tuple(v.shape) for t, v in out.items()} == {t: (2, 5) for t in tasks}
    assert count_parameters(model) == 14_723_136 + 3 * (512 * 5 + 5)
    assert model.last_shared_module() is model.backbone.stages[-1][-1][0]  # the last 3x3 conv


def test_param_validation():
    with pytest.raises(ValueError, match="vgg16: in_channels must be a positive int, got 0"):
        BACKBONES.get("vgg16")(in_channels=0)

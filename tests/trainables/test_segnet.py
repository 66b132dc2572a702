"""The SegNet of MTAN / MTPSL / JTR: backbone ``segnet`` + head ``segnet``. Its size against the
reference code (MTAN's ``im2im_pred/model_segnet_split.py``, copied by MTPSL's ``model/segnet_mtl.py``
and JTR's ``code/models/nyuv2_segnet_mtl.py``), the backbone contract, and one CPU step."""
from __future__ import annotations

import pytest
import torch

import trainables  # noqa: F401  (registers every plug-in)
from trainables.build import build_model, build_tasks
from trainables.complexity import count_parameters
from trainables.plugins import ModelRef, Plugin
from trainables.registry import BACKBONES, HEADS

SEGNET = ModelRef(architecture=Plugin("mtl_baseline"), backbone=Plugin("segnet"), head=Plugin("segnet"))
NYUV2_TASKS = ["semseg", "depth", "normals"]  # 13 classes, 1, 3 channels (MTAN's NYUv2 at 288 x 384)


def reference_count(filters=(64, 128, 256, 512, 512), outputs=(13, 1, 3)) -> int:
    """#P of the reference multi-task SegNet, layer by layer as its code builds it (without MTAN's
    3 uncertainty weights ``logsigma``, which belong to a balancer here; JTR's copy has none)."""
    def conv_layer(cin, cout):  # Conv2d 3x3 with bias + BatchNorm2d
        return 9 * cin * cout + cout + 2 * cout

    f = filters
    encoder_block = conv_layer(3, f[0]) + sum(conv_layer(f[i], f[i + 1]) for i in range(4))
    decoder_block = conv_layer(f[0], f[0]) + sum(conv_layer(f[i + 1], f[i]) for i in range(4))
    conv_block_enc = (conv_layer(f[0], f[0]) + conv_layer(f[1], f[1])
                      + sum(2 * conv_layer(f[i + 1], f[i + 1]) for i in (1, 2, 3)))
    conv_block_dec = (conv_layer(f[0], f[0]) + conv_layer(f[0], f[0])
                      + sum(2 * conv_layer(f[i], f[i]) for i in (1, 2, 3)))
    pred_tasks = sum((9 * f[0] * f[0] + f[0]) + (f[0] * c + c) for c in outputs)
    return encoder_block + decoder_block + conv_block_enc + conv_block_dec + pred_tasks


def test_multi_task_segnet_has_the_reference_size():
    assert reference_count() == 25_055_185  # MTAN's "SegNet split" prints 25,055,188 with its 3 logsigma
    tasks = build_tasks(Plugin("nyuv2_mtan"), NYUV2_TASKS)
    assert [t.out_channels for t in tasks.values()] == [13, 1, 3]
    with torch.device("meta"):
        model = build_model(tasks, SEGNET)
    assert count_parameters(model) == reference_count()
    assert count_parameters(model.backbone) == 24_943_296
    assert sum(count_parameters(h) for h in model.heads.values()) == 111_889
    with torch.device("meta"):  # MTAN's "wide" variant
        wide_backbone = Plugin("segnet", {"widths": (64, 128, 256, 512, 1024)})
        wide = build_model(tasks, ModelRef("mtl_baseline", wide_backbone, "segnet"))
    assert count_parameters(wide) == reference_count(filters=(64, 128, 256, 512, 1024))


def test_full_resolution_features_and_the_bottleneck_at_288x384():
    with torch.device("meta"):
        backbone = BACKBONES.get("segnet")()
        out = backbone(torch.zeros(1, 3, 288, 384))
        bottleneck = []
        net = backbone.stages[0]
        net.encoder[-1].register_forward_hook(lambda m, i, o: bottleneck.append(o.shape))
        backbone(torch.zeros(1, 3, 288, 384))
    assert tuple(out.shape) == (1, 64, 288, 384)
    assert tuple(bottleneck[0]) == (1, 512, 18, 24)  # pooled once more: JTR's 512 x 9 x 12 latent
    assert (backbone.out_channels, backbone.output_stride) == (64, 1)
    assert (backbone.stage_channels, backbone.stage_strides) == ([64], [1])
    assert not backbone.info_for(backbone.params).sequential_stages
    assert backbone.low_level_index() is None and backbone.scales() == [0]


def test_sides_that_are_not_multiples_of_32_keep_their_size():
    backbone = BACKBONES.get("segnet")(widths=(4, 4, 8, 8, 8))
    x = torch.randn(1, 3, 40, 52)
    out = backbone(x)
    assert tuple(out.shape) == (1, 4, 40, 52)
    assert [tuple(f.shape) for f in backbone.features(x)] == [(1, 4, 40, 52)]


def test_unpooling_puts_values_back_where_the_maxima_were():
    """One level, identity-like convs: the decoder's input is non-zero only at each 2x2 window's argmax."""
    backbone = BACKBONES.get("segnet")(widths=(1,), in_channels=1).eval()
    net = backbone.stages[0]
    seen = []
    net.decoder[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.tensor([[[[1.0, 5.0, 0.0, 0.0], [2.0, 3.0, 0.0, 7.0], [9.0, 0.0, 1.0, 1.0], [0.0, 0.0, 4.0, 1.0]]]])
    with torch.no_grad():
        for seq in net.encoder[0]:  # conv -> identity, BN -> identity (eval, fresh statistics)
            seq[0].weight.zero_()
            seq[0].weight[0, 0, 1, 1] = 1.0
        backbone(x)
    unpooled = seen[0][0, 0]
    assert torch.equal(unpooled != 0, torch.tensor([[False, True, False, False], [False, False, False, True],
                                                    [True, False, False, False], [False, False, True, False]]))


def test_head_is_conv3x3_then_conv1x1_with_biases():
    head = HEADS.get("segnet")(64, 13)
    convs = list(head.modules())[2:]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(64, 64, (3, 3)), (64, 13, (1, 1))]
    assert all(c.bias is not None and not c.bias.any() for c in convs)
    assert sum(p.numel() for p in head.parameters()) == 9 * 64 * 64 + 64 + 64 * 13 + 13


def test_forward_backward_at_32x32_on_cpu():
    torch.manual_seed(0)
    tasks = build_tasks(Plugin("nyuv2_mtan"), NYUV2_TASKS)
    model = build_model(tasks, SEGNET)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert {t: tuple(o.shape) for t, o in out.items()} == {
        "semseg": (2, 13, 32, 32), "depth": (2, 1, 32, 32), "normals": (2, 3, 32, 32)}
    sum(o.square().mean() for o in out.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # GradNorm's "last shared layer": the decoder's last conv, the one before every head
    assert model.last_shared_module() is model.backbone.stages[0].decoder[-1][-1][0]


def test_architectures_that_cut_between_stages_are_refused():
    tasks = build_tasks(Plugin("nyuv2_mtan"), NYUV2_TASKS)
    with pytest.raises(ValueError, match="no sequential stages"), torch.device("meta"):
        build_model(tasks, ModelRef("cross_stitch", "segnet", "segnet"))


def test_params_are_checked():
    with pytest.raises(ValueError, match="widths"):
        BACKBONES.get("segnet")(widths=(64, 0))
    with pytest.raises(ValueError, match="deep"):
        BACKBONES.get("segnet")(deep="yes")

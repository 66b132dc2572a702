"""PSP, DeepLab-v3+ and Taskonomy heads, ResNet-26, pretrained / local ResNet weights.

Parameter counts are worked out by hand in the comments and asserted exactly; the survey-size
checks (Tables 4 and 5) run on the meta device. No test opens a network connection: sockets are
blocked for the whole module and the download function is monkeypatched where a test needs it.
"""
from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import trainables  # noqa: F401  (registers every plug-in)
from trainables.backbones.resnet import ResNet26Params
from trainables.build import build_model
from trainables.complexity import count_flops, count_parameters
from trainables.heads.aspp import ASPP
from trainables.plugins import ModelRef, Plugin
from trainables.registry import BACKBONES, HEADS, TASKS
from trainables.schema import ConfigError


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def macs(module: nn.Module, *inputs) -> int:
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() // 2


def task(kind: str, name: str, **params):
    return TASKS.get(kind)(name, **params)


# --------------------------------------------------------------------------- PSP
def test_psp_parameter_count_by_hand():
    # in 2048, bins (1, 2, 3, 6) -> 4 branches of 2048 -> 512 (1x1, no bias) + BN:
    #   4 * 2048*512 + 4 * 2*512 = 4,194,304 + 4,096
    # 3x3 conv on the 2048 + 4*512 = 4096 channels to 512 (no bias) + BN: 4096*512*9 + 2*512 = 18,875,392
    # classifier 512 -> 19: 512*19 + 19 = 9,747             total 23,083,539
    with torch.device("meta"):
        head = HEADS.get("psp")(2048, 19)
    assert count_parameters(head) == 4_194_304 + 4_096 + 18_875_392 + 9_747
    # small: in 8, bins (1, 2) -> 2 branches 8 -> 4: 2 * (32 + 8); 3x3 (8 + 8) -> 6: 864 + 12; 6 -> 3: 21
    small = HEADS.get("psp")(8, 3, bins=(1, 2), channels=6)
    assert count_parameters(small) == 80 + 876 + 21


def test_psp_pooled_branches_have_the_bin_sizes_and_pool_averages():
    torch.manual_seed(0)
    head = HEADS.get("psp")(8, 3).eval()
    x = torch.randn(2, 8, 12, 18)
    for bin_size, branch in zip((1, 2, 3, 6), head.pyramid, strict=True):
        assert tuple(branch(x).shape) == (2, 2, bin_size, bin_size)  # 8 / 4 bins = 2 channels each
    # the 1-bin is the global mean, the 2-bin the mean of each quadrant (12 x 18 -> 6 x 9 cells)
    torch.testing.assert_close(head.pyramid[0][0](x)[..., 0, 0], x.mean(dim=(2, 3)))
    torch.testing.assert_close(head.pyramid[1][0](x)[..., 1, 0], x[..., 6:, :9].mean(dim=(2, 3)))
    out = head(x)
    assert tuple(out.shape) == (2, 3, 12, 18)  # at the input's resolution
    assert head.bottleneck[0].in_channels == 16  # the input and 4 branches of 2: concatenated


def test_psp_context_reaches_every_pixel():
    """A change in one corner moves the prediction in the opposite corner (via the pooled bins),
    which a 3x3 conv + 1x1 classifier alone could not do."""
    torch.manual_seed(0)
    head = HEADS.get("psp")(64, 3, channels=16).eval()
    x = torch.randn(1, 64, 12, 12)
    y = x.clone()
    y[..., :2, :2] += 5.0
    with torch.no_grad():
        assert not torch.allclose(head(x)[..., -3:, -3:], head(y)[..., -3:, -3:])
        head.pyramid = nn.ModuleList()  # without the pyramid (and the concat narrower) the far corner is blind
        head.bottleneck[0] = nn.Conv2d(64, 16, 3, padding=1, bias=False)
        torch.testing.assert_close(head(x)[..., -3:, -3:], head(y)[..., -3:, -3:])


def test_psp_rejects_bins_that_do_not_divide_the_channels():
    with pytest.raises(ValueError, match="not divisible"):
        HEADS.get("psp")(10, 3)
    with pytest.raises(ConfigError, match="bins"):
        HEADS.get("psp")(8, 3, bins=(1, 0))


CITYSCAPES_HW = (256, 512)


def test_survey_table4_psp_sizes():
    """Table 4: single task x 3 = 138 M / 266 G, MTL baseline 92 M / 166 G (dilated ResNet-50 +
    PSP heads, 256 x 512). Ours: encoder 23.51 M / 49.83 G, heads 23.08 / 23.07 / 23.07 M and
    38.7 G each -> single task 139.8 M / 265.6 G (+1.3 % / -0.1 %), MTL 92.7 M / 166.0 G
    (+0.8 % / -0.0 %)."""
    tasks = {"semseg": task("semseg", "semseg", num_classes=19), "center": task("dense_l1", "center", channels=2),
             "depth": task("dense_l1", "depth", channels=1)}
    spec = {"backbone": Plugin("resnet50", {"dilated": True}), "head": "psp"}
    with torch.device("meta"):
        mtl = build_model(tasks, ModelRef("mtl_baseline", **spec))
        singles = [build_model({n: t}, ModelRef("single_task", **spec)) for n, t in tasks.items()]
    assert [count_parameters(h) for h in mtl.heads.values()] == [23_073_792 + 513 * k for k in (19, 2, 1)]
    assert count_flops(mtl.backbone, CITYSCAPES_HW)["macs"] / 1e9 == pytest.approx(49.8, rel=0.01)
    single_p = sum(count_parameters(m) for m in singles) / 1e6
    single_g = sum(count_flops(m, CITYSCAPES_HW)["macs"] for m in singles) / 1e9
    assert single_p == pytest.approx(138, rel=0.03) and single_g == pytest.approx(266, rel=0.03)
    assert count_parameters(mtl) / 1e6 == pytest.approx(92, rel=0.03)
    assert count_flops(mtl, CITYSCAPES_HW)["macs"] / 1e9 == pytest.approx(166, rel=0.03)


# --------------------------------------------------------------------------- DeepLab-v3+
def test_deeplabv3plus_parameter_count_by_hand():
    # ASPP on 2048: 1x1 2048*256 + 3 atrous 3 * 2048*256*9 + pooling 2048*256 + projection 1280*256
    #   + 6 BN * 2*256                                                       = 15,535,104
    # low-level 1x1 256 -> 48 + BN: 12,288 + 96                              =     12,384
    # decoder 3x3 (256 + 48) -> 256 + BN, 3x3 256 -> 256 + BN: 700,928 + 590,336 = 1,291,264
    # classifier 256 -> 21: 5,397                                            total 16,844,149
    with torch.device("meta"):
        head = HEADS.get("deeplabv3plus")(2048, 21, low_channels=256)
    assert count_parameters(head.aspp) == 15_535_104
    assert count_parameters(head) == 15_535_104 + 12_384 + 1_291_264 + 5_397
    # ASTMT's width (decoder 64, low-level 12): ASPP 2048*64*29 + 320*64 + 6*128 = 3,822,336;
    # 256*12 + 24; 76*64*9 + 128 + 64*64*9 + 128; 64*21 + 21
    with torch.device("meta"):
        thin = HEADS.get("deeplabv3plus")(2048, 21, low_channels=256, channels=64, low_level_channels=12)
    assert count_parameters(thin) == 3_822_336 + 3_096 + 43_904 + 36_992 + 1_365


def test_deeplabv3plus_reuses_the_aspp_block():
    head = HEADS.get("deeplabv3plus")(8, 3, low_channels=4, channels=8, low_level_channels=4)
    assert type(head.aspp) is ASPP
    assert isinstance(HEADS.get("aspp")(8, 3, channels=8), ASPP)  # the aspp head is the same block + 2 layers


def test_deeplabv3plus_output_at_low_level_resolution_and_uses_the_skip():
    torch.manual_seed(0)
    head = HEADS.get("deeplabv3plus")(16, 3, low_channels=6, channels=8, low_level_channels=4).eval()
    assert head.INFO.low_level
    x, low = torch.randn(2, 16, 5, 7), torch.randn(2, 6, 20, 28)
    out = head(x, low)
    assert tuple(out.shape) == (2, 3, 20, 28)
    with torch.no_grad():
        assert not torch.allclose(head(x, low + torch.randn_like(low)), out)  # the skip matters
        assert not torch.allclose(head(x + torch.randn_like(x), low), out)  # and so do the last features


def test_deeplabv3plus_in_a_model_reads_the_stride4_stage():
    torch.manual_seed(0)
    tasks = {"seg": task("semseg", "seg", num_classes=3), "scene": task("scene", "scene", num_classes=4)}
    head = Plugin("deeplabv3plus", {"channels": 8, "low_level_channels": 4})
    model = build_model(tasks, ModelRef("mtl_baseline", "resnet18", head)).eval()
    seen = {}
    model.heads["seg"].reduce_low.register_forward_hook(lambda m, args, out: seen.update(low=args[0].shape))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert seen["low"] == (2, 64, 16, 24)  # ResNet-18's layer1: 64 channels at 1/4
    assert tuple(out["seg"].shape) == (2, 3, 64, 96) and tuple(out["scene"].shape) == (2, 4)
    with pytest.raises(ValueError, match="stride-4"):
        build_model(tasks, ModelRef("mtl_baseline", Plugin("tiny_cnn", {"output_stride": 2}), head))


# --------------------------------------------------------------------------- ASPP refactor
class _PreRefactorPooling(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x):
        return F.interpolate(self.proj(F.adaptive_avg_pool2d(x, 1)), size=x.shape[-2:], mode="bilinear",
                             align_corners=False)


class _PreRefactorASPPHead(nn.Module):
    """The ``aspp`` head as it was before ``ASPP`` was factored out (same modules, same order)."""

    def __init__(self, cin, cout, rates=(12, 24, 36), c=256, dropout=0.5):
        super().__init__()

        def cbr(i, o, k=1, d=1):
            return nn.Sequential(nn.Conv2d(i, o, k, padding=d * (k - 1) // 2, dilation=d, bias=False),
                                 nn.BatchNorm2d(o), nn.ReLU())

        self.branches = nn.ModuleList([cbr(cin, c)] + [cbr(cin, c, 3, r) for r in rates]
                                      + [_PreRefactorPooling(cin, c)])
        self.project = nn.Sequential(*cbr(5 * c, c), nn.Dropout(dropout))
        self.refine = cbr(c, c, 3)
        self.classifier = nn.Conv2d(c, cout, 1)

    def forward(self, x):
        return self.classifier(self.refine(self.project(torch.cat([b(x) for b in self.branches], dim=1))))


@pytest.mark.parametrize("params", [{}, {"channels": 16, "rates": (1, 2, 3), "dropout": 0.2}])
def test_aspp_head_is_bit_identical_to_before_the_refactor(params):
    kwargs = {"c" if k == "channels" else k: v for k, v in params.items()}
    torch.manual_seed(0)
    ours = HEADS.get("aspp")(32, 5, **params)
    torch.manual_seed(0)
    before = _PreRefactorASPPHead(32, 5, **kwargs)
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in before.named_modules()]  # creation order
    ours_state, before_state = ours.state_dict(), before.state_dict()
    assert list(ours_state) == list(before_state)  # state-dict keys
    for key in before_state:
        assert torch.equal(ours_state[key], before_state[key]), key
    x = torch.randn(2, 32, 9, 11)
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(before, mode)()
        torch.manual_seed(1)
        a = ours(x)
        torch.manual_seed(1)
        b = before(x)
        assert torch.equal(a, b), mode
    assert count_parameters(ours) == count_parameters(before)
    assert macs(ours, x) == macs(before, x)


# --------------------------------------------------------------------------- Taskonomy
def test_taskonomy_fcn_layers_and_parameter_count_by_hand():
    # bottleneck 3x3 2048 -> 8 + BN: 147,456 + 16
    # 3x3 convs (no bias): 9 * (8*1024 + 1024*1024 + 1024*512 + 512*256 + 256*256 + 256*128 + 128*64 + 64*64
    #                           + 64*32 + 32*32 + 32*16 + 16*32 + 32*16) = 16,445,952
    # their BN: 2 * (1024+1024+512+256+256+128+64+64+32+32+16+32+16) = 6,912
    # output 3x3 16 -> K (bias): 145 K
    with torch.device("meta"):
        head = HEADS.get("taskonomy_fcn")(2048, 1)
        flat = HEADS.get("taskonomy_fcn")(2048, 17, bottleneck_channels=None)
    assert count_parameters(head) == 147_472 + 16_445_952 + 6_912 + 145
    # without the bottleneck the first conv reads 2048 channels: 2048*1024*9 instead of 8*1024*9
    assert count_parameters(flat) == 16_445_952 - 73_728 + 18_874_368 + 6_912 + 145 * 17
    convs = [m for m in head.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 1 + 14  # the bottleneck (Taskonomy's compress1) + the decoder's 14 layers
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in convs) == 4
    assert {m.negative_slope for m in head.modules() if isinstance(m, nn.LeakyReLU)} == {0.2}


def test_taskonomy_fcn_upsamples_16x_and_tanh_is_an_option():
    torch.manual_seed(0)
    head = HEADS.get("taskonomy_fcn")(32, 2).eval()
    out = head(torch.randn(2, 32, 3, 5))
    assert tuple(out.shape) == (2, 2, 48, 80)
    bounded = HEADS.get("taskonomy_fcn")(32, 2, tanh_output=True).eval()
    assert bounded(torch.randn(2, 32, 3, 5) * 100).abs().max() <= 1


def test_taskonomy_head_sizes_vs_survey_table5():
    """Taskonomy at 256 x 256: the encoder (ResNet-50, output stride 16 as Taskonomy's) gives
    16 x 16 x 2048. Four taskonomy_fcn heads (depth, semseg 17, edges, keypoints) + a linear
    scene head (365): 67.15 M, 18.1 G; MTL 90.7 M / 26.3 G, single task 184.7 M / 58.7 G against
    Table 5's 130 M / 70 G and 224 M / 136 G (not reproducible: see taskonomy_fcn.py)."""
    import torchvision

    with torch.device("meta"):
        encoder = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, False, True])
        encoder = nn.Sequential(*list(encoder.children())[:-2])
        heads = {t: HEADS.get("taskonomy_fcn")(2048, k) for t, k in (("depth", 1), ("semseg", 17), ("edge", 1),
                                                                       ("keypoints", 1))}
        heads["scene"] = HEADS.get("linear")(2048, 365)
        z = torch.zeros(1, 2048, 16, 16)
        enc_p, enc_g = count_parameters(encoder), macs(encoder, torch.zeros(1, 3, 256, 256))
        heads_p = sum(count_parameters(h) for h in heads.values())
        heads_g = sum(macs(h, z) for h in heads.values())
    assert enc_p == 23_508_032 and enc_g / 1e9 == pytest.approx(8.11, abs=0.01)
    assert heads_p == 4 * 16_600_336 + 145 * (1 + 17 + 1 + 1) + 2048 * 365 + 365
    assert (enc_p + heads_p) / 1e6 == pytest.approx(90.66, abs=0.01)
    assert (5 * enc_p + heads_p) / 1e6 == pytest.approx(184.69, abs=0.01)
    assert (enc_g + heads_g) / 1e9 == pytest.approx(26.26, abs=0.01)
    assert (5 * enc_g + heads_g) / 1e9 == pytest.approx(58.69, abs=0.01)
    # what the table's own rows imply: one encoder = (224 - 130) / 4 = 23.5 M, i.e. a ResNet-50
    assert (224 - 130) / 4 == pytest.approx(enc_p / 1e6, abs=0.05)


# --------------------------------------------------------------------------- ResNet-26
def test_resnet26_parameter_count_by_hand():
    # stem 7x7 3 -> 64 + BN: 9,408 + 128. A Bottleneck of width w from c channels:
    # c*w + 9 w^2 + 4 w^2 (1x1, 3x3, 1x1) + BN 2 * 6w, + downsample c * 4w + BN 8w in the first block.
    # layer1 (w 64, c 64) 75,008 + 70,400; layer2 (128, 256) 379,392 + 280,064;
    # layer3 (256, 512) 1,512,448 + 1,117,184; layer4 (512, 1024) 6,039,552 + 4,462,592
    expected = 9_536 + 145_408 + 659_456 + 2_629_632 + 10_502_144
    assert expected == 13_946_176
    assert count_parameters(BACKBONES.get("resnet26")()) == expected
    assert count_parameters(BACKBONES.get("resnet26")(dilated=True)) == expected


@pytest.mark.parametrize("dilated, strides", [(False, [4, 4, 8, 16, 32]), (True, [4, 4, 8, 8, 8])])
def test_resnet26_stages(dilated, strides):
    with torch.device("meta"):
        backbone = BACKBONES.get("resnet26")(dilated=dilated)
        y = torch.zeros(1, 3, 64, 96)
        for stage, channels, stride in zip(backbone.stages, backbone.stage_channels, backbone.stage_strides,
                                           strict=True):
            y = stage(y)
            assert tuple(y.shape) == (1, channels, 64 // stride, 96 // stride)
    assert backbone.stage_channels == [64, 256, 512, 1024, 2048]
    assert backbone.stage_strides == strides
    assert [len(stage) for stage in backbone.stages[1:]] == [2, 2, 2, 2]
    assert backbone.low_level_index() == 1


def _survey_nostride_dilate(module, dilate):
    """The survey code's rule (ResnetDilated._nostride_dilate), applied to a torchvision layer."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if m.stride == (2, 2):
                m.stride = (1, 1)
                if m.kernel_size == (3, 3):
                    m.dilation, m.padding = (dilate // 2,) * 2, (dilate // 2,) * 2
            elif m.kernel_size == (3, 3):
                m.dilation, m.padding = (dilate,) * 2, (dilate,) * 2


@pytest.mark.parametrize("name", ["resnet18", "resnet26"])
def test_dilated_resnets_match_the_survey_rule(name):
    """Every conv's stride, dilation and padding as the survey code's ResnetDilated gives them;
    ResNet-18's BasicBlocks are converted here (torchvision refuses to dilate them)."""
    import torchvision
    from torchvision.models.resnet import Bottleneck, ResNet

    ours = BACKBONES.get(name)(dilated=True)
    ref = torchvision.models.resnet18(weights=None) if name == "resnet18" else ResNet(Bottleneck, [2, 2, 2, 2])
    _survey_nostride_dilate(ref.layer3, 2)
    _survey_nostride_dilate(ref.layer4, 4)
    # the first block's strided 3x3 conv of layer3 / layer4 gets 1 / 2, every other 3x3 conv 2 / 4
    strided, other = ("conv1", "conv2") if name == "resnet18" else ("conv2", None)
    assert [getattr(ours.stages[3][0], strided).dilation, getattr(ours.stages[4][0], strided).dilation] == [(1, 1), (2, 2)]
    if other:
        assert [getattr(ours.stages[3][0], other).dilation, getattr(ours.stages[4][0], other).dilation] == [(2, 2), (4, 4)]
    assert [ours.stages[3][1].conv2.dilation, ours.stages[4][1].conv2.dilation] == [(2, 2), (4, 4)]
    for ours_layer, ref_layer in zip(ours.stages[1:], [ref.layer1, ref.layer2, ref.layer3, ref.layer4], strict=True):
        ours_convs = [m for m in ours_layer.modules() if isinstance(m, nn.Conv2d)]
        ref_convs = [m for m in ref_layer.modules() if isinstance(m, nn.Conv2d)]
        assert [(c.stride, c.dilation, c.padding) for c in ours_convs] == \
               [(c.stride, c.dilation, c.padding) for c in ref_convs]
    assert count_parameters(ours) == count_parameters(BACKBONES.get(name)())  # unchanged by dilation


@pytest.mark.parametrize("name", ["resnet18", "resnet26", "resnet50"])
def test_resnets_are_torchvisions_under_a_seed(name):
    """Built from torchvision's ResNet class: the same random weights, in the same order, as
    torchvision's constructors (resnet26: ResNet(Bottleneck, [2, 2, 2, 2]))."""
    import torchvision
    from torchvision.models.resnet import Bottleneck, ResNet

    make_ref = {"resnet18": lambda: torchvision.models.resnet18(weights=None),
                "resnet26": lambda: ResNet(Bottleneck, [2, 2, 2, 2]),
                "resnet50": lambda: torchvision.models.resnet50(weights=None)}[name]
    torch.manual_seed(0)
    ours = BACKBONES.get(name)().state_dict()
    torch.manual_seed(0)
    ref = {k: v for k, v in make_ref().state_dict().items() if not k.startswith("fc.")}
    for (key, value), (ref_key, ref_value) in zip(ours.items(), ref.items(), strict=True):
        assert key.rsplit(".", 1)[-1] == ref_key.rsplit(".", 1)[-1] and torch.equal(value, ref_value), (key, ref_key)


# --------------------------------------------------------------------------- pretrained weights
@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch home; the download function fails the test if it is called."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(url, dst, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch"


def _resnet18_state(seed: int):
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_pretrained_imagenet_served_from_the_hub_cache(torch_home):
    state = _resnet18_state(seed=3)
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / "resnet18-f37072fd.pth")  # ResNet18_Weights.IMAGENET1K_V1's file
    BACKBONES.get("resnet18").prepare({"pretrained": "imagenet"})  # cached: no download
    backbone = BACKBONES.get("resnet18")(pretrained="imagenet")
    assert torch.equal(backbone.stages[0][0].weight, state["conv1.weight"])
    assert torch.equal(backbone.stages[4][1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_prepare_fetches_through_torch_hub(torch_home, monkeypatch):
    state = _resnet18_state(seed=4)
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    BACKBONES.get("resnet18").prepare({"pretrained": "imagenet"})
    assert calls == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd")]
    assert (torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth").is_file()
    backbone = BACKBONES.get("resnet18")(pretrained="imagenet")  # the worker reads the cache
    assert torch.equal(backbone.stages[1][0].conv1.weight, state["layer1.0.conv1.weight"])


def test_prepare_without_internet_fails_with_one_line(torch_home, monkeypatch):
    from urllib.error import URLError

    def offline(url, dst, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ValueError) as err:
        BACKBONES.get("resnet50").prepare({"pretrained": "imagenet", "dilated": True})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("backbone 'resnet50': pretrained: imagenet needs resnet50-0676ba61.pth from "
                              "download.pytorch.org, which could not be fetched (URLError: ")
    assert message.endswith("pass backbone.params.weights_path: /path/to/resnet50-0676ba61.pth")


def test_building_without_the_cached_file_never_downloads(torch_home):
    with pytest.raises(ValueError, match=r"resnet18-f37072fd.pth in the torch hub cache.*weights_path"):
        BACKBONES.get("resnet18")(pretrained="imagenet")
    with torch.device("meta"):  # size counting reads no weights
        BACKBONES.get("resnet50")(pretrained="imagenet")


def test_resnet26_refuses_imagenet_at_params_time():
    with pytest.raises(ConfigError, match="no ImageNet weights for ResNet-26"):
        ResNet26Params(pretrained="imagenet")
    with pytest.raises(ValueError, match=r"backbone 'resnet26'.pretrained: torchvision has no ImageNet weights.*"
                                         r"weights_path"):
        build_model({"seg": task("semseg", "seg", num_classes=2)},
                    ModelRef(backbone=Plugin("resnet26", {"pretrained": "imagenet"})))
    with pytest.raises(ConfigError, match="pretrained"):
        BACKBONES.get("resnet50")(pretrained="imagenet21k")


def test_resnet26_loads_a_local_file(tmp_path, torch_home):
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(5)
    source = ResNet(Bottleneck, [2, 2, 2, 2])
    path = tmp_path / "r26.pt"
    torch.save(source.state_dict(), path)
    BACKBONES.get("resnet26").prepare({"weights_path": str(path)})
    backbone = BACKBONES.get("resnet26")(weights_path=str(path), dilated=True)
    assert torch.equal(backbone.stages[4][1].conv3.weight, source.layer4[1].conv3.weight)
    with pytest.raises(ValueError, match="weights_path .* is not a file"):
        BACKBONES.get("resnet26").prepare({"weights_path": str(tmp_path / "missing.pt")})


def test_weights_path_wins_over_pretrained(tmp_path, torch_home):
    state = _resnet18_state(seed=6)
    torch.save(state, tmp_path / "local.pt")
    params = {"pretrained": "imagenet", "weights_path": str(tmp_path / "local.pt")}
    BACKBONES.get("resnet18").prepare(params)  # no fetch: the local file is the weights
    backbone = BACKBONES.get("resnet18")(**params)
    assert torch.equal(backbone.stages[0][1].weight, state["bn1.weight"])


def test_weights_path_with_missing_and_unexpected_keys(tmp_path):
    state = _resnet18_state(seed=7)
    del state["layer4.1.bn2.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        BACKBONES.get("resnet18")(weights_path=str(path))
    assert "1 missing keys (layer4.1.bn2.weight), 1 unexpected keys (extra.weight)" in str(err.value)
    # many: the first three of each and the counts (BN's num_batches_tracked is not reported missing)
    renamed = {f"module.{k}": v for k, v in _resnet18_state(seed=7).items()}
    torch.save(renamed, path)
    with pytest.raises(ValueError, match=r"backbone 'resnet18': .* 100 missing keys \(conv1.weight, bn1.weight, "
                                         r"bn1.bias, \.\.\.\), 122 unexpected keys \(module.conv1.weight"):
        BACKBONES.get("resnet18")(weights_path=str(path))


def test_weights_path_of_another_depth_or_not_a_state_dict(tmp_path):
    torch.save(_resnet18_state(seed=8), tmp_path / "r18.pt")
    with pytest.raises(ValueError, match=r"backbone 'resnet26': .*r18.pt does not (fit|match)"):
        BACKBONES.get("resnet26")(weights_path=str(tmp_path / "r18.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"could not be read with torch.load\(weights_only=True\)"):
        BACKBONES.get("resnet18")(weights_path=str(tmp_path / "junk.pt"))
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        BACKBONES.get("resnet18")(weights_path=str(tmp_path / "list.pt"))


# --------------------------------------------------------------------------- the new heads in a model
@pytest.mark.parametrize("head", [Plugin("psp", {"channels": 16}), Plugin("taskonomy_fcn"),
                                  Plugin("deeplabv3plus", {"channels": 16, "low_level_channels": 8})])
def test_new_heads_train_one_step_in_a_model(head):
    torch.manual_seed(0)
    tasks = {"seg": task("semseg", "seg", num_classes=3), "depth": task("dense_l1", "depth", channels=1)}
    model = build_model(tasks, ModelRef("mtl_baseline", "resnet18", head))
    out = model(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"seg": (2, 3, 64, 64), "depth": (2, 1, 64, 64)}
    sum(o.square().mean() for o in out.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name

"""ASTMT (Maninis et al., CVPR 2019; survey Sec. 2.4, Table 8): one network run once per task,
modulated by task SE modules, residual adapters and task BatchNorms.

Beyond the registry-wide tests of test_models.py: one encoder pass per task in a training step,
each pass using only its own task's modules (gradients and BN statistics), forward(x, task=t)
== forward(x)[t], the modulation of ResNet-26's Bottlenecks on top of loaded weights, the
parameter split and optimiser groups, and #P / FLOPS of Table 8 on the meta device.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainables  # noqa: F401  (registers every plug-in)
from trainables.architectures.astmt import Adapted, PerTask, SqueezeExcitation
from trainables.build import build_balancer, build_model, build_tasks
from trainables.complexity import count_flops, count_parameters
from trainables.plugins import ConfigError, ModelRef, Plugin
from trainables.steps import training_step

TASK_NAMES = ["semseg", "depth", "normals"]
SMALL_HEAD = Plugin("deeplabv3plus", {"channels": 16, "low_level_channels": 8, "rates": [1, 2, 3]})


def synthetic_tasks():
    return build_tasks(Plugin("synthetic", {"image_size": 32}), TASK_NAMES)


def tiny_astmt(seed=0, **params):
    torch.manual_seed(seed)
    tasks = synthetic_tasks()
    return build_model(tasks, ModelRef(Plugin("astmt", params), "tiny_cnn", SMALL_HEAD)), tasks


def batch(seed=0, b=2, size=32):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(b, 3, size, size, generator=g),
            "targets": {"semseg": torch.randint(0, 7, (b, size, size), generator=g),
                        "depth": torch.rand(b, 1, size, size, generator=g) * 5 + 0.5,
                        "normals": F.normalize(torch.randn(b, 3, size, size, generator=g), dim=1)},
            "mask": {t: torch.ones(b, dtype=torch.bool) for t in TASK_NAMES}}


def perturb_task_modules(model, seed=1):
    """Non-zero adapters and distinct BN statistics, so that the tasks' passes really differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PerTask):
                for sub in m.per_task.values():
                    if isinstance(sub, nn.Conv2d) and sub.kernel_size == (1, 1) and sub.bias is None:
                        sub.weight.copy_(torch.randn(sub.weight.shape, generator=g) * 0.05)
                    if isinstance(sub, nn.BatchNorm2d):
                        sub.running_mean.copy_(torch.randn(sub.num_features, generator=g) * 0.1)
                        sub.running_var.copy_(torch.rand(sub.num_features, generator=g) + 0.5)


# --------------------------------------------------------------------------- single-tasking
def test_training_step_runs_the_encoder_once_per_task_each_pass_with_its_own_modules():
    model, tasks = tiny_astmt()
    passes = []
    model.backbone.stages[0].register_forward_hook(lambda *_: passes.append(model.switch.task))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    losses = training_step(model, build_balancer("fixed", TASK_NAMES), tasks, batch(), opt)
    assert set(losses) == set(TASK_NAMES)
    assert passes == TASK_NAMES  # one encoder pass per task, each serving one task
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("task", TASK_NAMES)
def test_a_task_loss_reaches_only_its_own_task_modules(task):
    model, tasks = tiny_astmt()
    b = batch()
    out = model(b["image"], task=task)
    assert set(out) == {task}
    tasks[task].loss(out[task], b["targets"][task]).backward()
    for other in TASK_NAMES:
        for p in model.task_specific_parameters(other):
            if other == task:
                assert p.grad is not None and torch.isfinite(p.grad).all()
            else:  # B's loss never touches A's SE, adapters, BNs or classifier
                assert p.grad is None
    own_se = [m.per_task[task] for m in model.modules() if isinstance(m, PerTask)
              and isinstance(m.per_task[task], SqueezeExcitation)]
    assert len(own_se) == 6 + 9  # tiny_cnn: 3 stages x 2 blocks after the stem; DeepLab-v3+: 9 units
    assert all(se.fc2.bias.grad.abs().sum() > 0 for se in own_se)
    assert all(p.grad is not None for p in model.shared_parameters())


def test_a_pass_updates_only_its_own_task_batchnorm_statistics():
    model, _ = tiny_astmt()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    model.train()(batch()["image"], task="depth")
    changed = {k for k, v in model.state_dict().items() if "running_mean" in k and not torch.equal(v, before[k])}
    assert changed and all(".per_task.depth." in k or k.startswith("backbone.stages.0.") for k in changed)
    assert any(k.startswith("backbone.stages.0.") for k in changed)  # the stem's BN is shared, as ASTMT's
    assert {k for k in before if ".per_task.depth." in k} <= changed


def test_forward_for_one_task_equals_that_task_of_the_full_forward_in_eval_mode():
    model, _ = tiny_astmt()
    perturb_task_modules(model)
    model.eval()
    x = batch()["image"]
    with torch.no_grad():
        full = model(x)
        for task in TASK_NAMES:
            torch.testing.assert_close(model(x, task=task)[task], full[task], rtol=0, atol=0)
    assert set(full) == set(TASK_NAMES) and full["semseg"].shape == (2, 7, 32, 32)
    with pytest.raises(KeyError, match="unknown task"):
        model(x, task="nope")
    with pytest.raises(RuntimeError, match="outside a task's pass"):
        model.backbone(x)


def test_task_modules_change_the_output():
    """Two tasks with the same output width: identical shared weights and classifiers, yet
    different outputs, because each pass runs its own SE / adapters / BNs."""
    tasks = build_tasks(Plugin("synthetic", {"image_size": 32, "copies": {"depth2": "depth"}}), ["depth", "depth2"])
    torch.manual_seed(0)
    model = build_model(tasks, ModelRef("astmt", "tiny_cnn", SMALL_HEAD))
    classifiers = [m.per_task for m in model.decoder.modules() if isinstance(m, PerTask) and "depth2" in m.per_task]
    last = classifiers[-1]
    last["depth2"].load_state_dict(last["depth"].state_dict())
    perturb_task_modules(model)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert (out["depth"] - out["depth2"]).abs().max() > 1e-3


# --------------------------------------------------------------------------- modulation of ResNet-26
def test_resnet26_bottlenecks_are_modulated_on_top_of_the_loaded_weights(tmp_path):
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(0)
    source = ResNet(Bottleneck, [2, 2, 2, 2])
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path / "resnet26.pt"
    torch.save(source.state_dict(), path)
    state = source.state_dict()
    tasks = {n: t for n, t in synthetic_tasks().items() if n != "normals"}
    backbone = Plugin("resnet26", {"dilated": True, "dilate_scale": 16, "weights_path": str(path)})
    model = build_model(tasks, ModelRef("astmt", backbone, SMALL_HEAD))

    stem, block = model.backbone.stages[0], model.backbone.stages[4][0]  # layer4.0: dilated, with downsample
    assert isinstance(stem[1], nn.BatchNorm2d) and torch.equal(stem[1].running_var, state["bn1.running_var"])
    assert isinstance(block.conv2, Adapted) and torch.equal(block.conv2.conv.weight, state["layer4.0.conv2.weight"])
    assert block.conv2.adapters.per_task["semseg"].weight.abs().sum() == 0  # zero-init: starts as the shared net
    assert torch.equal(block.conv1.weight, state["layer4.0.conv1.weight"])  # 1x1 convs: shared, no adapter
    norm3, se3 = block.bn3  # SE after the last residual BN, before the shortcut sum
    assert isinstance(se3.per_task["depth"], SqueezeExcitation) and se3.per_task["depth"].fc1.out_features == 2048 // 16
    for task in tasks:  # every BN of the block, downsample too, is a copy of the loaded one per task
        assert torch.equal(norm3.per_task[task].running_var, state["layer4.0.bn3.running_var"])
        assert torch.equal(block.bn1.per_task[task].weight, state["layer4.0.bn1.weight"])
        assert torch.equal(block.downsample[1].per_task[task].running_var, state["layer4.0.downsample.1.running_var"])
    assert norm3.per_task["semseg"].weight is not norm3.per_task["depth"].weight

    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out["semseg"].shape == (2, 7, 32, 32) and out["depth"].shape == (2, 1, 32, 32)
    sum(o.square().mean() for o in out.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.last_shared_module() is model.decoder.decoder[1][0].conv  # decoder's last 3x3 conv


# --------------------------------------------------------------------------- parameters
def test_parameter_split_and_optimiser_groups():
    model, _ = tiny_astmt()
    names = {id(p): n for n, p in model.named_parameters()}
    for task in TASK_NAMES:
        own = {names[id(p)] for p in model.task_specific_parameters(task)}
        assert own == {n for n in names.values() if f".per_task.{task}." in n}
    shared = {names[id(p)] for p in model.shared_parameters()}
    assert shared and not any(".per_task." in n for n in shared)
    assert {n for n in shared if n.startswith("backbone.")} == {
        "backbone." + n for n, p in model.backbone.named_parameters() if ".per_task." not in n}
    groups = {g["name"]: g for g in model.param_groups()}
    assert groups["task_specific"]["lr_mult"] == 3.0 and groups["shared"]["lr_mult"] == 1.0  # ASTMT's --lr_tsk -1
    assert sum(len(g["params"]) for g in groups.values()) == len(names)
    other, _ = tiny_astmt(task_lr_mult=1.5)
    assert {g["name"]: g["lr_mult"] for g in other.param_groups()}["task_specific"] == 1.5


def test_switches_remove_their_modules_and_params_are_checked():
    model, _ = tiny_astmt(se_encoder=False, se_decoder=False, adapters_encoder=False, adapters_decoder=False,
                          task_norm=False)
    specific = [m for m in model.modules() if isinstance(m, PerTask)]
    assert len(specific) == 1  # only the final layer is left per task
    with pytest.raises(ConfigError, match="se_reduction"):
        build_model(synthetic_tasks(), ModelRef(Plugin("astmt", {"se_reduction": 0})))
    with pytest.raises(ConfigError, match="task_lr_mult"):
        build_model(synthetic_tasks(), ModelRef(Plugin("astmt", {"task_lr_mult": -1.0})))
    with pytest.raises(ValueError, match="sequential stages"):
        build_model(synthetic_tasks(), ModelRef("astmt", "hrnet18", "conv"))


# --------------------------------------------------------------------------- Table 8 sizes
PASCAL_TASKS = ["semseg", "human_parts", "saliency", "normals", "edge"]
PASCAL_HW = (512, 512)
# Table 8's single-scale setup: ASTMT's DeepLab-v3+ at width 64 on a ResNet-26 at output stride 16
TABLE8 = dict(backbone=Plugin("resnet26", {"dilated": True, "dilate_scale": 16}),
              head=Plugin("deeplabv3plus", {"channels": 64, "low_level_channels": 12, "rates": [6, 12, 18]}))


@pytest.fixture(scope="module")
def table8():
    tasks = build_tasks(Plugin("pascal_context"), PASCAL_TASKS)
    with torch.device("meta"):
        astmt = build_model(tasks, ModelRef("astmt", **TABLE8))
        plain = build_model(tasks, ModelRef(Plugin("astmt", dict(se_encoder=False, se_decoder=False,
                                                                adapters_encoder=False, adapters_decoder=False,
                                                                task_norm=False)), **TABLE8))
    return tasks, astmt, plain


def se_params(c, r=16):
    return c * (c // r) + c // r + (c // r) * c + c


def test_table8_parameters(table8):
    tasks, model, plain = table8
    widths = [64, 128, 256, 512]  # Bottleneck planes of layer1..4, two blocks each, output 4 x planes
    encoder_se = 2 * sum(se_params(4 * w) for w in widths)                                       # 1,400,800
    encoder_adapters = 2 * sum(w * w for w in widths)                                            # 696,320
    encoder_norms = 2 * sum(2 * (w + w + 4 * w) for w in widths) + sum(2 * 4 * w for w in widths)  # 30,720
    # decoder adapters: ASPP 1x1 + three 3x3 (not the pooling branch), projection, skip, two 3x3
    decoder_adapters = 4 * 2048 * 64 + 320 * 64 + 256 * 12 + 76 * 64 + 64 * 64                   # 556,800
    decoder_norms = 2 * (8 * 64 + 12)                                                           # 1,048
    decoder_se = 8 * se_params(64) + (12 + 1 + 12 + 12)  # 12 channels: hidden max(1, 12 // 16) = 1  4,677
    per_task = encoder_se + encoder_adapters + encoder_norms + decoder_adapters + decoder_norms + decoder_se
    assert per_task == 2_690_365
    classifiers = sum(64 * t.out_channels + t.out_channels for t in tasks.values())  # K = 21+7+1+3+1: 2,145
    resnet26, decoder = 13_946_176, 3_906_328  # resnet26 (13.95 M); deeplabv3plus at width 64 (3.91 M)
    shared = resnet26 - encoder_norms + decoder - decoder_norms  # the stem BN stays shared
    assert sum(p.numel() for p in model.shared_parameters()) == shared == 17_820_736
    assert count_parameters(model) == shared + 5 * per_task + classifiers == 31_274_706
    assert count_parameters(model) / 1e6 == pytest.approx(31, abs=0.5)  # survey Table 8: 31 M
    # every modulation off = the survey's MTL baseline layout (shared decoder, a final 1x1 per task):
    # 17.85 M here + SE-ResNet-26's own (shared) SE 1.40 M = 19.25 M, Table 8's "MTL Baseline" 19 M
    assert count_parameters(plain) == resnet26 + decoder + classifiers == 17_854_649
    assert (count_parameters(plain) + encoder_se) / 1e6 == pytest.approx(19, abs=0.3)


def test_table8_flops_are_five_passes(table8):
    _, model, _ = table8
    total = count_flops(model, PASCAL_HW)["macs"]
    x = torch.zeros(1, 3, *PASCAL_HW, device="meta")
    from torch.utils.flop_counter import FlopCounterMode

    per_pass = {}
    model.eval()
    for task in PASCAL_TASKS:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, task=task)
        per_pass[task] = counter.get_total_flops() // 2
    assert total == sum(per_pass.values())  # forward(x) = one full pass per task
    # the passes differ only in their final 1x1 conv: 64 * K MACs per pixel at 128 x 128
    assert per_pass["semseg"] - per_pass["edge"] == 64 * (21 - 1) * 128 * 128
    assert per_pass["edge"] / 1e9 == pytest.approx(26.7, abs=0.05)
    # survey Table 8: ASTMT 132 G = the five passes, 5 x 26.4 G (its MTL baseline, ONE pass of the
    # shared network, is 24 G). Here a pass is 25.0 G unmodulated (the torchvision Bottleneck
    # strides its 3x3 conv, SE-ResNet-26 its first 1x1 conv) + 1.7 G of residual adapters
    # (encoder 0.94 G, decoder 0.76 G) + SE (linear layers on pooled vectors, ~0)
    assert total / 1e9 == pytest.approx(133.65, abs=0.01)
    assert total / 1e9 == pytest.approx(132, rel=0.02)

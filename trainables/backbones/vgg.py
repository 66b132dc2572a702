"""VGG-16 with batch normalisation: Auto-Lambda's multi-domain CIFAR-100 trunk (IAL Table VII).

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015 (configuration D: thirteen 3x3 convolutions in five groups), with a BatchNorm after
every convolution (Ioffe & Szegedy, ICML 2015). IAL (Sec. IV-F, Table VII) trains "a VGG-16
network with standard hard-parameter sharing, where each task has a task-specific prediction
layer" on Multi-CIFAR100, following Auto-Lambda (Liu, James, Davison & Johns, TMLR 2022; its
code's ``MTLVGG16`` in ``create_network.py``), whose trunk is, every "conv" a 3x3 conv with bias,
padding 1, then BN and ReLU:

    group    0          1            2                3                4
    convs    64 64      128 128      256 256 256      512 512 512      512 512 512
    then     max-pool   max-pool     max-pool         max-pool         -        (2x2, stride 2)

i.e. four pools, none after the last group; then global average pooling and one Linear(512, 5)
per task (here the ``linear`` head, which ``build_model`` gives every image-level task).

Stages (the backbone contract): group k is stage k; stage 0 (the stem) is
Sequential(conv block, conv block), stage k >= 1 is Sequential(max-pool of group k - 1, conv
blocks of group k), each conv block Sequential(conv, BN, ReLU), so stage[-1] is the stage's last
conv block. stage_channels [64, 128, 256, 512, 512], stage_strides [1, 2, 4, 8, 16]: a 32 x 32
CIFAR image leaves the trunk as 512 x 2 x 2.

Parameters: conv weights and biases sum_l (9 c_in c_out + c_out) = 14,714,688 plus BN scales and
shifts 2 x (2*64 + 2*128 + 3*256 + 6*512) = 8,448: 14,723,136 in all.

Deviations from Auto-Lambda's code:
    BatchNorm: Auto-Lambda's is "conditional", one BN per task in every layer, picked by the task
        of the batch (its loop feeds one task's batch at a time). Here one BN per layer shared by
        every task - IAL's "standard hard-parameter sharing"; a multi_cifar100 batch mixes tasks,
        so a per-task BN could not be picked per batch anyway.
    initialisation: PyTorch's default, as Auto-Lambda's code (no re-initialisation).

Why not torchvision's ``vgg16_bn``: its ``features`` are these layers plus a fifth max-pool (a
32 x 32 image would leave as 1 x 1, and the head's average pool would become a max pool) and
its constructor re-initialises every layer (Kaiming-normal fan-out, zero biases); without that
pool they are the same layers with the same parameter count (tests compare both).

Hyper-parameters:
    in_channels (int, default 3): channels of the input image.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from trainables.backbones.base import Backbone
from trainables.registry import register_backbone

GROUPS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


@dataclass(frozen=True)
class VGG16Params:
    """Hyper-parameters of ``vgg16`` (see the module docstring)."""

    in_channels: int = 3

    def __post_init__(self) -> None:
        c = self.in_channels
        if not isinstance(c, int) or isinstance(c, bool) or c < 1:
            raise ValueError(f"vgg16: in_channels must be a positive int, got {c!r}")


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register_backbone("vgg16")
class VGG16(Backbone):
    """VGG-16 with BN, four max-pools (Auto-Lambda's CIFAR-100 trunk): 512 channels at stride 16."""

    Params = VGG16Params

    def __init__(self, params=None, **kwargs):
        super().__init__()
        self.params = p = self.resolve_params(params, kwargs)
        stages, cin = [], p.in_channels
        for k, widths in enumerate(GROUPS):
            blocks = [nn.MaxPool2d(2, 2)] if k else []
            for cout in widths:
                blocks.append(_conv_bn_relu(cin, cout))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = [widths[-1] for widths in GROUPS]
        self.stage_strides = [2**k for k in range(len(GROUPS))]

"""ASTMT: one network, run once per task, modulated by task-specific attention and adapters.

Maninis, Radosavovic & Kokkinos, "Attentive Single-Tasking of Multiple Tasks", CVPR 2019
(Fig. 2, Sec. 3); Vandenhende et al., "Multi-Task Learning for Dense Prediction Tasks: A
Survey", TPAMI 2021, Sec. 2.4 and Table 8 ("ASTMT" row). Layout from the public code
(facebookresearch/astmt, ``deeplab_se_resnet_multitask.py``, ``decoders.py``, ``squeeze.py``)
with PASCAL's ``train.sh`` options: ``--seenc --sedec --adapt --trNorm``.

The backbone (``make_backbone()``) and ONE dense head (``make_head``, e.g. DeepLab-v3+: ASPP
and a decoder with the stride-4 skip) form a single network that every task shares. A forward
pass serves one task t; on top of the shared convolutions, t's own modules act:

    encoder, in every block after the stem (ResNet Bottleneck: conv1-bn1-conv2-bn2-conv3-bn3):
        h = conv(x) + A_t(x)      for every conv with kernel > 1 (Bottleneck: conv2): a residual
                                  adapter (Rebuffi et al., NeurIPS 2017) in parallel, a 1x1 conv
                                  with the conv's stride, zero-initialised
        BN_t                      every BatchNorm of the block (downsample too) is t's own copy
        y = SE_t(BN_t(conv3 ...)) after the block's last residual-branch BN, before the sum
                                  with the shortcut (ASTMT's SEBottleneck)
    decoder (the head), every conv-BN-ReLU unit (ASTMT's ``ConvCoupledSE``):
        SE_t(ReLU(BN_t(conv(x) + A_t(x))))
                                  no adapter in the ASPP's image-pooling branch (as ASTMT)
    output: t's own final layer (the head's last conv, one per task with t's channel count)

    SE_t(y) = y * sigmoid(W2 ReLU(W1 avgpool(y) + b1) + b2), W1: C -> C / r, W2: C / r -> C
    (Hu et al., CVPR 2018; ASTMT's ``SELayerMultiTaskDict``), r = ``se_reduction``.

Any single-scale head gets these rules (``conv``, ``aspp``, ``deeplabv3plus``; Table 8 is the
latter at width 64). They are applied to the built backbone and head by module replacement,
after the backbone has loaded any weights (``weights_path``): each ``PerTask`` module reads the
served task from a switch that ``forward`` sets for the pass, so the backbone's and the head's
own forward code runs unchanged (calling them outside a pass is an error).

``forward(x, task=t)`` runs that pass and returns {t: output}; ``forward(x)`` runs one pass per
task (``ArchitectureInfo.forward_per_task``: the training step does the same, one pass per task,
and backpropagates the balanced sum of the losses once). The stem runs once per pass although
its output does not depend on the task (as ASTMT). Image-level tasks (not in ASTMT) are
served by their ``linear`` head on the task's modulated encoder output.

BatchNorm across tasks: ASTMT keeps a BN per task wherever the features are task-modulated -
every BN of the encoder's blocks (``--trNorm`` with tasks makes ``SEBottleneck`` and the
downsampling BNs ``ModuleDict``s per task) and of the decoder (``norm_per_task = sedec``) -
and shares only the stem's BN. Each task therefore keeps its own running statistics and
affine parameters; the copies start from the backbone's (loaded) BN, as ASTMT copies the
ImageNet BN into every task's. ``task_norm: false`` shares every BN instead.

Parameter split: shared = every convolution of the backbone and of the head except its final
layer, and the stem's BN; task t = its SE modules, adapters, BN copies and final layer (and
its ``linear`` head for an image-level task). ``last_shared_module()`` = the last shared conv
(the decoder's last 3x3 conv with DeepLab-v3+; the backbone's last conv with image tasks only).

Size on PASCAL-Context (Table 8: 5 tasks, 512 x 512; ``resnet26`` dilated to output stride 16
+ ``deeplabv3plus`` at ASTMT's width 64: channels 64, low_level_channels 12, rates 6/12/18):
    shared: ResNet-26 13.95 M and the decoder 3.91 M, less their task BNs: 17.82 M; per task:
    encoder SE 1.401 M, encoder adapters 0.696 M, decoder adapters 0.557 M, BN copies and
    decoder SE 0.036 M, final 1x1 conv 65 K -> 31.27 M in all (survey: 31 M).
    MACs: one pass 26.7 G (1.7 G of it residual adapters), forward(x) = five passes 133.7 G
    (survey: 132 G). The survey's column is thus the five passes (ASTMT's own code prints
    "GFLOPS per task", one pass; the survey's single-pass MTL baseline is 24 G).
    With every option off the model is the survey's MTL baseline layout of Table 8 (a shared
    decoder and a final 1x1 conv per task): 17.85 M, + SE-ResNet-26's own shared SE 1.40 M =
    19.25 M (survey: 19 M); it still runs once per task. See tests/trainables/test_astmt.py.

Hyper-parameters:
    se_encoder (bool, default True): task-specific SE in every encoder block (``--seenc``).
    se_decoder (bool, default True): task-specific SE after every decoder unit (``--sedec``).
    adapters_encoder, adapters_decoder (bool, default True): residual adapters (``--adapt``,
        which ASTMT applies to both; the encoder's are 3.5 M of the 31 M).
    task_norm (bool, default True): task-specific BN as above (``--trNorm``; ``--sedec``).
    se_reduction (int > 0, default 16): SE bottleneck ratio r (hidden width max(1, C // r)).
    task_lr_mult (float > 0 or None, default None): learning-rate multiplier of the
        task-specific parameters (``param_groups``); None = the number of tasks, ASTMT's
        ``--lr_tsk -1``: a task-specific parameter sees one task's gradient per batch, the
        shared ones all T.

Deviations from ASTMT (paper and code):
    - No adversarial task discriminator on the gradients (``--dscr fconv``): it needs each task
      loss's gradient w.r.t. the decoder features (``create_graph``) and adds a discriminator
      loss through gradient reversal, i.e. a loss term built from the losses. The step
      (``trainables/steps.py``) computes and balances the task losses outside the model and
      takes no extra loss from it (``Predictions.aux`` adds only task losses of extra
      predictions), so the discriminator would need a new step seam. Not implemented.
    - One update per batch from the balanced losses of all tasks' passes; ASTMT makes one SGD
      step per task pass (``optimizer.step`` inside the task loop).
    - The backbone is ``resnet26`` (torchvision Bottlenecks: stride on the 3x3 conv, no SE of
      its own, layer4's first 3x3 conv undilated at output stride 16) instead of ASTMT's ImageNet SE-ResNet-26 (stride on the first 1x1 conv; its
      ImageNet SE weights copied into every task's SE): the task SEs here start from
      Kaiming-normal weights and zero biases, as ASTMT's ``_initialize_weights`` for a
      network trained from scratch.
    - SE reduction 16 on the decoder's 12-channel skip projection (ASTMT: 4; 50 parameters
      per task).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional

import torch
from torch import Tensor, nn

from trainables.architectures.base import BackboneFactory, HeadFactory, MultiTaskModel, last_weight_layer, params_of
from trainables.heads.aspp import _ImagePooling
from trainables.plugins import ArchitectureInfo
from trainables.registry import register_architecture
from trainables.schema import ConfigError
from trainables.tasks.base import Task


@dataclass(frozen=True)
class ASTMTParams:
    """Hyper-parameters of ``astmt`` (see the module docstring)."""

    se_encoder: bool = True
    se_decoder: bool = True
    adapters_encoder: bool = True
    adapters_decoder: bool = True
    task_norm: bool = True
    se_reduction: int = 16
    task_lr_mult: Optional[float] = None

    def __post_init__(self) -> None:
        r = self.se_reduction
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise ConfigError(f"astmt: se_reduction must be a positive int, got {r!r}")
        m = self.task_lr_mult
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0):
            raise ConfigError(f"astmt: task_lr_mult must be a number > 0 or null (= the number of tasks), got {m!r}")


class TaskSwitch:
    """The task the modulated layers serve during a pass (set by ``ASTMT.forward``, else None)."""

    def __init__(self) -> None:
        self.task: Optional[str] = None


class PerTask(nn.Module):
    """One module per task; a call runs the module of the task being served."""

    def __init__(self, switch: TaskSwitch, modules: Mapping[str, nn.Module]):
        super().__init__()
        self.switch = switch  # shared by every PerTask of one model (not a module: no state)
        self.per_task = nn.ModuleDict(dict(modules))

    def forward(self, x: Tensor) -> Tensor:
        task = self.switch.task
        if task is None:
            raise RuntimeError("astmt: a task-specific layer ran outside a task's pass; call the model itself")
        return self.per_task[task](x)


class SqueezeExcitation(nn.Module):
    """Channel attention (Hu et al., CVPR 2018): x * sigmoid(fc2(relu(fc1(avgpool(x)))))."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1, self.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)
        for fc in (self.fc1, self.fc2):  # ASTMT's _initialize_weights for nn.Linear
            nn.init.kaiming_normal_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class Adapted(nn.Module):
    """A shared conv plus a task-specific residual adapter in parallel: conv(x) + A_t(x), A_t a
    zero-initialised 1x1 conv with the conv's stride (Rebuffi et al.'s parallel adapter)."""

    def __init__(self, conv: nn.Conv2d, switch: TaskSwitch, tasks: List[str]):
        super().__init__()
        k, d, pad = conv.kernel_size, conv.dilation, conv.padding
        if not isinstance(pad, tuple) or any(2 * pad[i] != d[i] * (k[i] - 1) for i in range(2)):
            raise ValueError(f"astmt: a residual adapter needs a 'same'-padded conv (padding = dilation * "
                             f"(kernel - 1) / 2), got kernel {k}, dilation {d}, padding {pad}")
        self.conv = conv
        self.adapters = PerTask(switch, {t: _zero_conv(conv.in_channels, conv.out_channels, conv.stride)
                                         for t in tasks})

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.adapters(x)


def _zero_conv(cin: int, cout: int, stride) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
    nn.init.zeros_(conv.weight)  # ASTMT zero-initialises every adapter: the branch starts silent
    return conv


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent), child, module)


@register_architecture("astmt")
class ASTMT(MultiTaskModel):
    """ASTMT: a shared encoder-decoder run once per task, with task SE, adapters and BN (Maninis et al.)."""

    Params = ASTMTParams
    INFO = ArchitectureInfo(forward_per_task=True, needs_sequential_stages=True)

    def __init__(self, tasks: Mapping[str, Task], make_backbone: BackboneFactory, make_head: HeadFactory,
                 params=None, **kwargs):
        super().__init__(tasks, params, **kwargs)
        self.switch = TaskSwitch()
        self.backbone = make_backbone()  # any weights it loads are in place before the modulation
        b = self.backbone
        low = b.low_level_index()
        low_channels = None if low is None else b.stage_channels[low]
        scale_channels = [b.stage_channels[i] for i in b.scales()]
        self._modulate_encoder()
        dense = [n for n, t in self.tasks.items() if t.kind == "dense"]
        self.decoder: Optional[nn.Module] = None
        if dense:
            self.decoder = make_head(self.tasks[dense[0]], b.out_channels, low_channels, scale_channels)
            self._modulate_decoder(dense, make_head)
        self.image_heads = nn.ModuleDict({n: make_head(t, b.out_channels) for n, t in self.tasks.items()
                                          if t.kind == "image"})
        self.low_level, self.scales = low, b.scales()

    # -- building -------------------------------------------------------------------------
    def _per_task(self, make, tasks: Optional[List[str]] = None) -> PerTask:
        return PerTask(self.switch, {t: make(t) for t in (tasks or self.task_names)})

    def _se(self, channels: int, tasks: Optional[List[str]] = None) -> PerTask:
        return self._per_task(lambda t: SqueezeExcitation(channels, self.params.se_reduction), tasks)

    def _norm(self, bn: nn.BatchNorm2d, tasks: Optional[List[str]] = None) -> nn.Module:
        return self._per_task(lambda t: copy.deepcopy(bn), tasks) if self.params.task_norm else bn

    def _modulate_encoder(self) -> None:
        """Every block of every stage after the stem: adapters, task BNs, SE after its last residual BN."""
        p = self.params
        for stage in list(self.backbone.stages)[1:]:
            for block in stage:
                if isinstance(block, (nn.Conv2d, nn.BatchNorm2d)):
                    raise ValueError(f"{self.label()} modulates the blocks of every stage after the stem; this "
                                     f"backbone's stage holds a bare {type(block).__name__} instead of blocks")
                norms = [n for n, m in block.named_modules() if isinstance(m, nn.BatchNorm2d)]
                residual = [n for n in norms if not n.startswith("downsample")]
                for name, module in list(block.named_modules()):
                    if isinstance(module, nn.BatchNorm2d):
                        new = self._norm(module)
                        if p.se_encoder and residual and name == residual[-1]:
                            new = nn.Sequential(new, self._se(module.num_features))
                        _set(block, name, new)
                    elif isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1 and p.adapters_encoder:
                        _set(block, name, Adapted(module, self.switch, self.task_names))

    def _modulate_decoder(self, dense: List[str], make_head: HeadFactory) -> None:
        """The head's units: SE after each BN's ReLU, task BNs, adapters; its last conv per task."""
        p, head = self.params, self.decoder
        last = last_weight_layer(head)
        if not isinstance(last, nn.Conv2d) or last.out_channels != self.tasks[dense[0]].out_channels:
            raise ValueError(f"{self.label()}: the head's last layer must be the conv that outputs the task "
                             f"({self.tasks[dense[0]].out_channels} channels); got {last}")
        pooled = {id(m) for pool in head.modules() if isinstance(pool, _ImagePooling) for m in pool.modules()}
        if p.se_decoder:  # ASTMT's se_after_relu: SE reads the ReLU's output (after the BN where none follows)
            for parent in list(head.modules()):
                children = list(parent.named_children())
                for i, (child_name, child) in enumerate(children):
                    if isinstance(child, nn.BatchNorm2d):
                        follows = i + 1 < len(children) and isinstance(children[i + 1][1], nn.ReLU)
                        target_name, target = children[i + 1] if follows else (child_name, child)
                        setattr(parent, target_name, nn.Sequential(target, self._se(child.num_features, dense)))
        names = {id(m): n for n, m in head.named_modules()}
        for module in list(head.modules()):
            name = names.get(id(module))
            if module is last:
                def classifier(t: str) -> nn.Conv2d:
                    if t == dense[0]:
                        return last
                    return nn.Conv2d(last.in_channels, self.tasks[t].out_channels, last.kernel_size, last.stride,
                                     last.padding, last.dilation, bias=last.bias is not None)
                _set(head, name, self._per_task(classifier, dense))
            elif isinstance(module, nn.BatchNorm2d) and p.task_norm:
                _set(head, name, self._norm(module, dense))
            elif isinstance(module, nn.Conv2d) and p.adapters_decoder and id(module) not in pooled:
                _set(head, name, Adapted(module, self.switch, dense))

    # -- forward ----------------------------------------------------------------------------
    @contextmanager
    def _serving(self, task: str) -> Iterator[None]:
        self.switch.task = task
        try:
            yield
        finally:
            self.switch.task = None

    def forward(self, x: Tensor, task: Optional[str] = None) -> Dict[str, Tensor]:
        """{task: output} of one pass for ``task``; without it, one pass per task, all outputs."""
        if task is None:
            out: Dict[str, Tensor] = {}
            for name in self.task_names:
                out.update(self.forward(x, task=name))
            return out
        self.check_task(task)
        with self._serving(task):
            features = self.backbone.features(x)
            if self.tasks[task].kind == "image":
                out_t = self.image_heads[task](features[-1])
            elif self.decoder.INFO.multi_scale:
                out_t = self.decoder([features[i] for i in self.scales])
            elif self.decoder.INFO.low_level:
                out_t = self.decoder(features[-1], features[self.low_level])
            else:
                out_t = self.decoder(features[-1])
        return self.resize_outputs({task: out_t}, x.shape[-2:])

    # -- parameter split ----------------------------------------------------------------------
    def task_specific_parameters(self, task: str) -> List[nn.Parameter]:
        self.check_task(task)
        own = [m.per_task[task] for m in self.modules() if isinstance(m, PerTask) and task in m.per_task]
        if task in self.image_heads:
            own.append(self.image_heads[task])
        return params_of(*own)

    def _task_specific_ids(self) -> set:
        return {id(p) for t in self.task_names for p in self.task_specific_parameters(t)}

    def shared_parameters(self) -> List[nn.Parameter]:
        specific = self._task_specific_ids()
        return [p for p in self.parameters() if id(p) not in specific]

    def last_shared_module(self) -> nn.Module:
        specific, last = self._task_specific_ids(), None
        for m in self.modules():
            weight = getattr(m, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.dim() >= 2 and id(weight) not in specific:
                last = m
        return last

    def param_groups(self) -> List[Dict[str, Any]]:
        specific = self._task_specific_ids()
        mult = self.params.task_lr_mult
        return [{"name": "shared", "params": self.shared_parameters(), "lr_mult": 1.0},
                {"name": "task_specific", "params": [p for p in self.parameters() if id(p) in specific],
                 "lr_mult": float(len(self.task_names) if mult is None else mult)}]

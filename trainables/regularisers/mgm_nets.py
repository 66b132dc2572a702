"""MGM's auxiliary networks and losses: embedding layer, refinement network, self-supervision.

Bao, Hebert & Wang, "Generative Modeling for Multi-task Visual Learning", ICML 2022 (MGM),
Sec. 3.2-3.3 (Eq. 2-6, Algorithm 1) and supplementary Sec. A-B; details from the authors' code
(github.com/zpbao/multi-task-oriented_generative_modeling, ``mgm.py``, ``utils.py``,
``resnet_taskonomy.py``). Pure modules, no training loop; the MGM plug-in uses them. The image
generation network (SAGAN G and D, CBN of Eq. 1, hinge losses, instance noise) lives in
``mgm_sagan.py`` and is re-exported here.

``Middle`` - "the additional embedding layer used for joint learning: a simple global averaged
pooling layer followed by a dense layer" (supp. A). As in the code the dense layer is
spectral-normed and followed by BatchNorm1d, so the embedding has the unit scale of the Gaussian
noise z it is added to (G's input is z + Middle(E(x)), Sec. 3.3); BatchNorm1d needs B >= 2 in
training mode.

``RefinementNet`` R (Sec. 3.2, supp. A): the multi-task predictions -> scene-class logits (Eq. 3,
trained with cross-entropy). One encoder per task, "a ResNet-10 ... the feature dimension of each
layer group the same as the multi-task encoder"; the features of all tasks concatenated, a
fully-connected layer of hidden size 128, then the classifier. Here each encoder is a ResNet-10
(He et al.: 7x7 stride-2 conv, 3x3 max-pool, four groups of one basic block at strides 1, 2, 2, 2,
global average pooling) with groups of w, 2w, 4w, 8w channels, w = ``width`` (paper: 48, 96, 192,
360; the code: a 5x5 stem, three groups of 3, 4, 3 blocks at 48, 96, 192, a 4x4 max-pool), then
Linear(T * 8w, hidden), ReLU, Linear(hidden, num_classes) (the code also applies a ReLU to the
logits; not here). Every task has its own encoder with global pooling, so tasks may come at
different spatial sizes. Class-map predictions (the tasks named in ``softmax_tasks``, e.g.
semseg) enter as softmax probabilities over their channels: bounded maps whose scale does not
drift with the logits' during training, comparable between real and synthesised images (the
code feeds raw logits); other tasks enter as predicted.

Self-supervision (Sec. 3.2, Eq. 6, supp. A): SimCLR (Chen et al., ICML 2020).
  * ``ProjectionHead`` E_self: global average pooling, Linear(C, hidden), ReLU, Linear(hidden,
    out_dim) - SimCLR's projection MLP (the code: global pooling and one Linear(C, 64); the paper
    states a 128-d latent; default here 64 as the code);
  * ``nt_xent`` (Eq. 6): with u the 2N L2-normalised latents and s_ij = u_i . u_j / tau (cosine
    similarity), l_i = -log(exp(s_i,p(i)) / sum_{k != i} exp(s_ik)), p(i) the other view of i's
    source, averaged over all 2N anchors; tau = 0.5 (the code's temperature);
  * ``simclr_augment``: one random view per call, the supplementary's five transformations in the
    code's order, drawn independently per sample: (1) random resized crop, area U(``crop_scale``),
    aspect ratio log-uniform in ``crop_ratio`` = [3/4, 4/3], resized back bilinearly; (2) horizontal
    flip, p = 0.5; (3) colour jitter, p = ``jitter_prob`` = 0.5 (supp.; the code 0.8): brightness,
    contrast and saturation factors U(0.2, 1.8), hue shift U(-0.2, 0.2) of a turn (SimCLR's strength
    s = 1, as the code); (4) grayscale, p = 0.2; (5) Gaussian blur, p = 0.5, 3x3 kernel, sigma
    U(0.01, 1.0) (the code's; reflect padding). Images come normalised as (v - mean) / std of [0, 1]
    values v (default mean = std = 0.5: images in [-1, 1], as the generator's tanh output; pass the
    data's mean / std for ImageNet-normalised images); colour operations act on v, clamped to [0, 1]
    after each, and the result is normalised back. All random numbers are drawn in one call on
    ``generator``'s device, so a seed gives the same views on any device.
    Deviations from the code's torchvision pipeline: batched and differentiable w.r.t. the images
    (gradients reach generated images): crop and flip are one bilinear ``grid_sample``; the jitter
    applies its four operations in a fixed order (torchvision draws one per call) and shifts hue
    by a rotation of the chroma plane in YIQ space (torchvision: in HSV); a crop wider or taller
    than the image is clamped to it (torchvision retries, then crops the centre); default crop
    area 0.5-1 (the code: torchvision's 0.08-1).

``ReconstructionDecoder`` / ``reconstruction_loss`` (Sec. 4.3, MGM_recon): the alternative
self-supervised task, the image reconstructed from the encoder's features with a mean-square-error
loss (the paper's choice). No architecture is given; here log2(``upsample``) stages of a 2x2
stride-2 transposed convolution, BatchNorm and ReLU (the Taskonomy decoders' up-steps, halving
channels down to at least 16), then a 3x3 convolution to ``out_channels``; no output activation,
the target being the normalised image.

Feature maps: ``Middle``, ``ProjectionHead`` and ``ReconstructionDecoder`` take the encoder's
output [B, C, h, w] or a sequence of stage outputs, of which they use the last.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.regularisers.mgm_sagan import (ConditionalBatchNorm2d, SAGANDiscriminator, SAGANGenerator,
                                               SelfAttention, hinge_d_loss, hinge_g_loss, instance_noise,
                                               sn_linear)

__all__ = ["ConditionalBatchNorm2d", "SelfAttention", "SAGANGenerator", "SAGANDiscriminator", "hinge_d_loss",
           "hinge_g_loss", "instance_noise", "Middle", "RefinementNet", "ProjectionHead", "nt_xent",
           "simclr_augment", "ReconstructionDecoder", "reconstruction_loss", "last_map"]

Features = Union[Tensor, Sequence[Tensor]]
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luminance, torchvision's grayscale weights
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def last_map(features: Features) -> Tensor:
    """The feature map, or the last of a tuple of maps (a multi-scale encoder's coarsest)."""
    return features if isinstance(features, Tensor) else features[-1]


def _check_int(owner: str, name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"mgm: {owner} {name} must be an int >= {minimum}, got {value!r}")


class Middle(nn.Module):
    """The joint-learning embedding: encoder features -> [B, z_dim] (GAP, SN-linear, BatchNorm1d)."""

    def __init__(self, in_channels: int, z_dim: int) -> None:
        super().__init__()
        _check_int("Middle", "in_channels", in_channels)
        _check_int("Middle", "z_dim", z_dim)
        self.linear = sn_linear(in_channels, z_dim)
        self.bn = nn.BatchNorm1d(z_dim)

    def forward(self, features: Features) -> Tensor:
        return self.bn(self.linear(last_map(features).mean(dim=(2, 3))))


class _BasicBlock(nn.Module):
    """ResNet basic block: conv3-BN-ReLU-conv3-BN plus a (1x1 conv-BN when reshaped) shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity() if stride == 1 and in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(h + self.shortcut(x))


def _resnet10(in_channels: int, width: int) -> nn.Sequential:
    """ResNet-10 trunk with groups of width * (1, 2, 4, 8) channels, globally average-pooled to [B, 8w]."""
    widths = [width, 2 * width, 4 * width, 8 * width]
    layers = [nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
    layers += [_BasicBlock(c_in, c_out, 1 if i == 0 else 2)
               for i, (c_in, c_out) in enumerate(zip([width] + widths[:-1], widths))]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class RefinementNet(nn.Module):
    """R: {task: prediction [B, C_t, H_t, W_t]} -> scene-class logits [B, num_classes].

    Args:
        task_channels: each dense task's prediction channels, in the order features are concatenated.
        num_classes: the number of scene classes.
        width: channels of the first ResNet-10 group (then 2x, 4x, 8x).
        hidden: size of the hidden fully-connected layer (paper: 128).
        softmax_tasks: tasks whose predictions are class logits, fed as softmax probabilities.
    """

    def __init__(self, task_channels: Mapping[str, int], num_classes: int, width: int = 32, hidden: int = 128,
                 softmax_tasks: Sequence[str] = ()) -> None:
        super().__init__()
        if not task_channels:
            raise ValueError("mgm: RefinementNet task_channels is empty; give {task: channels} of every dense task")
        for task, channels in task_channels.items():
            _check_int("RefinementNet", f"task_channels[{task!r}]", channels)
        _check_int("RefinementNet", "num_classes", num_classes)
        _check_int("RefinementNet", "width", width)
        _check_int("RefinementNet", "hidden", hidden)
        unknown = sorted(set(softmax_tasks) - set(task_channels))
        if unknown:
            raise ValueError(f"mgm: RefinementNet softmax_tasks names {unknown}, not in task_channels "
                             f"{list(task_channels)}; name class-map tasks among the refined ones")
        self.task_channels: Dict[str, int] = dict(task_channels)
        self.softmax_tasks = frozenset(softmax_tasks)
        self.encoders = nn.ModuleDict({t: _resnet10(c, width) for t, c in self.task_channels.items()})
        self.classifier = nn.Sequential(nn.Linear(len(self.task_channels) * 8 * width, hidden), nn.ReLU(),
                                        nn.Linear(hidden, num_classes))

    def forward(self, predictions: Mapping[str, Tensor]) -> Tensor:
        if set(predictions) != set(self.task_channels):
            raise ValueError(f"mgm: RefinementNet expects predictions of exactly {list(self.task_channels)}, "
                             f"got {sorted(predictions)}")
        features = []
        for task, encoder in self.encoders.items():
            y = predictions[task]
            if y.dim() != 4 or y.shape[1] != self.task_channels[task]:
                raise ValueError(f"mgm: RefinementNet expects {task!r} as [B, {self.task_channels[task]}, H, W], "
                                 f"got {tuple(y.shape)}")
            features.append(encoder(y.softmax(dim=1) if task in self.softmax_tasks else y))
        return self.classifier(torch.cat(features, dim=1))


class ProjectionHead(nn.Module):
    """E_self: encoder features -> [B, out_dim] (GAP, Linear, ReLU, Linear), SimCLR's projection."""

    def __init__(self, in_channels: int, hidden: int = 128, out_dim: int = 64) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("hidden", hidden), ("out_dim", out_dim)):
            _check_int("ProjectionHead", name, value)
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, features: Features) -> Tensor:
        return self.mlp(last_map(features).mean(dim=(2, 3)))


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """MGM Eq. 6 (SimCLR's NT-Xent), mean over the 2N anchors; z1[i], z2[i] [N, D] the positive pairs."""
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"mgm: nt_xent expects two [N, D] latents of one shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"mgm: nt_xent temperature must be a finite number > 0, got {temperature!r}")
    n = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (u @ u.t() / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=u.device),
                                                   float("-inf"))  # k != i in the denominator
    positives = torch.arange(2 * n, device=u.device).roll(n)  # anchor i's positive: i + N, and i - N
    return F.cross_entropy(logits, positives)


def _blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    """factor * a + (1 - factor) * b clamped to [0, 1] (torchvision's adjust_* blend), factor [B]."""
    f = factor[:, None, None, None]
    return (f * a + (1 - f) * b).clamp(0, 1)


def _gray(v: Tensor) -> Tensor:
    luma = torch.tensor(LUMA, dtype=v.dtype, device=v.device)
    return torch.einsum("c,bchw->bhw", luma, v)[:, None].expand_as(v)


def _hue_matrices(shift: Tensor) -> Tensor:
    """[B, 3, 3] RGB matrices rotating the YIQ chroma plane by ``shift`` [B] turns (luma kept)."""
    to_yiq = torch.tensor(RGB_TO_YIQ, dtype=torch.float64)
    from_yiq = torch.linalg.inv(to_yiq).to(shift)
    cos, sin = torch.cos(2 * math.pi * shift), torch.sin(2 * math.pi * shift)
    one, zero = torch.ones_like(shift), torch.zeros_like(shift)
    rot = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1),
                       torch.stack([zero, sin, cos], -1)], -2)
    return from_yiq @ rot @ to_yiq.to(shift)


def _gaussian_blur3(v: Tensor, sigma: Tensor) -> Tensor:
    """Per-sample 3x3 Gaussian blur (reflect padding), sigma [B]."""
    b, c, h, w = v.shape
    taps = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=v.dtype, device=v.device) / (2 * sigma[:, None] ** 2))
    taps = taps / taps.sum(dim=1, keepdim=True)                        # [B, 3]
    kernel = (taps[:, :, None] * taps[:, None, :]).repeat_interleave(c, dim=0)[:, None]  # [B*C, 1, 3, 3]
    padded = F.pad(v.reshape(1, b * c, h, w), (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, kernel, groups=b * c).view(b, c, h, w)


def simclr_augment(x: Tensor, generator: Optional[torch.Generator] = None, *,
                   mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                   crop_scale: Tuple[float, float] = (0.5, 1.0), crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3),
                   flip_prob: float = 0.5, jitter_prob: float = 0.5, grayscale_prob: float = 0.2,
                   blur_prob: float = 0.5) -> Tensor:
    """One random SimCLR view of each image of x [B, 3, H, W] (see the module docstring).

    Args:
        x: images normalised as (v - mean) / std, v in [0, 1]; the view is normalised the same way.
        generator: the source of randomness (any device; x's device is used for the computation).
        crop_scale: the range of the crop's area, as a fraction of the image's.
        crop_ratio: the range of the crop's aspect ratio (width / height), drawn log-uniformly.
        flip_prob, jitter_prob, grayscale_prob, blur_prob: each transformation's probability.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"mgm: simclr_augment expects images [B, 3, H, W], got {tuple(x.shape)}")
    lo, hi = crop_scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"mgm: simclr_augment crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale!r}")
    if not 0 < crop_ratio[0] <= crop_ratio[1]:
        raise ValueError(f"mgm: simclr_augment crop_ratio must satisfy 0 < low <= high, got {crop_ratio!r}")
    for name, p in (("flip_prob", flip_prob), ("jitter_prob", jitter_prob), ("grayscale_prob", grayscale_prob),
                    ("blur_prob", blur_prob)):
        if not 0 <= p <= 1:
            raise ValueError(f"mgm: simclr_augment {name} must be a probability in [0, 1], got {p!r}")
    b, dev, dt = x.shape[0], x.device, x.dtype
    draw_device = generator.device if generator is not None else dev
    r = torch.rand(b, 13, generator=generator, device=draw_device).to(dev, dt).unbind(dim=1)

    # (1)+(2) crop and flip: output coordinate u in [-1, 1] samples the input at centre + sign * half-size * u
    area = lo + (hi - lo) * r[0]
    log_lo, log_hi = math.log(crop_ratio[0]), math.log(crop_ratio[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * r[1])
    cw, ch = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    cx, cy = (2 * r[2] - 1) * (1 - cw), (2 * r[3] - 1) * (1 - ch)
    sign = torch.where(r[4] < flip_prob, -1.0, 1.0).to(dt)
    zero = torch.zeros_like(cw)
    theta = torch.stack([torch.stack([sign * cw, zero, cx], 1), torch.stack([zero, ch, cy], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    m = torch.tensor(mean, dtype=dt, device=dev)[None, :, None, None]
    s = torch.tensor(std, dtype=dt, device=dev)[None, :, None, None]
    v = out * s + m
    # (3) colour jitter: brightness, contrast, saturation factors in [0.2, 1.8], hue shift in [-0.2, 0.2]
    j = v
    j = _blend(j, torch.zeros_like(j), 0.2 + 1.6 * r[6])
    j = _blend(j, _gray(j).mean(dim=(1, 2, 3), keepdim=True), 0.2 + 1.6 * r[7])
    j = _blend(j, _gray(j), 0.2 + 1.6 * r[8])
    j = torch.einsum("bij,bjhw->bihw", _hue_matrices(0.4 * r[9] - 0.2), j).clamp(0, 1)
    v = torch.where((r[5] < jitter_prob)[:, None, None, None], j, v)
    # (4) grayscale, (5) Gaussian blur
    v = torch.where((r[10] < grayscale_prob)[:, None, None, None], _gray(v), v)
    v = torch.where((r[11] < blur_prob)[:, None, None, None], _gaussian_blur3(v, 0.01 + 0.99 * r[12]), v)
    return (v - m) / s


class ReconstructionDecoder(nn.Module):
    """Encoder features [B, C, h, w] -> image [B, out_channels, h * upsample, w * upsample] (MGM_recon)."""

    def __init__(self, in_channels: int, out_channels: int = 3, *, upsample: int) -> None:
        super().__init__()
        _check_int("ReconstructionDecoder", "in_channels", in_channels)
        _check_int("ReconstructionDecoder", "out_channels", out_channels)
        _check_int("ReconstructionDecoder", "upsample", upsample)
        if upsample & (upsample - 1):
            raise ValueError(f"mgm: ReconstructionDecoder upsample must be a power of 2 (the encoder's output "
                             f"stride), got {upsample!r}")
        layers, c = [], in_channels
        for _ in range(int(math.log2(upsample))):
            c_out = max(c // 2, 16)
            layers += [nn.ConvTranspose2d(c, c_out, 2, stride=2), nn.BatchNorm2d(c_out), nn.ReLU()]
            c = c_out
        layers.append(nn.Conv2d(c, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: Features) -> Tensor:
        return self.net(last_map(features))


def reconstruction_loss(pred: Tensor, image: Tensor) -> Tensor:
    """Mean squared error between the reconstruction and the image (MGM Sec. 4.3)."""
    if pred.shape != image.shape:
        raise ValueError(f"mgm: reconstruction_loss needs pred and image of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(image.shape)}; give ReconstructionDecoder upsample = the encoder's stride")
    return F.mse_loss(pred, image)

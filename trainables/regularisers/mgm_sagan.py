"""MGM's image generation network: a class-conditional SAGAN (generator, discriminator, losses).

Bao, Hebert & Wang, "Generative Modeling for Multi-task Visual Learning", ICML 2022 (MGM),
Sec. 3.2 "Image Generation Network" and Eq. 1, supplementary Sec. A-B; the GAN is the
self-attention GAN of Zhang, Goodfellow, Metaxas & Odena, "Self-Attention Generative Adversarial
Networks", ICML 2019 (SAGAN), Sec. 3-5. The MGM plug-in builds these through
``trainables.regularisers.mgm_nets``, which re-exports every name here.

Pieces:
  * ``ConditionalBatchNorm2d`` (MGM Eq. 1): batch normalisation without its own affine, then a
    per-class scale gamma_c (initialised to 1) and shift beta_c (initialised to 0);
  * ``SelfAttention`` (SAGAN Sec. 3): out = x + gamma * o, gamma a learnable scalar initialised to
    0, o the attention output; query / key 1x1 convolutions to C // 8 channels, value to C // 2 and
    a 1x1 convolution back to C, keys and values 2x2 max-pooled - the layout of SAGAN's released
    code (the paper writes every projection at C / 8 and no pooling); needs C >= 8;
  * ``SAGANGenerator``: z [B, z_dim] -> spectral-normed linear -> [B, 16w', 4, 4], then one
    residual up-block per doubling to the image size (CBN, ReLU, nearest 2x upsampling, 3x3 conv,
    CBN, ReLU, 3x3 conv; shortcut: upsampling and a 1x1 conv), self-attention after the block that
    reaches min(32, S / 2) pixels, then BatchNorm (plain, affine), ReLU, 3x3 conv to RGB and tanh;
  * ``SAGANDiscriminator``: one residual down-block per halving down to 4 x 4 (the first without
    pre-activation), self-attention after the block that reaches min(32, S / 2) pixels, one more
    block at 4 x 4 without downsampling, ReLU, sum over positions, then a spectral-normed linear
    output plus the projection term <embed(c), h> (Miyato & Koyama, ICLR 2018);
  * ``hinge_d_loss`` / ``hinge_g_loss``: SAGAN's hinge adversarial losses (Sec. 4, Eq. 3), also
    MGM's ("we use hinge loss for the adversarial training");
  * ``instance_noise``: x + N(0, std^2), added by the MGM authors' code to the discriminator's real
    and fake inputs (std 0.01).

Channels: with S the image size and w = ``width``, a feature map of r x r pixels has
w * min(16, S / r) channels in G and w * min(16, S / (2r)) in D, so at S = 128 both match SAGAN's
128 x 128 networks with ``g_conv_dim = d_conv_dim = w`` (the MGM code uses w = 64; the default 32
here is sized for a CPU). Every convolution and linear layer of G and D, the attention's included,
is spectral-normalised (SAGAN Sec. 4: "spectral normalization for both generator and
discriminator"; one power iteration per training forward, ``torch.nn.utils.parametrizations``),
and so is D's class embedding (released code); CBN's tables and the final BatchNorm are not.
Convolution and linear weights start Xavier-uniform with zero biases, the class embedding
Xavier-uniform (the SAGAN code MGM cites).

Deviations: the image size S may be 32, 64, 128 or 256 (SAGAN: 128) by adding or removing blocks at
the low-resolution end; BatchNorm keeps PyTorch's momentum 0.1 (the cited code uses 0.001 in CBN
and 0.0001 in G's last BatchNorm).
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

IMAGE_SIZES = (32, 64, 128, 256)
MAX_MULTIPLIER = 16  # SAGAN's widest layers have 16 * conv_dim channels


def _xavier(module: nn.Module) -> nn.Module:
    nn.init.xavier_uniform_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


def sn_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    """A spectral-normed convolution with 'same' padding (Xavier-uniform weights, zero bias)."""
    return spectral_norm(_xavier(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)))


def sn_linear(in_features: int, out_features: int) -> nn.Module:
    """A spectral-normed linear layer (Xavier-uniform weights, zero bias)."""
    return spectral_norm(_xavier(nn.Linear(in_features, out_features)))


def _check_common(owner: str, image_size: int, num_classes: int, width: int) -> int:
    """Validates the shared arguments of G and D; returns the number of resolution doublings."""
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"mgm: {owner} image_size must be one of {IMAGE_SIZES}, got {image_size!r}; "
                         "resize the images (the data's image size) to one of them")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"mgm: {owner} num_classes must be an int >= 1 (the number of scene classes), "
                         f"got {num_classes!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 8:
        raise ValueError(f"mgm: {owner} width must be an int >= 8 (self-attention needs >= 8 channels), "
                         f"got {width!r}")
    return int(math.log2(image_size // 4))


class ConditionalBatchNorm2d(nn.Module):
    """MGM Eq. 1: gamma_c * (f - E[f]) / sqrt(Var[f] + eps) + beta_c, with c each sample's class."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x [B, C, H, W], c LongTensor [B] of class indices."""
        return self.gamma(c)[:, :, None, None] * self.bn(x) + self.beta(c)[:, :, None, None]


class SelfAttention(nn.Module):
    """SAGAN's self-attention block, x + gamma * attention(x), gamma starting at 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 8:
            raise ValueError(f"mgm: SelfAttention channels must be >= 8 (query/key use channels // 8), "
                             f"got {channels!r}; widen the network")
        self.query = sn_conv(channels, channels // 8, 1)
        self.key = sn_conv(channels, channels // 8, 1)
        self.value = sn_conv(channels, channels // 2, 1)
        self.out = sn_conv(channels // 2, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        q = self.query(x).flatten(2)                       # [B, C/8, HW]
        k = F.max_pool2d(self.key(x), 2).flatten(2)        # [B, C/8, HW/4]
        v = F.max_pool2d(self.value(x), 2).flatten(2)      # [B, C/2, HW/4]
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # [B, HW, HW/4]: each position over the pooled ones
        o = (v @ attn.transpose(1, 2)).view(b, -1, h, w)   # [B, C/2, H, W]
        return x + self.gamma * self.out(o)


class _UpBlock(nn.Module):
    """G's residual block: CBN-ReLU-up-conv3-CBN-ReLU-conv3, shortcut up-conv1."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(in_channels, num_classes)
        self.conv1 = sn_conv(in_channels, out_channels, 3)
        self.bn2 = ConditionalBatchNorm2d(out_channels, num_classes)
        self.conv2 = sn_conv(out_channels, out_channels, 3)
        self.shortcut = sn_conv(in_channels, out_channels, 1)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x, c)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), c)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class _DownBlock(nn.Module):
    """D's residual block: [ReLU]-conv3-ReLU-conv3-[avgpool], shortcut conv1 and avgpool.

    The first block (``preactivate=False``) sees the image: no ReLU on its input, and its shortcut
    pools before the 1x1 conv (SAGAN code's "optimised" block); later blocks pool after it.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, preactivate: bool) -> None:
        super().__init__()
        self.conv1 = sn_conv(in_channels, out_channels, 3)
        self.conv2 = sn_conv(out_channels, out_channels, 3)
        self.downsample, self.preactivate = downsample, preactivate
        self.shortcut = sn_conv(in_channels, out_channels, 1) if downsample or in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x) if self.preactivate else x)))
        s = x
        if not self.preactivate and self.downsample:
            s = F.avg_pool2d(s, 2)
        if self.shortcut is not None:
            s = self.shortcut(s)
        if self.downsample:
            h = F.avg_pool2d(h, 2)
            if self.preactivate:
                s = F.avg_pool2d(s, 2)
        return h + s


class SAGANGenerator(nn.Module):
    """Class-conditional SAGAN generator: (z [B, z_dim], c [B]) -> images [B, 3, S, S] in [-1, 1]."""

    def __init__(self, image_size: int, num_classes: int, z_dim: int = 128, width: int = 32) -> None:
        super().__init__()
        n_up = _check_common("SAGANGenerator", image_size, num_classes, width)
        if isinstance(z_dim, bool) or not isinstance(z_dim, int) or z_dim < 1:
            raise ValueError(f"mgm: SAGANGenerator z_dim must be an int >= 1, got {z_dim!r}")
        self.z_dim, self.num_classes = z_dim, num_classes
        res = [4 * 2 ** i for i in range(n_up + 1)]                        # 4, 8, ..., S
        ch = [width * min(MAX_MULTIPLIER, image_size // r) for r in res]    # channels at each resolution
        self.attention_after = res.index(min(32, image_size // 2)) - 1      # index of the block reaching it
        self.linear = sn_linear(z_dim, ch[0] * 4 * 4)
        self.blocks = nn.ModuleList(_UpBlock(ch[i], ch[i + 1], num_classes) for i in range(n_up))
        self.attention = SelfAttention(ch[self.attention_after + 1])
        self.bn = nn.BatchNorm2d(ch[-1])
        self.to_rgb = sn_conv(ch[-1], 3, 3)

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"mgm: SAGANGenerator expects z of shape [B, {self.z_dim}], got {tuple(z.shape)}")
        h = self.linear(z).view(z.shape[0], -1, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, c)
            if i == self.attention_after:
                h = self.attention(h)
        return torch.tanh(self.to_rgb(F.relu(self.bn(h))))


class SAGANDiscriminator(nn.Module):
    """Projection SAGAN discriminator: (images [B, 3, S, S], c [B]) -> logits [B]."""

    def __init__(self, image_size: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        n_down = _check_common("SAGANDiscriminator", image_size, num_classes, width)
        self.image_size = image_size
        res = [image_size // 2 ** (i + 1) for i in range(n_down)]            # S/2, ..., 4
        ch = [width * min(MAX_MULTIPLIER, image_size // (2 * r)) for r in res]
        self.attention_after = res.index(min(32, image_size // 2))
        blocks: List[nn.Module] = [_DownBlock(3, ch[0], downsample=True, preactivate=False)]
        blocks += [_DownBlock(ch[i - 1], ch[i], downsample=True, preactivate=True) for i in range(1, n_down)]
        blocks.append(_DownBlock(ch[-1], ch[-1], downsample=False, preactivate=True))
        self.blocks = nn.ModuleList(blocks)
        self.attention = SelfAttention(ch[self.attention_after])
        self.linear = sn_linear(ch[-1], 1)
        self.embed = spectral_norm(nn.Embedding(num_classes, ch[-1]))
        nn.init.xavier_uniform_(self.embed.parametrizations.weight.original)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(f"mgm: SAGANDiscriminator expects images [B, 3, {self.image_size}, "
                             f"{self.image_size}], got {tuple(x.shape)}")
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.attention_after:
                h = self.attention(h)
        h = F.relu(h).sum(dim=(2, 3))                                        # [B, C]
        return self.linear(h).squeeze(1) + (self.embed(c) * h).sum(dim=1)


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator hinge loss: mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """Generator hinge loss: -mean(D(G(z)))."""
    return -fake_logits.mean()


def instance_noise(x: Tensor, std: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """x + N(0, std^2) noise (x itself when std is 0); ``generator`` may live on another device."""
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"mgm: instance_noise std must be a finite number >= 0, got {std!r}")
    if std == 0:
        return x
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    return x + std * noise

"""MGM's networks and losses (Bao et al., ICML 2022): CBN (Eq. 1) and NT-Xent (Eq. 6) by hand, the
hinge losses, SAGAN G and D (shapes, conditioning, spectral norm, an isolated D step), the
refinement network, the SimCLR augmentation and the reconstruction decoder, all at tiny sizes."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from trainables.regularisers.mgm_nets import (ConditionalBatchNorm2d, Middle, ProjectionHead, ReconstructionDecoder,
                                              RefinementNet, SAGANDiscriminator, SAGANGenerator, SelfAttention,
                                              hinge_d_loss, hinge_g_loss, instance_noise, nt_xent,
                                              reconstruction_loss, simclr_augment)

Z = 16


def test_conditional_batchnorm_by_hand():
    """Eq. 1: batch statistics per channel, then the class's own gamma and beta."""
    cbn = ConditionalBatchNorm2d(num_features=2, num_classes=2)
    assert torch.equal(cbn.gamma.weight, torch.ones(2, 2)) and torch.equal(cbn.beta.weight, torch.zeros(2, 2))
    with torch.no_grad():
        cbn.gamma.weight.copy_(torch.tensor([[2.0, 1.0], [-1.0, 0.5]]))  # rows: classes 0, 1
        cbn.beta.weight.copy_(torch.tensor([[0.5, 0.0], [3.0, -2.0]]))
    # channel 0: values 1, 3 | 5, 7 -> mean 4, biased var 5; channel 1: 0, 0 | 2, 2 -> mean 1, var 1
    x = torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]]],
                      [[[5.0, 7.0]], [[2.0, 2.0]]]])
    out = cbn(x, torch.tensor([1, 0]))  # sample 0 is class 1, sample 1 class 0
    s0, s1 = math.sqrt(5 + 1e-5), math.sqrt(1 + 1e-5)
    expected = torch.tensor([[[[-1 * (-3 / s0) + 3, -1 * (-1 / s0) + 3]], [[0.5 * (-1 / s1) - 2] * 2]],
                             [[[2 * (1 / s0) + 0.5, 2 * (3 / s0) + 0.5]], [[1 * (1 / s1) + 0.0] * 2]]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_nt_xent_by_hand():
    """Eq. 6 with cosine similarity, tau = 0.5: anchors a, b (view 1) and c, d (view 2); pairs (a, c), (b, d)."""
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])    # a = (1, 0), b = (0, 1) after normalising
    z2 = torch.tensor([[3.0, 3.0], [-1.0, 0.0]])   # c = (1, 1)/sqrt(2), d = (-1, 0)
    tau, r = 0.5, 1 / math.sqrt(2)

    def e(cos: float) -> float:
        return math.exp(cos / tau)

    # cos: ab 0, ac r, ad -1, bc r, bd 0, cd -r
    l_a = -math.log(e(r) / (e(0) + e(r) + e(-1)))
    l_b = -math.log(e(0) / (e(0) + e(r) + e(0)))
    l_c = -math.log(e(r) / (e(r) + e(r) + e(-r)))
    l_d = -math.log(e(0) / (e(-1) + e(0) + e(-r)))
    expected = (l_a + l_b + l_c + l_d) / 4
    assert nt_xent(z1, z2, temperature=tau).item() == pytest.approx(expected, abs=1e-6)
    assert nt_xent(z2, z1, tau).item() == pytest.approx(expected, abs=1e-6)          # symmetric in the views
    assert nt_xent(5 * z1, z2, tau).item() == pytest.approx(expected, abs=1e-6)      # cosine: scale-free


def test_nt_xent_decreases_as_positives_align():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 8, generator=g)
    z2 = z1 + 0.3 * torch.randn(6, 8, generator=g)
    # the same 2N vectors, paired with their near copies vs with another sample's
    assert nt_xent(z1, z2).item() < nt_xent(z1, z2.roll(1, dims=0)).item() - 1.0
    # gradient steps on the loss pull every positive pair together
    w = torch.randn(6, 8, generator=g).requires_grad_()
    cos_before = F.cosine_similarity(w, z2).detach()
    losses = []
    for _ in range(20):
        loss = nt_xent(w, z2)
        losses.append(loss.item())
        (grad,) = torch.autograd.grad(loss, w)
        w = (w - 0.5 * grad).detach().requires_grad_()
    assert losses[-1] < losses[0] - 0.5 and (F.cosine_similarity(w, z2) > cos_before).all()
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z1, z1, temperature=0.0)


def test_hinge_losses_and_instance_noise():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = 0, 0.5, 2 -> 2.5 / 3; relu(1 + fake) = 0, 1, 2 -> 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(2.5 / 3 + 1.0)
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)
    x = torch.zeros(4, 3, 16, 16)
    assert instance_noise(x, 0.0) is x
    a = instance_noise(x, 0.01, torch.Generator().manual_seed(3))
    assert torch.equal(a, instance_noise(x, 0.01, torch.Generator().manual_seed(3)))
    assert a.std().item() == pytest.approx(0.01, rel=0.1)
    with pytest.raises(ValueError, match="std"):
        instance_noise(x, -1.0)


def _perturb_class_tables(module: nn.Module, seed: int) -> None:
    """Gives every class its own CBN scale and shift (at initialisation all classes share 1 and 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, ConditionalBatchNorm2d):
                m.gamma.weight.copy_(1 + 0.3 * torch.randn(m.gamma.weight.shape, generator=g))
                m.beta.weight.copy_(0.3 * torch.randn(m.beta.weight.shape, generator=g))


@pytest.mark.parametrize("size", [32, 64])
def test_generator_and_discriminator_shapes_and_conditioning(size):
    torch.manual_seed(0)
    G, D = SAGANGenerator(size, num_classes=3, z_dim=Z, width=8), SAGANDiscriminator(size, num_classes=3, width=8)
    z = torch.randn(2, Z)
    c0, c1 = torch.tensor([0, 0]), torch.tensor([1, 1])
    x = G(z, c0)
    assert x.shape == (2, 3, size, size) and x.abs().max() <= 1
    logits = D(x, c0)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    assert not torch.allclose(D(x, c0), D(x, c1))                    # projection term: class-dependent
    G.eval()  # fixed statistics and spectral norms: two calls differ only by their inputs
    torch.testing.assert_close(G(z, c1), G(z, c0))                    # identity CBN at init: no class effect yet
    _perturb_class_tables(G, seed=1)
    assert (G(z, c0) - G(z, c1)).abs().max() > 1e-3                   # same z, another class -> another image


def test_attention_starts_as_identity_and_spectral_norm_holds():
    torch.manual_seed(0)
    attn = SelfAttention(16)
    x = torch.randn(2, 16, 8, 8)
    assert attn.gamma.item() == 0 and torch.equal(attn(x), x)
    D = SAGANDiscriminator(32, num_classes=3, width=8)
    G = SAGANGenerator(32, num_classes=3, z_dim=Z, width=8)
    layers = [m for net in (G, D) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)
    x, c = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    with torch.no_grad():
        for _ in range(5):  # one power iteration per training-mode forward
            D(x, c)
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    sigmas = [torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item() for m in convs]
    assert len(convs) >= 10 and all(0.98 < s < 1.05 for s in sigmas), sigmas


def test_one_discriminator_step_changes_only_discriminator():
    torch.manual_seed(0)
    G, D = SAGANGenerator(32, num_classes=3, z_dim=Z, width=8), SAGANDiscriminator(32, num_classes=3, width=8)
    real, c = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([0, 1])
    g_before = {k: v.clone() for k, v in G.named_parameters()}
    d_before = {k: v.clone() for k, v in D.named_parameters()}
    opt = torch.optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.9))
    fake = G(torch.randn(2, Z), c).detach()
    loss = hinge_d_loss(D(instance_noise(real, 0.01), c), D(instance_noise(fake, 0.01), c))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(torch.equal(v, g_before[k]) for k, v in G.named_parameters())
    assert all(p.grad is None for p in G.parameters())
    changed = {k for k, v in D.named_parameters() if not torch.equal(v, d_before[k])}
    # every D tensor moved (the class embedding in its used rows) except the attention's projections,
    # which get no gradient while gamma = 0, and the output bias, whose hinge gradient
    # (#{fake > -1} - #{real < 1}) / B is 0 while every logit is inside the margins
    still = {k for k in d_before if k.startswith("attention.") and k != "attention.gamma"} | {"linear.bias"}
    assert len(still) == 9 and changed == set(d_before) - still


def test_refinement_net_mixed_sizes_gradients_and_softmax():
    torch.manual_seed(0)
    channels = {"semseg": 5, "depth": 1, "normals": 3}
    R = RefinementNet(channels, num_classes=4, width=4, hidden=8, softmax_tasks=["semseg"])
    preds = {"semseg": torch.randn(2, 5, 32, 32, requires_grad=True),
             "depth": torch.randn(2, 1, 16, 16, requires_grad=True),
             "normals": torch.randn(2, 3, 8, 12, requires_grad=True)}
    logits = R(preds)
    assert logits.shape == (2, 4)
    F.cross_entropy(logits, torch.tensor([1, 3])).backward()
    for task, y in preds.items():
        assert y.grad is not None and y.grad.abs().sum() > 0, task
    # semseg enters as probabilities: a per-pixel constant added to its logits changes nothing
    shifted = dict(preds, semseg=preds["semseg"] + 7 * torch.rand(2, 1, 32, 32))
    torch.testing.assert_close(R(shifted), R(preds))
    with pytest.raises(ValueError, match="exactly"):
        R({"semseg": preds["semseg"], "depth": preds["depth"]})
    with pytest.raises(ValueError, match="softmax_tasks"):
        RefinementNet(channels, num_classes=4, softmax_tasks=["edge"])


def test_embedding_and_projection_heads():
    torch.manual_seed(0)
    feats = (torch.randn(3, 4, 8, 8), torch.randn(3, 12, 2, 2))  # stages: the last is used
    middle, head = Middle(12, Z), ProjectionHead(12, hidden=8, out_dim=5)
    z = middle(feats)
    assert z.shape == (3, Z)  # BatchNorm1d: the unit scale of the noise z it is added to
    torch.testing.assert_close(z.mean(0), torch.zeros(Z), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(Z), atol=1e-2, rtol=0)  # up to eps
    middle.eval()  # fixed statistics and spectral norm
    assert torch.equal(middle(feats), middle(feats[-1]))
    assert head(feats).shape == (3, 5) and torch.equal(head(feats), head(feats[-1]))


def test_simclr_augment():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 3, 32, 32, generator=g) * 2 - 1).requires_grad_()
    a = simclr_augment(x, torch.Generator().manual_seed(1))
    b = simclr_augment(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and (a - b).abs().max() > 0.1
    assert a.min() >= -1 - 1e-5 and a.max() <= 1 + 1e-5
    torch.testing.assert_close(a, simclr_augment(x, torch.Generator().manual_seed(1)), rtol=0, atol=0)
    (a * torch.randn_like(a)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the geometry by hand: a full-size square crop and nothing else is the identity; a certain flip mirrors
    x0 = x.detach()
    off = dict(flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, crop_scale=(1.0, 1.0),
               crop_ratio=(1.0, 1.0))
    torch.testing.assert_close(simclr_augment(x0, None, **off), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(simclr_augment(x0, None, **dict(off, flip_prob=1.0)), x0.flip(-1), atol=1e-5, rtol=0)
    # a quarter-area square crop is a 2x zoom: a horizontal ramp keeps its shape at half the slope
    ramp = torch.linspace(-1, 1, 32).expand(2, 3, 32, 32)
    zoom = simclr_augment(ramp, torch.Generator().manual_seed(4), **dict(off, crop_scale=(0.25, 0.25)))
    torch.testing.assert_close(zoom.diff(dim=-1), torch.full((2, 3, 32, 31), 1 / 31), atol=1e-5, rtol=0)
    gray = simclr_augment(x0, None, **dict(off, grayscale_prob=1.0))
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-6) and torch.allclose(gray[:, 1], gray[:, 2], atol=1e-6)


def test_reconstruction_decoder_and_loss():
    torch.manual_seed(0)
    image = torch.randn(2, 3, 32, 32)
    dec = ReconstructionDecoder(24, out_channels=3, upsample=8)
    pred = dec([torch.randn(2, 8, 16, 16), torch.randn(2, 24, 4, 4)])
    assert pred.shape == image.shape
    assert reconstruction_loss(torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 2.0)).item() == 4.0  # MSE
    with pytest.raises(ValueError, match="upsample"):
        reconstruction_loss(pred[:, :, :16], image)
    with pytest.raises(ValueError, match="power of 2"):
        ReconstructionDecoder(24, upsample=6)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="image_size"):
        SAGANGenerator(48, num_classes=3)
    with pytest.raises(ValueError, match="width"):
        SAGANDiscriminator(32, num_classes=3, width=4)

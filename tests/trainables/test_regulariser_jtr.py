"""JTR (Nishi et al., CVPR 2024): the joint-task tensors of Eq. 4 by hand, Eq. 5's terms and their
gradient routing, the Sec. 4.4 variant, refusals, and a training step on a real tiny model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import trainables  # noqa: F401  (registers every plug-in)
from trainables.build import build_balancer, build_model, build_regularisers, build_tasks
from trainables.plugins import ModelRef, Plugin, RunContext
from trainables.registry import REGULARISERS, TASKS
from trainables.regularisers import jtr
from trainables.session import Session
from trainables.steps import training_step

NAMES = ["semseg", "depth", "normals"]
MU, SIGMA = 2.3618, 1.5876  # the code's depth statistics (code/utils/process.py)


def phi(d: float) -> float:
    return 0.5 * (1 + math.erf((d - MU) / (SIGMA * math.sqrt(2))))


def make(tasks=None, **params):
    tasks = tasks or build_tasks(Plugin("synthetic"), NAMES)  # semseg with 7 classes, ignore 255
    return build_regularisers([Plugin("jtr", {"widths": (4, 8), **params})], tasks)[0]


@pytest.fixture
def no_noise(monkeypatch):
    monkeypatch.setattr(jtr, "_gumbel_noise", torch.zeros_like)


def outputs(b=3, size=16, seed=0, classes=7):
    g = torch.Generator().manual_seed(seed)
    return {"semseg": torch.randn(b, classes, size, size, generator=g).requires_grad_(),
            "depth": (4 * torch.rand(b, 1, size, size, generator=g)).requires_grad_(),
            "normals": torch.randn(b, 3, size, size, generator=g).requires_grad_()}


def batch_for(mask, b=3, size=16, seed=1, classes=7):
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, classes, (b, size, size), generator=g)
    seg[:, 0, :3] = 255
    depth = 0.5 + 4 * torch.rand(b, 1, size, size, generator=g)
    depth[:, :, 1, :2] = 0.0
    normals = F.normalize(torch.randn(b, 3, size, size, generator=g), dim=1)
    return {"targets": {"semseg": seg, "depth": depth, "normals": normals},
            "mask": {t: torch.tensor(rows, dtype=torch.bool) for t, rows in mask.items()}}


PARTIAL = {"semseg": [1, 0, 0], "depth": [0, 1, 0], "normals": [0, 0, 0]}  # normals: no label at all


def test_preprocessing_by_hand(no_noise):
    """Eq. 4 with the code's mappings: one-hot (straight-through), Phi((d - mu) / sigma), (n + 1) / 2;
    a pixel without a valid label of a labelled task is blanked in every task of its sample."""
    tasks = {"semseg": TASKS.get("semseg")("semseg", num_classes=3), "depth": TASKS.get("depth")("depth"),
             "normals": TASKS.get("normals")("normals")}
    reg = make(tasks)
    seg = torch.tensor([[[[2.0, 0.0]], [[1.0, 3.0]], [[0.0, 1.0]]],
                        [[[0.0, 1.0]], [[0.5, 0.0]], [[2.0, 0.0]]]]).requires_grad_()  # [2, 3, 1, 2]
    view = {"semseg": seg, "depth": torch.tensor([[[[1.0, 2.0]]], [[[3.0, 0.5]]]]),
            "normals": torch.tensor([[[[0.0, 3.0]], [[0.0, 4.0]], [[2.0, 0.0]]]] * 2)}
    batch = {"targets": {"semseg": torch.tensor([[[2, 255]], [[0, 0]]]), "depth": torch.tensor([[[[1.5, 3.0]]]] * 2),
                         "normals": torch.zeros(2, 3, 1, 2)},
             "mask": {"semseg": torch.tensor([True, False]), "depth": torch.tensor([True, False]),
                      "normals": torch.tensor([False, False])}}
    j = reg.joint(view, batch)
    # sample 0: pixel 1's segmentation label is ignored -> pixel 1 blanked everywhere
    torch.testing.assert_close(j.mask[:, 0, 0], torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    seg_hard = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]],  # argmax 0 | blanked
                             [[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]])  # argmax 2 | 0
    torch.testing.assert_close(j.pred_hard[:, :3, 0], seg_hard)
    torch.testing.assert_close(j.pred_soft[:, :3, 0], seg.detach().softmax(1)[:, :, 0] * j.mask[:, :, 0])
    depth = torch.tensor([[phi(1.0), phi(0.0)], [phi(3.0), phi(0.5)]])
    torch.testing.assert_close(j.pred_hard[:, 3, 0], depth)
    normals = torch.tensor([[[0.5, 0.5], [0.5, 0.5], [1.0, 0.5]],  # (0,0,1) | blanked
                            [[0.5, 0.8], [0.5, 0.9], [1.0, 0.5]]])  # (0,0,1) | (0.6,0.8,0)
    torch.testing.assert_close(j.pred_hard[:, 4:, 0], normals)
    # Y: sample 0's labels (one-hot of class 2, Phi(1.5); pixel 1 blanked), predictions elsewhere
    expected_target = torch.cat([seg_hard, depth[:, None], normals], 1)
    expected_target[0, :3, 0] = torch.tensor([0.0, 0.0, 1.0])
    expected_target[0, 3, 0] = phi(1.5)
    torch.testing.assert_close(j.target[:, :, 0], expected_target)
    # straight-through: forward one-hot, backward the softmax's Jacobian; sample 0 (labelled) gets none
    w = torch.randn(2, 3, 1, 2)
    got, = torch.autograd.grad((j.pred_hard[:, :3] * w).sum(), seg)
    want, = torch.autograd.grad((seg.softmax(1) * w).sum(), seg)
    torch.testing.assert_close(got[1], want[1])
    assert got[0].abs().sum() == 0


def test_gumbel_hard_samples_the_softmax():
    """Forward exactly one-hot; with equal logits the Gumbel draw picks each class about evenly."""
    torch.manual_seed(0)
    out = jtr.gumbel_hard(torch.zeros(1, 2, 64, 64), tau=1.0)
    assert torch.equal(out.sum(1), torch.ones(1, 64, 64)) and set(out.unique().tolist()) == {0.0, 1.0}
    assert 0.4 < float(out[:, 0].mean()) < 0.6


def test_dist_reaches_only_the_unlabelled_predictions_and_not_the_auto_encoder():
    reg = make()
    out = outputs()
    reg.terms([out], batch_for(PARTIAL))["jtr/dist"].backward()
    per_row = {t: out[t].grad.flatten(1).abs().sum(1) for t in NAMES}
    for t, rows in PARTIAL.items():
        for i, is_labelled in enumerate(rows):
            assert (per_row[t][i] == 0) == bool(is_labelled), (t, i)
    assert all(p.grad is None for p in reg.ae.parameters())  # the code's frozen copy of g1


def test_auto_encoder_terms_train_the_auto_encoder_only():
    """Recon and the auto-encoder's Dist see <Y^> and <Y>: no gradient into the predictions."""
    reg = make()
    out = outputs()
    terms = reg.terms([out], batch_for(PARTIAL))
    terms["jtr/dist_ae"].backward(retain_graph=True)
    assert all(o.grad is None for o in out.values())
    assert all(p.grad is not None for p in reg.ae.down.parameters())
    assert all(p.grad is None for p in list(reg.ae.up.parameters()) + list(reg.ae.head.parameters()))
    reg.zero_grad(set_to_none=True)
    terms["jtr/recon"].backward()
    assert all(o.grad is None for o in out.values())
    grads = [p.grad for p in reg.ae.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in (reg.ae.down[0][0][0].weight.grad, reg.ae.head[1].weight.grad))


def test_terms_follow_eq5_with_the_code_weights(no_noise):
    """dist = 4 (1 - cos(g1(Y^), g1(Y))), dist_ae = 4 * 2 (1 - cos) on the detached inputs (soft Y^),
    recon = 2 (Recon(g(<Y^>), <Y^>) + Recon(g(<Y>), <Y>)); cos over channels, mean over positions."""
    reg = make()
    out, batch = outputs(), batch_for(PARTIAL)
    terms = reg.terms([out], batch)
    j = reg.joint(out, batch)
    cos = lambda a, b: F.cosine_similarity(a, b, dim=1, eps=1e-12).mean()  # noqa: E731
    with torch.no_grad():
        latent = lambda x: reg.ae(x, encode_only=True)  # noqa: E731
        torch.testing.assert_close(terms["jtr/dist"], 4 * (1 - cos(latent(j.pred_hard), latent(j.target))))
        (za, ra), (zb, rb) = reg.ae(j.pred_soft), reg.ae(j.target)
        torch.testing.assert_close(terms["jtr/dist_ae"], 8 * (1 - cos(za, zb)))
        torch.testing.assert_close(terms["jtr/recon"], 2 * (reg._recon(ra, j.pred_soft, j.mask)
                                                            + reg._recon(rb, j.target, j.mask)))


def test_reconstruction_losses_by_hand():
    """Per sample over its valid pixels: semseg BCE summed over classes, depth L1 of the squashed
    sigmoid against Phi(d), normals 1 - sum cos / (3 n_valid) (the code's divisor)."""
    tasks = {"semseg": TASKS.get("semseg")("semseg", num_classes=3), "depth": TASKS.get("depth")("depth"),
             "normals": TASKS.get("normals")("normals")}
    reg = make(tasks)
    m = torch.tensor([[[[1.0, 1.0, 0.0]]]])  # 2 valid pixels of 3
    r = torch.zeros(1, 7, 1, 3)
    r[:, 6] = 5.0  # reconstructed normal (0, 0, 1) everywhere (x, y logits 0)
    x = torch.zeros(1, 7, 1, 3)
    x[:, 0] = 1.0  # one-hot class 0
    x[:, 3] = phi(MU + 0.0) + 0.25  # 0.75 -> |0.5 - 0.75| = 0.25
    x[:, 4:] = torch.tensor([0.5, 0.5, 1.0])[:, None, None]  # target normal (0, 0, 1): cos 1
    got = reg._recon(r, x, m)
    seg = 3 * math.log(2)  # BCE(0, t) = log 2 per class, summed over 3 classes, mean over valid pixels
    depth = 0.25
    normals = 1 - 2 / (3 * 2)
    torch.testing.assert_close(got, torch.tensor(seg + depth + normals))


def test_all_labelled_batch_gives_finite_terms_and_a_gradient_free_dist():
    """Every task labelled: Y^ is all detached, so Dist has a (non-zero) value but no gradient,
    as in the code; the auto-encoder still trains."""
    reg = make()
    out = outputs()
    terms = reg.terms([out], batch_for({t: [1, 1, 1] for t in NAMES}))
    assert all(torch.isfinite(v) for v in terms.values())
    assert float(terms["jtr/dist"].detach()) > 0
    sum(terms.values()).backward()
    assert all(o.grad is None or o.grad.abs().sum() == 0 for o in out.values())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in reg.ae.parameters())


def test_param_groups_and_views():
    reg = make(ae_lr_mult=0.5)
    (group,) = reg.param_groups()
    assert group["lr_mult"] == 0.5 and {id(p) for p in group["params"]} == {id(p) for p in reg.parameters()}
    assert len(group["params"]) > 0
    assert reg.info.views == 1
    assert REGULARISERS.get("jtr").info_for(jtr.JTRParams(unlabelled_consistency=True)).views == 2


def test_sec_4_4_consistency_for_samples_without_any_label(no_noise):
    """|T_x| = 0: Dist compares g1 of the second view's Y^ with g1 of the training image's Y."""
    reg = make(unlabelled_consistency=True)
    assert reg.info.views == 2
    mask = {"semseg": [1, 0, 0], "depth": [0, 1, 0], "normals": [0, 0, 0]}  # sample 2: nothing labelled
    v0, v1 = outputs(seed=0), outputs(seed=5)
    reg.terms([v0, v1], batch_for(mask))["jtr/dist"].backward()
    for t in NAMES:
        rows = v1[t].grad.flatten(1).abs().sum(1)
        assert rows[:2].sum() == 0 and rows[2] > 0, t  # view 1 enters for sample 2 only
        assert v0[t].grad[2].abs().sum() > 0  # ... against the training image's Y
    # a sample with a label keeps Eq. 5: with view 1 = view 0 the variant equals plain JTR
    plain = make()
    plain.load_state_dict(reg.state_dict())
    same = {t: v0[t].detach() for t in NAMES}
    torch.testing.assert_close(reg.terms([same, same], batch_for(mask))["jtr/dist"],
                               plain.terms([same], batch_for(mask))["jtr/dist"])


def test_supports_edge_saliency_taskonomy_and_parts_maps():
    names = {"human_parts": 7, "edge": 1, "saliency": 1, "dense_l1": 1, "keypoints": 1}
    tasks = {n: TASKS.get(n)(n) for n in names}
    reg = make(tasks)
    g = torch.Generator().manual_seed(0)
    out = {n: torch.randn(2, c, 16, 16, generator=g).requires_grad_() for n, c in names.items()}
    targets = {"human_parts": torch.randint(0, 7, (2, 16, 16), generator=g),
               "edge": (torch.rand(2, 1, 16, 16, generator=g) > 0.8).float(),
               "saliency": (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float(),
               "dense_l1": torch.rand(2, 1, 16, 16, generator=g),
               "keypoints": torch.full((2, 1, 16, 16), float("nan"))}
    mask = {n: torch.tensor([i % 2 == 0, False]) for i, n in enumerate(names)}
    terms = reg.terms([out], {"targets": targets, "mask": mask})
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert all(torch.isfinite(o.grad).all() and o.grad[1].abs().sum() > 0 for o in out.values())


def test_refusals():
    with pytest.raises(ValueError, match=r"jtr: task 'scene' \(Scene\) has no joint-task encoding"):
        make({"semseg": TASKS.get("semseg")("semseg", num_classes=3),
              "scene": TASKS.get("scene")("scene", num_classes=3)})
    with pytest.raises(ValueError, match=r"'instance_center'"):
        make({"instance_center": TASKS.get("instance_center")("instance_center")})
    with pytest.raises(ValueError, match="5 pooling levels need maps of at least 32 pixels"):
        make(widths=(4, 4, 4, 4, 4)).terms([outputs()], batch_for(PARTIAL))
    for bad in ({"c_dist": -1.0}, {"widths": ()}, {"tau": 0.0}, {"unlabelled_consistency": 1}):
        with pytest.raises(ValueError, match="jtr: "):
            jtr.JTRParams(**bad)


@pytest.mark.parametrize("balancer", ["fixed", "pcgrad"])
def test_training_step_on_a_tiny_model(balancer):
    """A partially labelled batch (normals: no label at all) through ``training_step``: finite terms
    and gradients, the normals head trained by JTR alone, the auto-encoder trained too."""
    torch.manual_seed(0)
    tasks = build_tasks(Plugin("synthetic"), NAMES)
    model = build_model(tasks, ModelRef(architecture=Plugin("mtl_baseline"), backbone=Plugin("tiny_cnn"),
                                        head=Plugin("conv")))
    bal = build_balancer(Plugin(balancer), NAMES, RunContext(seed=0))
    reg = make(tasks, widths=(4, 8, 8))
    mask = {"semseg": [1, 1, 0, 0], "depth": [0, 1, 1, 0], "normals": [0, 0, 0, 0]}
    batch = {**batch_for(mask, b=4, size=32), "image": torch.randn(4, 3, 32, 32)}
    groups = [{"params": list(model.parameters())}] + [{"params": g["params"], "lr": 0.01 * g["lr_mult"]}
                                                       for g in reg.param_groups()]
    opt = torch.optim.SGD(groups, lr=0.01)
    before = [p.detach().clone() for p in reg.ae.parameters()]
    report = training_step(model, bal, tasks, batch, opt, Session(), [reg])
    assert "normals" not in report and {"semseg", "depth"} <= set(report)
    assert all(math.isfinite(report[f"reg/jtr/{k}"]) for k in ("dist", "dist_ae", "recon"))
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads["normals"].parameters())
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, reg.ae.parameters()))

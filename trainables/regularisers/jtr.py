"""JTR: all tasks' predictions and labels encoded jointly by one auto-encoder, compared in its latent space.

Nishi, Kim, Li & Pfister, "Joint-Task Regularization for Partially Labeled Multi-Task Learning",
CVPR 2024, Eq. 4-6, Sec. 4.4 and supplementary Sec. 6.1-6.2; details from the authors' code
(github.com/KentoNishi/JTR-CVPR-2024, ``code/models/nyuv2_segnet_jtr.py``, ``code/utils/process.py``).

Per sample x, with T_x its labelled tasks (Eq. 4):

    Y^_x = [y^1; ...; y^K],   Y_x = [delta(x, 1); ...; delta(x, K)],
    delta(x, t) = y^t (the label) if t in T_x, else y^t_x (the prediction, NOT detached: code)

each task mapped into [0, 1] before stacking (code ``process.py``):
    semseg (and human_parts): one-hot; a prediction goes through a hard Gumbel-softmax (tau = 1,
        straight-through: one-hot of argmax(logits + g) forward, softmax((logits + g) / tau)'s
        gradient), except the auto-encoder's copy of Y^, which is the plain softmax (code view 2);
    depth: Phi((d - mu) / sigma), Phi the standard normal CDF, mu = 2.3618, sigma = 1.5876;
    normals: (n + 1) / 2, the prediction normalised to a unit vector first;
    edge / saliency (no code; our choice): the probability sigmoid(logit), labels {0, 1};
    dense_l1 / keypoints (Taskonomy maps in [0, 1]; no code): the values themselves.
A pixel where a labelled task of x has no valid label is blanked in every task of x (the code's
"intersection mask": the map multiplied by 0 before the mapping). Inside JTR the predictions of
x's labelled tasks are detached, so JTR's gradient reaches only the unlabelled tasks' heads.

Eq. 5 with the auto-encoder g = g2 o g1 (the code's SegNet, its latent g1 the last pooled map):

    jtr/dist    = c_dist * (1 - cos(g1'(Y^), g1'(Y)))                  (trains the model)
    jtr/dist_ae = c_dist * c_dist_ae * (1 - cos(g1(<Y^>), g1(<Y>)))     (trains g1)
    jtr/recon   = c_recon * (Recon(g(<Y^>), <Y^>) + Recon(g(<Y>), <Y>))  (trains g1 and g2)

cos is taken over the latent channels, averaged over latent positions and samples; g1' is g1
with its parameters detached (the code's ``copy.deepcopy(self)``: Dist's gradient on the
model's side never moves the auto-encoder), <.> a stop-gradient. Recon sums, per task,
    semseg: BCE-with-logits summed over classes, edge / saliency: BCE-with-logits,
    depth: |((sigmoid(r) - 0.5)(1 - 1e-5) + 0.5) - Phi(d)|, dense_l1: |r - v| averaged over channels,
    normals: 1 - sum cos(r, n) / (3 n_valid) (the code's divisor: 3 non-zero entries per pixel),
each over the sample's valid pixels, per sample, then averaged over the batch. The terms are
added to the supervised loss (Eq. 6). A batch with every task labelled still trains the
auto-encoder; its jtr/dist has a value but no gradient (everything on its path is detached).

Sec. 4.4, samples without any label (|T_x| = 0), ``unlabelled_consistency``: Dist compares the
joint encoding of the predictions on a second view (a photometric re-augmentation, views = 2)
with that of the training image's, "consistency regularization in the joint-task latent space".

Deviations: the code computes the JTR terms on two further augmentations of the image (one for
jtr/dist, one for the auto-encoder terms), the supervised loss on a third; here both use the
training image (view 0), with independent Gumbel draws where the code has separate calls. The
auto-encoder runs on the whole batch (the code: one sample at a time, so its BatchNorm statistics
are per sample). Recon's target is the auto-encoder's input, as Eq. 5 writes it; the code instead
draws a fresh Gumbel sample of a segmentation prediction (equal in expectation at tau = 1), maps
Y^'s depth through Phi twice (a bug) and gives Y^'s normals in [0, 1]. The intersection mask
blanks labels too (the code blanks only predictions). Tasks other than those above (image-level
tasks, instance_center) are refused.

Hyper-parameters (``JTRParams``):
    c_dist (float >= 0, default 4.0): weight of Dist (paper supp. 6.2, code ``--dist-mtl-weight``).
    c_recon (float >= 0, default 2.0): weight of Recon (paper supp. 6.2, code ``--recon-weight``).
    c_dist_ae (float >= 0, default 2.0): extra factor of the auto-encoder's Dist (the code passes
        ``--recon-weight`` here, so g1's Dist weighs 4 * 2 = 8).
    depth_mean, depth_std (floats, defaults 2.3618, 1.5876): Phi's mean and std (code, NYUv2 metres).
    tau (float > 0, default 1.0): the Gumbel-softmax temperature (code).
    widths (ints, default (64, 128, 256, 512, 512)): the SegNet auto-encoder's channels per level
        (one 2x max-pool each; maps need at least 2 ** len(widths) pixels per side).
    ae_lr_mult (float > 0, default 1.0): learning-rate multiplier of the auto-encoder (the code
        trains it with the model's Adam at the same rate).
    unlabelled_consistency (bool, default False): the Sec. 4.4 variant above (needs two views).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.plugins import RegulariserInfo
from trainables.registry import register_regulariser
from trainables.regularisers.base import Regulariser, zero_like_outputs
from trainables.tasks.dense_l1 import DenseL1
from trainables.tasks.depth import Depth
from trainables.tasks.edge import Edge
from trainables.tasks.normals import Normals
from trainables.tasks.saliency import Saliency
from trainables.tasks.semseg import SemSeg


@dataclass(frozen=True)
class JTRParams:
    """Hyper-parameters of ``jtr`` (see the module docstring)."""

    c_dist: float = 4.0
    c_recon: float = 2.0
    c_dist_ae: float = 2.0
    depth_mean: float = 2.3618
    depth_std: float = 1.5876
    tau: float = 1.0
    widths: Tuple[int, ...] = (64, 128, 256, 512, 512)
    ae_lr_mult: float = 1.0
    unlabelled_consistency: bool = False

    def __post_init__(self) -> None:
        def number(x):
            return isinstance(x, (int, float)) and not isinstance(x, bool)

        for key in ("c_dist", "c_recon", "c_dist_ae"):
            if not (number(getattr(self, key)) and getattr(self, key) >= 0):
                raise ValueError(f"jtr: {key} must be a number >= 0, got {getattr(self, key)!r}")
        for key in ("depth_std", "tau", "ae_lr_mult"):
            if not (number(getattr(self, key)) and getattr(self, key) > 0):
                raise ValueError(f"jtr: {key} must be a number > 0, got {getattr(self, key)!r}")
        if not number(self.depth_mean):
            raise ValueError(f"jtr: depth_mean must be a number, got {self.depth_mean!r}")
        widths = tuple(self.widths) if isinstance(self.widths, (list, tuple)) else ()
        if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
            raise ValueError(f"jtr: widths must be a non-empty sequence of ints >= 1, got {self.widths!r}")
        object.__setattr__(self, "widths", widths)
        if not isinstance(self.unlabelled_consistency, bool):
            raise ValueError(f"jtr: unlabelled_consistency must be a bool, got {self.unlabelled_consistency!r}")


def _gumbel_noise(like: Tensor) -> Tensor:
    """Gumbel(0, 1) noise -log(E), E ~ Exp(1) (clamped away from 0 so that no inf appears)."""
    return -torch.empty_like(like).exponential_().clamp_min(1e-20).log()


def gumbel_hard(logits: Tensor, tau: float) -> Tensor:
    """One-hot of argmax over dim 1 of logits + Gumbel noise, with the gradient of its softmax / tau."""
    soft = ((logits + _gumbel_noise(logits)) / tau).softmax(1)
    hard = F.one_hot(soft.argmax(1), soft.shape[1]).movedim(-1, 1).to(soft.dtype)
    return hard - soft.detach() + soft


class _Codec:
    """How one task enters the joint-task tensor: its [0, 1] map, its label, its pixel validity
    ([B, 1, H, W]) and its reconstruction loss (per sample, over the pixels of ``m``)."""

    def __init__(self, task, params: JTRParams):
        self.task, self.params = task, params
        self.channels = task.out_channels

    def valid(self, target: Tensor) -> Tensor:
        return self.task.valid_mask(target).all(1, keepdim=True)

    def clean(self, target: Tensor) -> Tensor:
        return torch.where(self.task.valid_mask(target), target, torch.zeros_like(target))

    def pred(self, p: Tensor, m: Tensor, hard: bool) -> Tensor:
        return p * m

    def label(self, y: Tensor, m: Tensor) -> Tensor:
        return self.clean(y) * m

    def recon(self, r: Tensor, x: Tensor, m: Tensor) -> Tensor:
        return _per_sample((r - x).abs() * m, m, self.channels)


def _per_sample(loss: Tensor, m: Tensor, per_pixel: int) -> Tensor:
    """sum of a masked loss map per sample / (per_pixel * its number of valid pixels)."""
    return loss.flatten(1).sum(1) / (per_pixel * m.flatten(1).sum(1).clamp_min(1))


class _Seg(_Codec):
    def valid(self, target: Tensor) -> Tensor:
        return ((target >= 0) & (target < self.channels))[:, None]

    def pred(self, p, m, hard):
        return (gumbel_hard(p, self.params.tau) if hard else p.softmax(1)) * m

    def label(self, y, m):
        y = torch.where(self.valid(y)[:, 0], y.long(), torch.zeros_like(y, dtype=torch.long))
        return F.one_hot(y, self.channels).movedim(-1, 1).to(m.dtype) * m

    def recon(self, r, x, m):
        return _per_sample(F.binary_cross_entropy_with_logits(r, x, reduction="none") * m, m, 1)


class _Depth(_Codec):
    def phi(self, d: Tensor) -> Tensor:
        return torch.special.ndtr((d - self.params.depth_mean) / self.params.depth_std)

    def pred(self, p, m, hard):
        return self.phi(p * m)

    def label(self, y, m):
        return self.phi(self.clean(y) * m)

    def recon(self, r, x, m):
        return _per_sample(((torch.sigmoid(r) - 0.5) * (1 - 1e-5) + 0.5 - x).abs() * m, m, 1)


class _Normals(_Codec):
    def pred(self, p, m, hard):
        return (F.normalize(p, dim=1, eps=self.task.params.eps) * m + 1) / 2

    def label(self, y, m):
        return (self.clean(y) * m + 1) / 2

    def recon(self, r, x, m):
        cos = (F.normalize(r, dim=1, eps=1e-12) * (2 * x - 1) * m).flatten(1).sum(1)
        return 1 - cos / (3 * m.flatten(1).sum(1).clamp_min(1))


class _Binary(_Codec):
    def pred(self, p, m, hard):
        return torch.sigmoid(p) * m

    def recon(self, r, x, m):
        return _per_sample(F.binary_cross_entropy_with_logits(r, x, reduction="none") * m, m, 1)


# most specific first: human_parts is a SemSeg, keypoints a DenseL1
_CODECS = ((SemSeg, _Seg), (Depth, _Depth), (Normals, _Normals), (Edge, _Binary), (Saliency, _Binary),
           (DenseL1, _Codec))


def _codec(name: str, task, params: JTRParams) -> _Codec:
    for cls, codec in _CODECS:
        if isinstance(task, cls) and task.kind == "dense":
            return codec(task, params)
    raise ValueError(f"jtr: task {name!r} ({type(task).__name__}) has no joint-task encoding; JTR stacks dense "
                     "maps of semseg/human_parts, depth, normals, edge, saliency and dense_l1/keypoints tasks only")


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SegNetAE(nn.Module):
    """The code's SegNet auto-encoder: per level conv-BN-ReLU blocks (2 on the first two levels,
    3 deeper) and a 2x max-pool; the last pooled map is the joint-task latent g1(Y); the
    decoder unpools with the encoder's indices, mirrors the blocks, and ends in a 3x3 and a
    1x1 convolution back to the input's channels. Xavier-normal conv weights, zero biases."""

    def __init__(self, channels: int, widths: Sequence[int]):
        super().__init__()
        ins = [channels] + list(widths[:-1])
        outs = [widths[0]] + list(widths[:-1])  # decoder level i ends at level i - 1's width
        reps = [1 if i < 2 else 2 for i in range(len(widths))]
        self.down = nn.ModuleList(nn.Sequential(_conv(ins[i], w), *[_conv(w, w) for _ in range(reps[i])])
                                  for i, w in enumerate(widths))
        self.up = nn.ModuleList(nn.Sequential(_conv(w, outs[i]), *[_conv(outs[i], outs[i]) for _ in range(reps[i])])
                                for i, w in enumerate(widths))
        self.head = nn.Sequential(nn.Conv2d(widths[0], widths[0], 3, padding=1), nn.Conv2d(widths[0], channels, 1))
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.xavier_normal_(mod.weight)
                nn.init.zeros_(mod.bias)

    def forward(self, x: Tensor, encode_only: bool = False):
        """(latent, reconstruction logits), or the latent alone."""
        indices, sizes = [], []
        for level in self.down:
            x = level(x)
            sizes.append(x.shape[-2:])
            x, idx = F.max_pool2d(x, 2, 2, return_indices=True)
            indices.append(idx)
        if encode_only:
            return x
        y = x
        for i in reversed(range(len(self.up))):
            y = self.up[i](F.max_unpool2d(y, indices[i], 2, 2, output_size=sizes[i]))
        return x, self.head(y)


class Joint(NamedTuple):
    """The stacked tensors of one view: Y^ for Dist (hard), Y^ for the auto-encoder (soft), Y, the pixel mask."""

    pred_hard: Tensor
    pred_soft: Tensor
    target: Tensor
    mask: Tensor


@register_regulariser("jtr")
class JTR(Regulariser):
    """Joint-task regularisation (JTR, CVPR 2024, Eq. 5): Dist in one auto-encoder's latent + Recon."""

    Params = JTRParams
    INFO = RegulariserInfo(views=1)

    @classmethod
    def info_for(cls, params: JTRParams) -> RegulariserInfo:
        return RegulariserInfo(views=2 if params.unlabelled_consistency else 1)

    def __init__(self, tasks, params: Any = None, context=None, **kwargs: Any):
        super().__init__(tasks, params, context, **kwargs)
        self.codecs: Dict[str, _Codec] = {t: _codec(t, task, self.params) for t, task in self.tasks.items()}
        self.channels = [c.channels for c in self.codecs.values()]
        self.ae = SegNetAE(sum(self.channels), self.params.widths)

    def param_groups(self) -> List[Dict[str, Any]]:
        return [{"name": self.label(), "params": [p for p in self.ae.parameters() if p.requires_grad],
                 "lr_mult": self.params.ae_lr_mult}]

    def joint(self, view: Mapping[str, Tensor], batch: Mapping[str, Any]) -> Joint:
        """Eq. 4 on one view's predictions: the labelled tasks' predictions detached, every map
        blanked where a labelled task of the sample has no valid label."""
        names, targets = self.task_names, batch.get("targets", {})
        first = view[names[0]]
        b, size = first.shape[0], first.shape[-2:]
        labelled = {t: batch["mask"][t].to(device=first.device, dtype=torch.bool) if t in targets
                    else torch.zeros(b, dtype=torch.bool, device=first.device) for t in names}
        m = torch.ones(b, 1, *size, dtype=first.dtype, device=first.device)
        for t in names:
            if view[t].shape[-2:] != size:
                raise ValueError(f"jtr: every task's map must be {tuple(size)}, {t!r} is {tuple(view[t].shape[-2:])}")
            if bool(labelled[t].any()):
                ok = self.codecs[t].valid(targets[t]) | ~labelled[t][:, None, None, None]
                m = m * ok.to(m.dtype)
        hard, soft, target = [], [], []
        for t in names:
            codec, rows = self.codecs[t], labelled[t][:, None, None, None]
            p = torch.where(rows, view[t].detach(), view[t])
            hard.append(codec.pred(p, m, hard=True))
            soft.append(codec.pred(p, m, hard=False))
            substitute = codec.pred(p, m, hard=True)  # the code's separate call: a new Gumbel draw
            target.append(torch.where(rows, codec.label(targets[t], m), substitute) if bool(labelled[t].any())
                          else substitute)
        return Joint(torch.cat(hard, 1), torch.cat(soft, 1), torch.cat(target, 1), m)

    def _frozen_latent(self, x: Tensor) -> Tensor:
        """g1 with detached parameters and throw-away BatchNorm statistics (the code's deepcopy)."""
        params = {n: p.detach() for n, p in self.ae.named_parameters()}
        buffers = {n: b.clone() for n, b in self.ae.named_buffers()}
        return torch.func.functional_call(self.ae, (params, buffers), (x,), {"encode_only": True})

    def terms(self, outputs: Sequence[Mapping[str, Tensor]], batch: Mapping[str, Any],
              features: Any = None) -> Dict[str, Tensor]:
        p = self.params
        view0 = outputs[0]
        side = min(view0[self.task_names[0]].shape[-2:])
        if side < 2 ** len(p.widths):
            raise ValueError(f"jtr: the auto-encoder's {len(p.widths)} pooling levels need maps of at least "
                             f"{2 ** len(p.widths)} pixels per side, got {side}; give fewer widths")
        joint = self.joint(view0, batch)
        pred_hard, anchor = joint.pred_hard, zero_like_outputs(view0)
        if p.unlabelled_consistency:  # Sec. 4.4: Y^ from the second view where no task is labelled
            none = ~torch.stack([batch["mask"][t].to(torch.bool) for t in self.task_names]).any(0)
            other = self.joint(outputs[1], batch).pred_hard
            pred_hard = torch.where(none.to(pred_hard.device)[:, None, None, None], other, pred_hard)
            anchor = anchor + zero_like_outputs(outputs[1])
        dist = 1 - F.cosine_similarity(self._frozen_latent(pred_hard), self._frozen_latent(joint.target),
                                       dim=1, eps=1e-12).mean()
        z_pred, r_pred = self.ae(joint.pred_soft.detach())
        z_target, r_target = self.ae(joint.target.detach())
        dist_ae = 1 - F.cosine_similarity(z_pred, z_target, dim=1, eps=1e-12).mean()
        recon = self._recon(r_pred, joint.pred_soft.detach(), joint.mask) \
            + self._recon(r_target, joint.target.detach(), joint.mask)
        return {"jtr/dist": p.c_dist * dist + anchor, "jtr/dist_ae": p.c_dist * p.c_dist_ae * dist_ae,
                "jtr/recon": p.c_recon * recon}

    def _recon(self, r: Tensor, x: Tensor, m: Tensor) -> Tensor:
        """Recon(g(<X>), <X>): the sum over tasks of their reconstruction losses, mean over samples."""
        parts = zip(self.codecs.values(), r.split(self.channels, 1), x.split(self.channels, 1))
        return sum(codec.recon(ri, xi, m).mean() for codec, ri, xi in parts)

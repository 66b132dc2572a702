"""MGM: multi-task learning with a generator that makes weakly labelled images (joint training).

Bao, Hebert & Wang, "Generative Modeling for Multi-task Visual Learning" (ICLR 2022 submission /
ICML 2022; Sec. 3, Algorithm 1, Eq. 1-6, supplementary B). Besides the multi-task network M =
(encoder E, task decoders), MGM trains
    G      a class-conditional SAGAN (conditional BN, Eq. 1; self-attention, spectral norm, hinge
           loss) whose latent input is "the transferred feature representation of the multi-task
           encoder E, added with some Gaussian noise" (Sec. 3.3): z = Middle(E(x)) + N(0, s^2), with
           Middle = global average pooling + a dense layer (supplementary), and the scene label c;
    R      the refinement network: the multi-task predictions y^ -> scene class (Eq. 2-5): trained
           with cross-entropy on real labelled images (updates R and M), and frozen on weakly
           labelled images (x~, c~), where its cross-entropy updates M only (the EM-like step);
    E_self SimCLR's projection head: NT-Xent (Eq. 6, cosine similarity, temperature 0.5) between two
           augmented views, on real and weakly labelled images (or image reconstruction, Sec. 4.3).
Per training step (Algorithm 1 / supplementary B "Training Procedure"), in this plug-in:
    update        G and D: ``gan_iters`` alternating hinge-loss steps (D, then G and Middle) on the
                  real batch (x, c) with their own Adam optimisers (lr 1e-4 / 4e-4, betas (0, 0.9));
    extend_batch  appends the weakly labelled batch: N images G(Middle(E(x)) + noise, c) with the
                  real batch's scene labels c (MGM_r: the same number of real images that keep no
                  dense label, with their scene label) - no dense label, so no supervised loss
                  reads them;
    terms         the model's step adds: refine/real  CE(R(y^_real), c)       -> R, M
                                         refine/weak  CE(R_frozen(y^_weak), c~) -> M
                                         ssl/real, ssl/weak  NT-Xent           -> E, E_self
                                         adv          -min D(G(Middle(E(x)) + noise, c), c) with G,
                                                      D and Middle frozen   -> E ("the generation
                                                      error of G will be back-propagated to E")
M, R and E_self train with the run's optimiser (the paper: Adam, lr 1e-3 for all three).

Ablations (Tables 3-4) as parameters: ``generate: false`` = MGM/g (no synthesized images; R and
self-supervision on real images only); ``joint: false`` = MGM/j (G trained on detached features
during ``pretrain_epochs`` only, then frozen; no adversarial error to E); ``self_supervision:
none`` = MGM/self; ``refine: false`` = MGM/refine; ``weak_source: real`` = MGM_r (weakly
labelled real images instead of synthesized ones - needs a study with ``unlabelled_fraction`` > 0;
with ``labels.unlabelled: drop`` those images are out of the main loader, as in the paper, where
the MT/ST baselines see only the labelled share).

Deviations (the paper is silent or the code is not followed):
    stages: the paper trains M alone, then G with M frozen, then everything jointly (supplementary
        B). Here ``pretrain_epochs`` merge the first two: M trains on its labels (with R and the
        self-supervision on real images) while G and D train on detached features; the weak
        samples and the adversarial term start after them. A separately pre-trained SAGAN at batch
        128 is not reproduced.
    R and the decoders: the paper says the refinement losses update "R and E" / "E"; the gradient
        of R's input (the predictions) reaches the task decoders too.
    extra forward passes: E runs once more without gradient to make the latent of G
        (``extend_batch``, ``update``); BatchNorm running statistics of E see these passes.
    sizes: G, D, R are CPU-sized (``g_width``, ``d_width``, ``r_width``); the paper uses SAGAN's
        own sizes and a ResNet-10 per task in R (``trainables/regularisers/mgm_nets.py``); class
        predictions (semseg logits) enter R as probabilities.
    image range: G's tanh output in [-1, 1] is mapped per channel onto the range of the real
        training images seen so far (running min / max, saved with the checkpoint), so D, the
        encoder and the augmentations see real and generated images on one scale whatever the
        dataset's normalisation (the paper normalises NYUv2 to (-1, 1), where the map is the
        identity). Each worker keeps its own range.
    instance noise: std 0.01 on D's inputs, the authors' code's value (the paper does not say).
    one forward pass: the weakly labelled images are appended to the real batch, so in training
        mode BatchNorm's batch statistics mix both (the paper's Algorithm 1 runs them as a second
        minibatch); their dense labels are masked out, so no supervised loss reads them.
    data parallelism: every worker generates its own images; G's and D's gradients are averaged.

Hyper-parameters:
    scene_label (str, default "scene"): the dataset's image-level label used as c.
    scene_classes (int >= 2 or null, default null): its number of classes; null reads it from the
        dataset's label (its ``num_classes``).
    image_size (int or null, default null): the generated images' size, 32, 64, 128 or 256; null
        takes the training images' (square) size, which it must equal anyway.
    z_dim (int, default 64): G's latent size; g_width, d_width, r_width (default 32, 32, 32).
    g_lr, d_lr (default 1e-4, 4e-4), betas (default (0.0, 0.9)): G's and D's Adam.
    gan_iters (int >= 1, default 2): D/G iterations per step ("2 times iteratively").
    feature_noise (float >= 0, default 1.0): std of the noise added to Middle(E(x)).
    instance_noise (float >= 0, default 0.01): std of the noise added to D's inputs.
    pretrain_epochs (int >= 0, default 1).
    generate, joint, refine (bool, default true); self_supervision ("simclr" | "reconstruction" |
        "none", default "simclr"); weak_source ("synthesized" | "real", default "synthesized").
    temperature (float > 0, default 0.5); refine_weight, ssl_weight, adv_weight (default 1.0).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.plugins import RegulariserInfo
from trainables.registry import register_regulariser
from trainables.regularisers.base import Regulariser, append_samples, zero_like_outputs
from trainables.regularisers.maps import check_choice, check_number
from trainables.regularisers.mgm_nets import (
    Middle,
    ProjectionHead,
    ReconstructionDecoder,
    RefinementNet,
    SAGANDiscriminator,
    SAGANGenerator,
    hinge_d_loss,
    hinge_g_loss,
    instance_noise,
    last_map,
    nt_xent,
    reconstruction_loss,
    simclr_augment,
)

SELF_SUPERVISION = ("simclr", "reconstruction", "none")
WEAK_SOURCES = ("synthesized", "real")
IMAGE_SIZES = (32, 64, 128, 256)


def _check(name: str, value: Any, ok: bool, want: str) -> None:
    if not ok:
        raise ValueError(f"mgm: {name} must be {want}, got {value!r}")


@dataclass(frozen=True)
class MGMParams:
    """Hyper-parameters of ``mgm`` (see the module docstring)."""

    scene_label: str = "scene"
    scene_classes: Optional[int] = None
    image_size: Optional[int] = None
    z_dim: int = 64
    g_width: int = 32
    d_width: int = 32
    r_width: int = 32
    g_lr: float = 1e-4
    d_lr: float = 4e-4
    betas: Tuple[float, float] = (0.0, 0.9)
    gan_iters: int = 2
    feature_noise: float = 1.0
    instance_noise: float = 0.01
    pretrain_epochs: int = 1
    generate: bool = True
    joint: bool = True
    refine: bool = True
    self_supervision: str = "simclr"
    weak_source: str = "synthesized"
    temperature: float = 0.5
    refine_weight: float = 1.0
    ssl_weight: float = 1.0
    adv_weight: float = 1.0

    def __post_init__(self):
        _check("scene_label", self.scene_label, isinstance(self.scene_label, str) and bool(self.scene_label),
               "the name of the dataset's scene label")
        _check("scene_classes", self.scene_classes,
               self.scene_classes is None or (isinstance(self.scene_classes, int) and self.scene_classes >= 2),
               "null (the dataset's) or the number of scene classes, an int >= 2")
        _check("image_size", self.image_size, self.image_size is None or self.image_size in IMAGE_SIZES,
               f"null (the training images' size) or one of {IMAGE_SIZES}")
        for name in ("z_dim", "g_width", "d_width", "r_width", "gan_iters"):
            value = getattr(self, name)
            _check(name, value, isinstance(value, int) and value >= 1, "an int >= 1")
        _check("pretrain_epochs", self.pretrain_epochs, isinstance(self.pretrain_epochs, int) and self.pretrain_epochs >= 0,
               "an int >= 0")
        for name in ("g_lr", "d_lr", "temperature"):
            check_number("mgm", name, getattr(self, name), positive=True)
        for name in ("feature_noise", "instance_noise", "refine_weight", "ssl_weight", "adv_weight"):
            check_number("mgm", name, getattr(self, name))
        betas = tuple(self.betas)
        _check("betas", self.betas, len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas),
               "two numbers in [0, 1)")
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        for name in ("generate", "joint", "refine"):
            _check(name, getattr(self, name), isinstance(getattr(self, name), bool), "true or false")
        check_choice("mgm", "self_supervision", self.self_supervision, SELF_SUPERVISION)
        check_choice("mgm", "weak_source", self.weak_source, WEAK_SOURCES)

    @property
    def trains_gan(self) -> bool:
        return self.generate and self.weak_source == "synthesized"


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Run with ``modules``' parameters out of the autograd graph (gradients reach their inputs only)."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@register_regulariser("mgm")
class MGM(Regulariser):
    """MGM's generator, refinement network and self-supervision around the multi-task network."""

    Params = MGMParams
    INFO = RegulariserInfo(needs_features=True, needs_model=True, extra_labels=("scene",))

    @classmethod
    def info_for(cls, params: MGMParams) -> RegulariserInfo:
        return RegulariserInfo(needs_features=True, needs_model=True, extra_labels=(params.scene_label,),
                               weak_stream=params.generate and params.weak_source == "real")

    def __init__(self, tasks, params=None, context=None, **kwargs):
        super().__init__(tasks, params, context, **kwargs)
        p: MGMParams = self.params
        self.dense = [t for t, task in self.tasks.items() if task.kind == "dense"]
        if p.refine and not self.dense:
            raise ValueError("mgm: the refinement network reads dense predictions, and the study has no dense task; "
                             "set refine: false")
        self.epoch = 0
        self.built = False
        # the real images' per-channel range, onto which G's [-1, 1] output is mapped
        self.register_buffer("pixel_lo", torch.full((3,), float("inf")))
        self.register_buffer("pixel_hi", torch.full((3,), float("-inf")))

    # -- modules, built once the encoder's width is known -------------------------------------
    def attach(self, model: nn.Module, session: Any, image_hw: Tuple[int, int],
               label_tasks: Optional[Mapping[str, Any]] = None) -> None:
        super().attach(model, session, image_hw, label_tasks)
        if self.built:
            return
        p: MGMParams = self.params
        label = (label_tasks or {}).get(p.scene_label)
        known = getattr(getattr(label, "params", None), "num_classes", None)
        if p.scene_classes is not None and known is not None and known != p.scene_classes:
            raise ValueError(f"mgm: scene_classes {p.scene_classes}, but the dataset's {p.scene_label!r} label has "
                             f"{known} classes; set scene_classes: {known} or leave it out")
        classes = p.scene_classes or known
        if not classes:
            raise ValueError(f"mgm: the number of {p.scene_label!r} classes is unknown; set scene_classes")
        self.scene_classes = int(classes)
        size = int(image_hw[0])
        if tuple(image_hw) != (size, size) or size not in IMAGE_SIZES or p.image_size not in (None, size):
            raise ValueError(f"mgm: the generator makes square images of {IMAGE_SIZES} pixels like the training "
                             f"images, which are {tuple(image_hw)}" + (f" (image_size: {p.image_size})" if p.image_size else "")
                             + "; resize the dataset (its image_size parameter) or set image_size to match")
        self.size = size
        device = next(model.parameters()).device
        was = model.training
        model.eval()
        with torch.no_grad():  # the encoder's width and stride, from one image of the training size
            z = last_map(model.encode(torch.zeros(1, 3, size, size, device=device)))
        model.train(was)
        channels = z.shape[1]
        if p.trains_gan:
            self.middle = Middle(channels, p.z_dim)
            self.generator = SAGANGenerator(size, self.scene_classes, z_dim=p.z_dim, width=p.g_width)
            self.discriminator = SAGANDiscriminator(size, self.scene_classes, width=p.d_width)
        if p.refine:
            classes = [t for t in self.dense if getattr(self.tasks[t].params, "num_classes", None)]
            self.refiner = RefinementNet({t: self.tasks[t].out_channels for t in self.dense}, self.scene_classes,
                                         width=p.r_width, softmax_tasks=classes)
        if p.self_supervision == "simclr":
            self.projection = ProjectionHead(channels)
        elif p.self_supervision == "reconstruction":
            self.reconstruction = ReconstructionDecoder(channels, 3, upsample=size // z.shape[-1])
        self.to(device)
        self.built = True

    def _gan_modules(self) -> List[nn.Module]:
        return [self.middle, self.generator, self.discriminator] if self.params.trains_gan else []

    def param_groups(self) -> List[Dict[str, Any]]:
        """R, E_self / the reconstruction decoder with the run's optimiser; G, D, Middle apart."""
        own = {id(p) for m in self._gan_modules() for p in m.parameters()}
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in own]
        return [{"name": self.label(), "params": params, "lr_mult": 1.0}] if params else []

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        """G (with Middle) and D, each with its own Adam; built once, on the run's device."""
        opts = self.__dict__.get("_opts")
        if opts is None:
            p: MGMParams = self.params
            opts = {}
            if p.trains_gan:
                g_params = list(self.generator.parameters()) + list(self.middle.parameters())
                opts = {"generator": torch.optim.Adam(g_params, lr=p.g_lr, betas=p.betas),
                        "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=p.d_lr, betas=p.betas)}
            self.__dict__["_opts"] = opts
        return opts

    # -- the components' own step -------------------------------------------------------------
    def _scene(self, batch: Mapping[str, Any]) -> Tuple[Tensor, Tensor]:
        """(images, scene labels) of the batch's samples that carry a scene label."""
        name = self.params.scene_label
        if name not in batch["targets"]:
            raise ValueError(f"mgm: the batch has no {name!r} label; the dataset must provide it "
                             f"(scene_label names the dataset's image-level label)")
        keep = batch["mask"][name]
        labels = batch["targets"][name][keep].long()
        if len(labels) and int(labels.max()) >= self.scene_classes:
            raise ValueError(f"mgm: scene label {int(labels.max())} >= scene_classes {self.scene_classes}; "
                             f"set scene_classes to the number of the dataset's {name!r} classes")
        return batch["image"][keep], labels

    @torch.no_grad()
    def _observe(self, x: Tensor) -> None:
        if len(x):
            self.pixel_lo.copy_(torch.minimum(self.pixel_lo, x.detach().amin(dim=(0, 2, 3))))
            self.pixel_hi.copy_(torch.maximum(self.pixel_hi, x.detach().amax(dim=(0, 2, 3))))

    def _span(self) -> Tuple[Tensor, Tensor]:
        lo = self.pixel_lo.view(1, 3, 1, 1)
        return lo, (self.pixel_hi.view(1, 3, 1, 1) - lo).clamp_min(1e-6)

    def _generate(self, z: Tensor, c: Tensor) -> Tensor:
        """G's images on the real images' scale (see "image range" in the module docstring)."""
        lo, span = self._span()
        return lo + (self.generator(z, c) + 1) / 2 * span

    def _augment(self, images: Tensor) -> Tensor:
        """A SimCLR view; its colour operations work on the [0, 1] scale of the real images' range."""
        lo, span = self._span()
        return simclr_augment(images, mean=(-lo / span).flatten().tolist(), std=(1 / span).flatten().tolist())

    def _latent(self, feats: Any) -> Tensor:
        """z = Middle(E(x)) + N(0, feature_noise^2) (Sec. 3.3)."""
        h = self.middle(feats)
        return h + self.params.feature_noise * torch.randn_like(h)

    def _gan_active(self, epoch: int) -> bool:
        p: MGMParams = self.params
        return p.trains_gan and (p.joint or epoch < p.pretrain_epochs)

    def update(self, batch, weak, epoch: int) -> Dict[str, float]:
        """``gan_iters`` D and G steps (hinge loss) on the real batch, with detached encoder features."""
        self.epoch = epoch
        self._observe(batch["image"])
        if not self._gan_active(epoch):
            return {}
        p: MGMParams = self.params
        x, c = self._scene(batch)
        if len(x) == 0:
            return {}
        opts = self.optimizers()
        with torch.no_grad():
            feats = self.model.encode(x)
        d_loss = g_loss = torch.zeros(())
        for _ in range(p.gan_iters):
            with torch.no_grad():
                fake = self._generate(self._latent(feats), c)
            d_loss = hinge_d_loss(self.discriminator(instance_noise(x, p.instance_noise), c),
                                  self.discriminator(instance_noise(fake, p.instance_noise), c))
            opts["discriminator"].zero_grad(set_to_none=True)
            d_loss.backward()
            self.session.average_grads_(list(self.discriminator.parameters()))
            opts["discriminator"].step()
            with frozen(self.discriminator):
                fake = self._generate(self._latent(feats), c)
                g_loss = hinge_g_loss(self.discriminator(instance_noise(fake, p.instance_noise), c))
            opts["generator"].zero_grad(set_to_none=True)
            g_loss.backward()
            self.session.average_grads_(list(self.generator.parameters()) + list(self.middle.parameters()))
            opts["generator"].step()
        return {"gan/d": float(d_loss.detach()), "gan/g": float(g_loss.detach())}

    def weak_active(self, epoch: int) -> bool:
        p: MGMParams = self.params
        return p.generate and epoch >= p.pretrain_epochs

    def extend_batch(self, batch, weak, epoch: int):
        """Append the weakly labelled batch: generated images (or MGM_r's real ones) with scene labels."""
        self.epoch = epoch
        self._observe(batch["image"])
        if not self.weak_active(epoch):
            return batch
        p: MGMParams = self.params
        if p.weak_source == "real":
            images, labels = self._scene(weak)
        else:
            x, labels = self._scene(batch)
            if len(x) == 0:
                return batch
            with torch.no_grad():
                images = self._generate(self._latent(self.model.encode(x)), labels)
        if tuple(images.shape[-2:]) != tuple(batch["image"].shape[-2:]):
            raise ValueError(f"mgm: weak images are {tuple(images.shape[-2:])}, the training images "
                             f"{tuple(batch['image'].shape[-2:])}; give both sources one image size")
        n_real = batch["image"].shape[0]
        out = append_samples(batch, images.detach(), {p.scene_label: labels})
        out["weak"] = torch.cat([torch.zeros(n_real, dtype=torch.bool, device=images.device),
                                 torch.ones(len(images), dtype=torch.bool, device=images.device)])
        return out

    @torch.no_grad()
    def artifacts(self, images: Tensor, labels: Mapping[str, Tensor], folder: str, stem: str) -> List[str]:
        """``<folder>/<stem>_samples.png``: per scene class (rows), the real validation images of the
        class used for the latent, then what G makes of them - so a user sees what the generator does."""
        if not self.params.trains_gan:
            return []
        import os

        from torchvision.utils import save_image

        scene = labels[self.params.scene_label].long()
        classes = sorted(set(scene.tolist()))
        per_class = min(6, max(1, min(int((scene == c).sum()) for c in classes)))
        real = torch.cat([images[scene == c][:per_class] for c in classes])
        c = torch.cat([scene[scene == c][:per_class] for c in classes])
        was = (self.model.training, self.training)
        self.model.eval()
        self.eval()
        fake = self._generate(self._latent(self.model.encode(real)), c)
        self.model.train(was[0])
        self.train(was[1])
        lo, span = self._span()
        to01 = lambda x: ((x - lo) / span).clamp(0, 1)  # noqa: E731
        rows = torch.stack([to01(real).view(len(classes), per_class, *real.shape[1:]),
                            to01(fake).view(len(classes), per_class, *real.shape[1:])], dim=1)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{stem}_samples.png")
        save_image(rows.flatten(0, 2), path, nrow=per_class, padding=2)
        return [path]

    # -- the terms added to the model's step --------------------------------------------------
    def terms(self, outputs: Sequence[Mapping[str, Tensor]], batch: Mapping[str, Any], features: Any = None) -> Dict[str, Tensor]:
        p: MGMParams = self.params
        out = outputs[0]
        size = batch["image"].shape[0]
        device = batch["image"].device
        weak = batch.get("weak", torch.zeros(size, dtype=torch.bool, device=device))
        scene = batch["targets"][p.scene_label].long()
        has_scene = batch["mask"][p.scene_label]
        dense_labelled = torch.stack([batch["mask"][t] for t in self.tasks]).any(0)
        real = ~weak & has_scene & dense_labelled  # fully annotated real images (x, y, c)
        weak_l = weak & has_scene
        zero = zero_like_outputs(out)
        terms: Dict[str, Tensor] = {}
        if p.refine:
            preds = {t: out[t] for t in self.dense}
            terms["mgm/refine_real"] = p.refine_weight * (
                F.cross_entropy(self.refiner({t: v[real] for t, v in preds.items()}), scene[real])
                if real.any() else zero)
            if self.weak_active(self.epoch):
                if weak_l.any():
                    with frozen(self.refiner):
                        logits = self.refiner({t: v[weak_l] for t, v in preds.items()})
                    terms["mgm/refine_weak"] = p.refine_weight * F.cross_entropy(logits, scene[weak_l])
                else:
                    terms["mgm/refine_weak"] = zero
        if p.self_supervision != "none":
            terms["mgm/ssl_real"] = p.ssl_weight * self._ssl(batch["image"], features, ~weak, zero)
            if self.weak_active(self.epoch):
                terms["mgm/ssl_weak"] = p.ssl_weight * self._ssl(batch["image"], features, weak, zero)
        if p.trains_gan and p.joint and self.weak_active(self.epoch) and p.adv_weight > 0:
            keep = ~weak & has_scene
            if keep.any():  # G's error reaches E through Middle; G, D and Middle stay as they are
                with frozen(self.middle, self.generator, self.discriminator):
                    fake = self._generate(self._latent(_rows(features, keep)), scene[keep])
                    terms["mgm/adv"] = p.adv_weight * hinge_g_loss(self.discriminator(fake, scene[keep]))
            else:
                terms["mgm/adv"] = zero
        return terms

    def _ssl(self, images: Tensor, features: Any, rows: Tensor, zero: Tensor) -> Tensor:
        """NT-Xent between two augmented views of ``images[rows]`` (Eq. 6), or their reconstruction."""
        p: MGMParams = self.params
        images = images[rows]
        if p.self_supervision == "simclr":
            if len(images) < 2:  # no negative pair
                return zero
            a = self.projection(self.model.encode(self._augment(images)))
            b = self.projection(self.model.encode(self._augment(images)))
            return nt_xent(a, b, p.temperature)
        if len(images) == 0:
            return zero
        return reconstruction_loss(self.reconstruction(_rows(features, rows)), images)


def _rows(features: Any, rows: Tensor) -> Any:
    return tuple(f[rows] for f in features) if isinstance(features, (tuple, list)) else features[rows]

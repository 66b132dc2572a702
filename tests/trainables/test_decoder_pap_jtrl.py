"""PAP-Net and JTRL (survey Sec. 2.3.2-2.3.3, Table 6): behaviour on tiny inputs, sizes on meta.

Tiny models: ``tiny_cnn`` (output stride 8) on 2 x 3 x 32 x 32 images, narrow widths. The
survey-size checks build the dilated ResNet-50 at NYUD-v2's 480 x 640 on the meta device.
"""
from __future__ import annotations

import pytest
import torch

from trainables.architectures.base import Predictions
from trainables.build import architecture_info, build_model, build_tasks
from trainables.complexity import count_flops, count_parameters
from trainables.plugins import ModelRef, Plugin
from trainables.registry import TASKS
from trainables.steps import task_losses

TINY_HEAD = Plugin("conv", {"mid_channels": 8})
PAP_TINY = {"channels": 8, "affinity_channels": 4, "rates": (1, 2, 3), "iterations": 3, "beta": 0.5}
JTRL_TINY = {"widths": (16, 8, 8, 4)}  # scales 1/8, 1/4, 1/2, 1 of tiny_cnn's output stride 8


def tiny_tasks(*names, auxiliary=()):
    tasks = build_tasks(Plugin("synthetic"), list(names))
    for name in auxiliary:
        tasks[name].auxiliary = True
    return tasks


def tiny_model(arch, params, tasks, seed=0):
    torch.manual_seed(seed)
    return build_model(tasks, ModelRef(Plugin(arch, params), Plugin("tiny_cnn"), TINY_HEAD))


def image(seed=1, b=2, hw=(32, 32)):
    return torch.randn(b, 3, *hw, generator=torch.Generator().manual_seed(seed))


def batch_for(tasks, x, seed=2):
    g = torch.Generator().manual_seed(seed)
    b, hw = x.shape[0], x.shape[-2:]
    targets = {}
    for name, task in tasks.items():
        if name == "semseg":
            targets[name] = torch.randint(0, task.out_channels, (b, *hw), generator=g)
        else:
            targets[name] = torch.rand(b, task.out_channels, *hw, generator=g) + 0.5
    return {"image": x, "targets": targets, "mask": {n: torch.ones(b, dtype=torch.bool) for n in tasks}}


CASES = [("pap_net", PAP_TINY), ("jtrl", JTRL_TINY)]


# --------------------------------------------------------------------------- both
@pytest.mark.parametrize("arch, params", CASES)
def test_forward_backward_every_parameter_gets_a_finite_gradient(arch, params):
    tasks = tiny_tasks("semseg", "depth")
    model = tiny_model(arch, params, tasks)
    out = model(image())
    assert isinstance(out, Predictions) and set(out) == {"semseg", "depth"}
    assert out["semseg"].shape == (2, 7, 32, 32) and out["depth"].shape == (2, 1, 32, 32)
    terms = list(out.values()) + [a for preds in out.aux.values() for a in preds]
    sum(t.square().mean() for t in terms).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{arch}: {name}"
    info = architecture_info(Plugin(arch, params))
    assert info.deep_supervision and info.dense_only


@pytest.mark.parametrize("arch, params, weights_key, zero", [
    ("pap_net", PAP_TINY, "aux_weight", 0.0),
    ("jtrl", JTRL_TINY, "aux_weights", (0.0,)),
])
def test_zero_aux_weights_give_the_final_losses_gradients(arch, params, weights_key, zero):
    tasks = tiny_tasks("semseg", "depth")
    model = tiny_model(arch, {**params, weights_key: zero}, tasks)
    batch = batch_for(tasks, image())
    out = model(batch["image"])
    assert out.aux and all(w == 0.0 for w in out.aux_weights)
    params_ = [p for p in model.parameters()]
    with_aux = torch.autograd.grad(sum(task_losses(out, tasks, batch).values()), params_,
                                   retain_graph=True, allow_unused=True)
    finals = sum(tasks[n].loss(out[n], batch["targets"][n]) for n in tasks)
    alone = torch.autograd.grad(finals, params_, allow_unused=True)
    for p_name, a, b in zip([n for n, _ in model.named_parameters()], with_aux, alone):
        if b is None:  # only the intermediate classifiers: their gradient is exactly zero
            assert a is None or not a.any(), p_name
        else:
            torch.testing.assert_close(a, b, msg=p_name)


@pytest.mark.parametrize("arch, params, weights_key, weights", [
    ("pap_net", PAP_TINY, "aux_weight", 0.4),
    ("jtrl", JTRL_TINY, "aux_weights", (0.2, 0.5, 1.0)),
])
def test_nonzero_aux_weights_give_every_intermediate_prediction_a_gradient(arch, params, weights_key, weights):
    tasks = tiny_tasks("semseg", "depth")
    model = tiny_model(arch, {**params, weights_key: weights}, tasks)
    batch = batch_for(tasks, image())
    out = model(batch["image"])
    aux = [a for preds in out.aux.values() for a in preds]
    for a in aux:
        a.retain_grad()
    sum(task_losses(out, tasks, batch).values()).backward()
    assert aux and all(a.grad is not None and a.grad.abs().sum() > 0 for a in aux)


# --------------------------------------------------------------------------- PAP-Net
def test_pap_affinity_rows_are_probability_distributions():
    tasks = tiny_tasks("semseg", "depth")
    model = tiny_model("pap_net", PAP_TINY, tasks)
    x = image()
    with torch.no_grad():
        features = model.task_features(model.encode(x))
        size = model.affinity_size(x.shape[-2:])
        assert size == (8, 8)  # affinity_stride 4 on 32 x 32: finer than the 4 x 4 features
        resized = {n: torch.nn.functional.interpolate(f, size=size, mode="bilinear", align_corners=False)
                   for n, f in features.items()}
        affinities = model.affinities(resized)
        model.mix["semseg"].copy_(torch.tensor([2.0, -1.0]))  # |a| / sum |a| = (2/3, 1/3)
        mats = list(affinities.values()) + [model.combined_affinity(n, affinities) for n in model.scored]
    torch.testing.assert_close(model.mix_weights("semseg"), torch.tensor([2 / 3, 1 / 3]))
    for m in mats:
        assert m.shape == (2, 64, 64)
        assert (m >= 0).all()
        torch.testing.assert_close(m.sum(-1), torch.ones(2, 64))
    assert not torch.allclose(affinities["semseg"], affinities["depth"])  # each task its own pattern


def _perturbed_outputs(model, x, source="depth"):
    """The model's outputs, then again after adding noise to ``source``'s task network."""
    with torch.no_grad():
        before = model(x)
        for p in model.task_nets[source].parameters():
            p.add_(0.5 * torch.randn_like(p))
        after = model(x)
    return before, after


def test_pap_zero_cross_task_weight_cuts_the_other_task_off():
    tasks = tiny_tasks("semseg", "depth")
    model = tiny_model("pap_net", PAP_TINY, tasks)
    with torch.no_grad():
        model.mix["semseg"].copy_(torch.tensor([1.0, 0.0]))  # semseg diffuses with its own affinities only
    before, after = _perturbed_outputs(model, image())
    assert not torch.allclose(before["depth"], after["depth"])  # the perturbation is real
    assert torch.equal(before["semseg"], after["semseg"])


def test_pap_nonzero_cross_task_weight_propagates_the_other_task():
    tasks = tiny_tasks("semseg", "depth")
    model = tiny_model("pap_net", PAP_TINY, tasks)  # equal weights at start
    before, after = _perturbed_outputs(model, image())
    assert not torch.allclose(before["semseg"], after["semseg"], atol=1e-6)
    # ... and only through the diffusion: without it semseg never sees depth
    model = tiny_model("pap_net", {**PAP_TINY, "iterations": 0}, tasks)
    before, after = _perturbed_outputs(model, image())
    assert torch.equal(before["semseg"], after["semseg"])


def test_pap_auxiliary_task_is_a_source_with_its_initial_prediction_as_output():
    tasks = tiny_tasks("semseg", "depth", "normals", auxiliary=("normals",))
    model = tiny_model("pap_net", PAP_TINY, tasks)
    assert model.scored == ["semseg", "depth"] and set(model.heads) == {"semseg", "depth"}
    assert model.mix["semseg"].shape == (3,)  # normals' affinities take part
    x = image()
    with torch.no_grad():
        out = model(x)
        initial = model.initial["normals"](model.task_features(model.encode(x))["normals"])
    assert set(out.aux) == {"semseg", "depth"} and out.aux_weights == (1.0,)
    torch.testing.assert_close(out["normals"], torch.nn.functional.interpolate(
        initial, size=(32, 32), mode="bilinear", align_corners=False))
    before, after = _perturbed_outputs(model, x, source="normals")
    assert not torch.allclose(before["semseg"], after["semseg"], atol=1e-6)


def test_pap_params_are_checked():
    with pytest.raises(ValueError, match="pap_net: iterations"):
        build_model(tiny_tasks("semseg"), ModelRef(Plugin("pap_net", {"iterations": -1})))
    with pytest.raises(ValueError, match="pap_net: beta"):
        build_model(tiny_tasks("semseg"), ModelRef(Plugin("pap_net", {"beta": 1.5})))


# --------------------------------------------------------------------------- JTRL
@pytest.mark.parametrize("widths", [(8,), (16, 8, 8), (16, 8, 8, 4)])
def test_jtrl_state_sequence_and_levels_follow_the_widths(widths):
    tasks = tiny_tasks("depth", "semseg")  # the paper's order: depth first
    model = tiny_model("jtrl", {"widths": widths}, tasks).eval()
    x = image()
    with torch.no_grad():
        states = model.states(model.encode(x))
        out = model(x)
    scales = len(widths)
    assert [(t, l) for t, l, _ in states] == [(t, l) for l in range(scales) for t in ("depth", "semseg")]
    for task, level, s in states:
        assert s.shape == (2, widths[level], 4 * 2 ** level, 4 * 2 ** level)  # 1/8 of 32, doubling
    assert out.aux_weights == (1.0,) * (scales - 1)
    assert {n: len(p) for n, p in out.aux.items()} == ({"depth": scales - 1, "semseg": scales - 1} if scales > 1 else {})
    for preds in out.aux.values():
        assert [p.shape[-1] for p in preds] == [4 * 2 ** l for l in range(scales - 1)]


def test_jtrl_each_state_reads_the_other_tasks_previous_state():
    tasks = tiny_tasks("depth", "semseg")
    model = tiny_model("jtrl", JTRL_TINY, tasks).eval()
    x = image()
    with torch.no_grad():
        clean = model.states(model.encode(x))
        for k in range(1, len(clean)):
            task, level, _ = clean[k - 1]  # the other task's latest state
            assert task != clean[k][0]
            hook = model.stacks[task][level].register_forward_hook(lambda m, i, o: o + 1.0)
            try:
                bumped = model.states(model.encode(x))
            finally:
                hook.remove()
            for j in range(k - 1):  # earlier states are untouched...
                assert torch.equal(bumped[j][2], clean[j][2])
            assert not torch.allclose(bumped[k][2], clean[k][2])  # ...state k sees the bump


def test_jtrl_takes_exactly_two_tasks():
    with pytest.raises(ValueError, match=r"exactly two tasks.*got 3: \['semseg', 'depth', 'normals \(auxiliary\)'\]"):
        tiny_model("jtrl", JTRL_TINY, tiny_tasks("semseg", "depth", "normals", auxiliary=("normals",)))
    with pytest.raises(ValueError, match=r"exactly two tasks.*got 1: \['semseg'\]"):
        tiny_model("jtrl", JTRL_TINY, tiny_tasks("semseg"))
    # an auxiliary task is one of the two: trained like the other, no special casing
    model = tiny_model("jtrl", JTRL_TINY, tiny_tasks("semseg", "normals", auxiliary=("normals",)))
    assert set(model(image()).aux) == {"semseg", "normals"}


def test_jtrl_scales_params_and_shared_representation():
    tasks = tiny_tasks("depth", "semseg")
    with pytest.raises(ValueError, match="at most 4 widths"):  # 1/8 -> 1/16 of a pixel
        tiny_model("jtrl", {"widths": (16, 8, 8, 8, 4)}, tasks)
    with pytest.raises(ValueError, match="jtrl: widths"):
        tiny_model("jtrl", {"widths": (16, 6)}, tasks)
    with pytest.raises(ValueError, match="jtrl: aux_weights"):
        tiny_model("jtrl", {"widths": (16, 8, 8), "aux_weights": (1.0, 1.0, 1.0)}, tasks)
    assert not architecture_info(Plugin("jtrl")).has_shared_representation  # skip features: no single z
    model = tiny_model("jtrl", {**JTRL_TINY, "skips": False}, tasks).eval()
    assert model.has_shared_representation
    x = image()
    with torch.no_grad():
        z = model.encode(x)
        assert isinstance(z, torch.Tensor)
        torch.testing.assert_close(model.decode(z, x.shape[-2:])["semseg"], model(x)["semseg"])


# --------------------------------------------------------------------------- survey sizes (meta)
def nyud_model(arch, head, **params):
    tasks = {"semseg": TASKS.get("semseg")("semseg", num_classes=40), "depth": TASKS.get("depth")("depth")}
    with torch.device("meta"):
        model = build_model(tasks, ModelRef(Plugin(arch, params), Plugin("resnet50", {"dilated": True}), head))
    return count_parameters(model) / 1e6, count_flops(model, (480, 640))["macs"] / 1e9


def test_pap_net_size_at_table6_setting():
    # Survey Table 6: 52 M / 4800 G. Ours (arithmetic in pap_net.py's docstring):
    #   23.51 (encoder) + 2 * 15.53 (ASPP task networks) + 2 * 0.03 (affinity layers) + heads;
    #   MACs 116.8 + 2 * 72.05 + 2 * 47.19 (affinities at 120 x 160) + 2 * 0.63 + heads
    #        + 23 steps * 2 * 94.37 (diffusion: 19,200^2 * 256 per task and step).
    # its own light conv heads (2 * 0.15 M, 2 * 2.86 G), whatever the study's head plug-in
    for head in ("conv", "aspp"):
        params, macs = nyud_model("pap_net", Plugin(head))
        # within 10 % of both figures (+5.7 %, -2.0 %)
        assert params == pytest.approx(54.95, rel=0.002) and abs(params / 52 - 1) < 0.10
        assert macs == pytest.approx(4703.4, rel=0.002) and abs(macs / 4800 - 1) < 0.03


def test_jtrl_size_at_table6_setting():
    # Survey Table 6: 295 M / 660 G. Default widths (576, 288, 144, 72), conv heads (arithmetic
    # in jtrl.py's docstring): the compute matches (-0.3 %); the size cannot at the same time on
    # an output-stride-8 encoder (each parameter at 60 x 80 costs 4800 MACs, and 660 - 117 G
    # buys at most 113 M of them), so the documented gap, -77 %, is asserted.
    params, macs = nyud_model("jtrl", Plugin("aspp"))  # its own conv heads, not the study's ASPP
    assert macs == pytest.approx(658.0, rel=0.002) and abs(macs / 660 - 1) < 0.01
    assert params == pytest.approx(67.69, rel=0.002) and params / 295 - 1 == pytest.approx(-0.77, abs=0.01)

"""The branched (tree-shaped) encoder: equivalences with mtl_baseline and single_task, parameter
counts and split, growing from a coarser parent, tree validation, encode/decode.

Task names a, b, c of the middle tree are the synthetic dataset's semseg, depth, normals.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import trainables  # noqa: F401  (registers every plug-in)
from trainables.architectures.base import last_weight_layer
from trainables.build import architecture_info, build_balancer, build_model, build_tasks
from trainables.complexity import count_flops, count_parameters
from trainables.plugins import ModelRef, Plugin, RunContext
from trainables.registry import BACKBONES, TASKS
from trainables.schema import ConfigError
from trainables.steps import training_step

A, B, C = "semseg", "depth", "normals"
DENSE = (A, B, C)
ALL = (DENSE,)                      # one group: the stage shared by all three tasks
SPLIT = ((A,), (B,), (C,))          # a group per task
AB_C = ((A, B), (C,))
MIDDLE = (ALL, ALL, AB_C, SPLIT)    # tiny_cnn: stem + stage 1 shared, stage 2 {a,b}|{c}, stage 3 all split
COARSE = (ALL, ALL, ALL, AB_C)      # a parent that MIDDLE refines
SIZE = 32

# (backbone, head, tasks): the survey's dense tasks, plus an image-level task on its linear head
CASES = [("tiny_cnn", "conv", DENSE + ("scene",)), ("resnet18", "conv", (A, "scene")),
         ("resnet18", "deeplabv3plus", (A, B))]


def tasks_of(names):
    return build_tasks(Plugin("synthetic", {"image_size": SIZE}), list(names))


def branched(tree, backbone="tiny_cnn", head="conv"):
    return ModelRef(Plugin("branched", {"tree": tree}), backbone, head)


def build(names, ref, seed=0):
    torch.manual_seed(seed)
    return build_model(tasks_of(names), ref)


def num_stages(backbone):
    with torch.device("meta"):
        return len(BACKBONES.get(backbone)().stages)


def image(seed=1, b=2):
    return torch.randn(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def assert_same_outputs(model, other, x, names):
    out, ref = outputs(model, x), outputs(other, x)
    for name in names:
        assert torch.equal(out[name], ref[name]), name


def perturb(model, seed=5):
    """Weights and BN statistics away from any fresh init, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(0.05 * torch.randn(t.shape, generator=g))
    return model


def as_branch(state, key):
    """A mtl_baseline / single_task state dict with its backbone as the tree's group ``key``."""
    out = {}
    for k, v in state.items():
        if k.startswith("backbone.stages."):
            d, rest = k[len("backbone.stages."):].split(".", 1)
            k = f"stages.{d}.{key}.{rest}"
        out[k] = v
    return out


def ids(params):
    return {id(p) for p in params}


# -- equivalences ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone, head, names", CASES)
def test_fully_shared_tree_is_the_mtl_baseline(backbone, head, names):
    baseline = build(names, ModelRef("mtl_baseline", backbone, head))
    tree = build(names, branched(None, backbone, head))
    assert count_parameters(tree) == count_parameters(baseline)
    # same seed, same init: the shared tree builds exactly what the baseline does
    mapped = as_branch(baseline.state_dict(), "+".join(names))
    assert set(mapped) == set(tree.state_dict())
    assert all(torch.equal(v, mapped[k]) for k, v in tree.state_dict().items())
    perturb(baseline)
    tree.load_state_dict(mapped, strict=True)
    assert_same_outputs(tree, baseline, image(), names)


@pytest.mark.parametrize("backbone, head, names", CASES)
def test_fully_split_tree_is_the_single_task_networks(backbone, head, names):
    singles = {n: perturb(build([n], ModelRef("single_task", backbone, head)), seed=i) for i, n in enumerate(names)}
    split = build(names, branched((tuple((n,) for n in names),) * num_stages(backbone), backbone, head))
    assert count_parameters(split) == sum(count_parameters(m) for m in singles.values())
    state = {k: v for n, single in singles.items() for k, v in as_branch(single.state_dict(), n).items()}
    split.load_state_dict(state, strict=True)
    x, out = image(), outputs(split, image())
    for n, single in singles.items():
        assert torch.equal(out[n], outputs(single, x)[n]), n


@pytest.mark.parametrize("first_split, params_m, macs_g", [(5, 92, 166), (4, 107, 196), (3, 114, 211), (2, 116, 213)])
def test_survey_table4_sizes(first_split, params_m, macs_g):
    """Table 4 (Cityscapes: dilated ResNet-50, PSP heads, semseg + instance centres + depth at
    256 x 512): MTL baseline 92 M / 166 G, Branched-1/2/3 107 / 114 / 116 M and 196 / 211 / 213 G
    are the trees with a two-way split of layer4, layer3-4, layer2-4."""
    s, i, d = "semseg", "instance_center", "depth"
    tasks = {s: TASKS.get(s)(s, num_classes=19), i: TASKS.get(i)(i), d: TASKS.get(d)(d)}
    tree = (((s, i, d),),) * first_split + (((s, i), (d,)),) * (5 - first_split)
    with torch.device("meta"):
        model = build_model(tasks, branched(tree, Plugin("resnet50", {"dilated": True}), "psp"))
    assert count_parameters(model) / 1e6 == pytest.approx(params_m, abs=1)  # printed as whole M / G
    assert count_flops(model, (256, 512))["macs"] / 1e9 == pytest.approx(macs_g, abs=1)


# -- a middle tree ---------------------------------------------------------------------------------
def test_middle_tree_parameter_count_by_hand():
    model = build(DENSE, branched(MIDDLE))
    stage_params = [count_parameters(s) for s in BACKBONES.get("tiny_cnn")().stages]
    heads = sum(count_parameters(h) for h in model.heads.values())
    # groups per stage: 1, 1, 2, 3
    assert count_parameters(model) == 1 * stage_params[0] + 1 * stage_params[1] + 2 * stage_params[2] \
        + 3 * stage_params[3] + heads
    assert list(model.stages[2]) == ["semseg+depth", "normals"]  # readable module keys
    # each copy is a fresh, independently initialised stage, not a clone of another group's
    first_conv = [copy[0][0].weight for copy in model.stages[3].values()]
    assert not torch.equal(first_conv[0], first_conv[1]) and not torch.equal(first_conv[1], first_conv[2])


def test_middle_tree_parameter_split():
    model = build(DENSE, branched(MIDDLE))
    s = model.stages
    assert ids(model.shared_parameters()) == ids(list(s[0].parameters()) + list(s[1].parameters())
                                                 + list(s[2]["semseg+depth"].parameters()))
    for name in DENSE:
        own = list(s[3][name].parameters()) + list(model.heads[name].parameters())
        own += list(s[2][C].parameters()) if name == C else []
        assert ids(model.task_specific_parameters(name)) == ids(own), name
    assert model.last_shared_module() is last_weight_layer(s[1][A + "+" + B + "+" + C])


def test_gradient_of_one_task_stays_off_the_other_branches():
    model = build(DENSE, branched(MIDDLE))
    out = model(image())
    out[C].square().mean().backward()

    def norm(module):
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    assert norm(model.stages[2]["semseg+depth"]) == 0 and norm(model.stages[3][A]) == 0
    assert norm(model.heads[A]) == 0 and norm(model.heads[B]) == 0
    for module in (model.stages[0], model.stages[1], model.stages[2][C], model.stages[3][C], model.heads[C]):
        assert norm(module) > 0


# -- growing from a parent -------------------------------------------------------------------------
def test_load_parent_from_a_coarser_tree_and_from_mtl_baseline_keeps_the_outputs():
    x = image()
    baseline = perturb(build(DENSE, ModelRef("mtl_baseline")))
    coarse = build(DENSE, branched(COARSE), seed=1)
    coarse.load_parent(baseline.state_dict(), ModelRef("mtl_baseline"))  # FAFS's start
    assert_same_outputs(coarse, baseline, x, DENSE)
    perturb(coarse, seed=6)  # "trained" after growing: the two copies of stage 3 now differ
    fine = build(DENSE, branched(MIDDLE), seed=2)
    fine.load_parent(coarse.state_dict(), branched(COARSE))
    assert_same_outputs(fine, coarse, x, DENSE)
    grown, source = fine.stages[3][A].state_dict(), coarse.stages[3]["semseg+depth"].state_dict()
    assert all(torch.equal(grown[k], source[k]) for k in source)  # the branch starts as its parent's copy
    # a parent given as the config's plain mapping, with the tree as YAML lists
    plain = {"architecture": {"name": "branched", "params": {"tree": [[list(g) for g in s] for s in COARSE]}}}
    again = build(DENSE, branched(MIDDLE), seed=3)
    again.load_parent(coarse.state_dict(), plain)
    assert_same_outputs(again, coarse, x, DENSE)


def test_load_parent_with_a_deeplab_head_on_resnet18():
    names = (A, B)
    baseline = perturb(build(names, ModelRef("mtl_baseline", "resnet18", "deeplabv3plus")))
    tree = (((A, B),),) * 2 + (((A,), (B,)),) * 3  # stride-4 stage 1 shared, layer2.. split
    grown = build(names, branched(tree, "resnet18", "deeplabv3plus"), seed=1)
    grown.load_parent(baseline.state_dict(), ModelRef("mtl_baseline", "resnet18", "deeplabv3plus"))
    assert_same_outputs(grown, baseline, image(), names)


def test_load_parent_refuses_what_the_tree_does_not_refine():
    model = build(DENSE, branched(COARSE))
    finer = build(DENSE, branched(MIDDLE))
    with pytest.raises(ValueError, match=r"stage 2: group \('semseg', 'depth', 'normals'\) lies in no group"):
        model.load_parent(finer.state_dict(), branched(MIDDLE))
    crossing = (ALL, ALL, ALL, ((A, C), (B,)))
    with pytest.raises(ValueError, match=r"stage 3: group \('semseg', 'depth'\) lies in no group"):
        model.load_parent(build(DENSE, branched(crossing)).state_dict(), branched(crossing))
    with pytest.raises(ValueError, match="'branched' or 'mtl_baseline'.*cross_stitch"):
        model.load_parent({}, ModelRef("cross_stitch"))
    with pytest.raises(ValueError, match="parent serves tasks"):
        model.load_parent({}, branched((((A, B),),) * 4))
    with pytest.raises(ValueError, match="parent's tree has 3 stages, this one 4"):
        model.load_parent({}, branched(COARSE[1:]))
    with pytest.raises(ValueError, match=r"does not match .* keys missing \['heads\.depth\.\S+"):
        model.load_parent({}, ModelRef("mtl_baseline"))
    extra = build([A, B, C, "edge"], ModelRef("mtl_baseline")).state_dict()  # a head this model lacks
    with pytest.raises(ValueError, match=r"0 keys missing \[\], \d+ keys unused \['heads\.edge\."):
        model.load_parent(extra, ModelRef("mtl_baseline"))
    with pytest.raises(ValueError, match="do not fit"):  # another backbone width
        other = build(DENSE, ModelRef("mtl_baseline", Plugin("tiny_cnn", {"widths": (16, 32, 64, 128)})))
        model.load_parent(other.state_dict(), ModelRef("mtl_baseline"))


# -- bad trees -------------------------------------------------------------------------------------
@pytest.mark.parametrize("tree, message", [
    ((ALL, AB_C, ALL, SPLIT), (r"stage 2: group \('semseg', 'depth', 'normals'\) spans groups .* of stage 1; "
                               r"a group may only split")),
    ((ALL, ALL, ((A, B), (B, C)), SPLIT), (r"stage 2: task 'depth' is in two groups, \('semseg', 'depth'\) and "
                                           r"\('depth', 'normals'\)")),
    ((ALL, ALL, ((A,), (C,)), SPLIT), r"stage 2 groups tasks \['normals', 'semseg'\] .* missing \['depth'\]"),
    ((ALL, ALL, ((A, B), ()), SPLIT), r"stage 2 has an empty .*group"),
    ((), "give one partition of the tasks per backbone stage"),
])
def test_bad_trees_are_refused_by_the_params(tree, message):
    with pytest.raises(ConfigError, match=r"architecture 'branched'\.tree: " + message):
        build(DENSE, branched(tree))


def test_trees_that_do_not_fit_the_model_are_refused_at_build():
    with pytest.raises(ValueError, match="tree has 3 stages, the backbone 4"):
        build(DENSE, branched(MIDDLE[1:]))
    with pytest.raises(ValueError, match=r"stage 0 of the tree groups tasks \['depth', 'semseg'\].*missing "
                                         r"\['normals'\]"):
        build(DENSE, branched((((A, B),),) * 4))
    with pytest.raises(ValueError, match=r"not a task \['edge'\]"):
        build(DENSE, branched(((DENSE + ("edge",),),) * 4))


# -- encode / decode and the shared representation -----------------------------------------------------
ONE_SPLIT = (ALL, ALL, SPLIT, SPLIT)
SPLIT_STEM = (AB_C, AB_C, AB_C, SPLIT)


@pytest.mark.parametrize("tree, shared_repr, depth", [
    (None, True, 4), (ONE_SPLIT, True, 2), (MIDDLE, False, 2), (SPLIT_STEM, False, 0)])
def test_encode_decode_and_shared_representation(tree, shared_repr, depth):
    model = build(DENSE, branched(tree)).eval()
    info = architecture_info(Plugin("branched", {"tree": tree}))
    assert info == model.info and info.has_shared_representation is shared_repr
    assert info.accepts_grouping and info.needs_sequential_stages
    x = image()
    out = outputs(model, x)
    if depth == 0:
        with pytest.raises(NotImplementedError, match="stem is split"):
            model.encode(x)
        with pytest.raises(ValueError, match="gradient-level balancers .* need one"):
            model.last_shared_module()
        return
    with torch.no_grad():
        z = model.encode(x)
        decoded = model.decode(z, x.shape[-2:])
    assert z.shape[1] == model.stages[depth - 1][A + "+" + B + "+" + C][-1][0].out_channels
    for name in DENSE:
        assert torch.equal(decoded[name], out[name]), name


@pytest.mark.parametrize("prefix, pair", [(1, False), (2, False), (4, True)])
def test_encode_with_a_stride4_skip(prefix, pair):
    """resnet18's stride-4 features are stage 1: z is a pair only when the prefix goes past it."""
    names = (A, B)
    tree = (((A, B),),) * prefix + (((A,), (B,)),) * (5 - prefix)
    model = build(names, branched(tree, "resnet18", "deeplabv3plus")).eval()
    x = image()
    with torch.no_grad():
        z = model.encode(x)
        decoded = model.decode(z, x.shape[-2:])
    assert isinstance(z, tuple) is pair
    out = outputs(model, x)
    for name in names:
        assert torch.equal(decoded[name], out[name]), name


# -- the training step reaches every parameter -----------------------------------------------------
def batch(seed=0, b=4):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(b, 3, SIZE, SIZE, generator=g),
            "targets": {A: torch.randint(0, 7, (b, SIZE, SIZE), generator=g),
                        B: torch.rand(b, 1, SIZE, SIZE, generator=g) * 5 + 0.5,
                        C: F.normalize(torch.randn(b, 3, SIZE, SIZE, generator=g), dim=1)},
            "mask": {t: torch.ones(b, dtype=torch.bool) for t in DENSE}}


@pytest.mark.parametrize("tree, balancer", [(MIDDLE, "pcgrad"), (MIDDLE, "gradnorm"), (ONE_SPLIT, "mgda"),
                                            (None, "mgda"), (SPLIT_STEM, "cagrad"), (MIDDLE, "fixed")])
def test_every_parameter_gets_a_gradient_from_the_step(tree, balancer):
    tasks = tasks_of(DENSE)
    torch.manual_seed(0)
    model = build_model(tasks, branched(tree))
    bal = build_balancer(balancer, list(DENSE), RunContext(primary_task=A))
    opt = torch.optim.SGD(list(model.parameters()) + list(bal.parameters()), lr=0.0)
    training_step(model, bal, tasks, batch(), opt)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"{balancer} on {tree}: no gradient for {missing[:4]}"

"""MuST (Ghiasi et al., ICCV 2021): pseudo-labels of frozen single-task teachers for the missing
task labels - the pseudo-labels and the term by hand, the gradient routing, the teachers kept out
of the optimiser and the checkpoint, and a step with real tiny models."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainables  # noqa: F401  (registers every plug-in)
from trainables.build import build_balancer, build_model, build_regularisers, build_tasks
from trainables.plugins import ModelRef, Plugin, RunContext
from trainables.session import Session
from trainables.steps import training_step

TASKS = ["semseg", "depth", "normals"]
TINY = {"backbone": Plugin("tiny_cnn", {"widths": (8, 8, 8, 8)}), "head": Plugin("conv", {"mid_channels": 8})}


def tasks_of(names=TASKS):
    return build_tasks(Plugin("synthetic"), names)


def must(tasks, **params):
    return build_regularisers([Plugin("must", params)], tasks)[0]


class FixedTeacher(nn.Module):
    """A known teacher: a 1x1 conv of the image per task (semseg logits, depth of either sign, normals);
    records the images it saw."""

    def __init__(self, task: str, channels: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.task = task
        self.conv = nn.Conv2d(3, channels, 1)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return {self.task: self.conv(x)}


def fixed_teachers(tasks):
    return {t: FixedTeacher(t, task.out_channels, seed=i) for i, (t, task) in enumerate(tasks.items())}


def batch_of(b=4, size=8, seed=0, labelled=None):
    g = torch.Generator().manual_seed(seed)
    labelled = labelled or {}
    return {"image": torch.randn(b, 3, size, size, generator=g),
            "targets": {"semseg": torch.randint(0, 7, (b, size, size), generator=g),
                        "depth": torch.rand(b, 1, size, size, generator=g) * 5 + 0.5,
                        "normals": F.normalize(torch.randn(b, 3, size, size, generator=g), dim=1)},
            "mask": {t: torch.tensor(labelled.get(t, [True] * b)) for t in TASKS}}


def student_outputs(b=4, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"semseg": torch.randn(b, 7, size, size, generator=g).requires_grad_(),
            "depth": (torch.rand(b, 1, size, size, generator=g) + 0.5).requires_grad_(),
            "normals": torch.randn(b, 3, size, size, generator=g).requires_grad_()}


def test_pseudo_labels_and_terms_by_hand():
    """Segmentation: the teacher's argmax; depth: its raw output (pixels it puts at depth <= 0 are invalid,
    as missing depth is); normals: its unit direction. Each term: the task's loss on the unlabelled
    samples against them, times weight * task weight."""
    tasks = tasks_of()
    reg = must(tasks, weight=2.0, task_weights={"depth": 0.5})
    teachers = fixed_teachers(tasks)
    reg.set_teachers(teachers)
    labelled = {"semseg": [True, False, True, False], "depth": [False, True, True, True],
                "normals": [True, True, True, True]}
    batch, out = batch_of(labelled=labelled), student_outputs()
    terms = reg.terms([out], batch)
    assert set(terms) == {"must/semseg", "must/depth", "must/normals"}

    x = batch["image"]
    seg_teacher = teachers["semseg"].conv(x[[1, 3]]).detach()
    seg_target = seg_teacher.argmax(1)
    assert torch.equal(reg.pseudo_labels("semseg", x[[1, 3]]), seg_target)
    expected_seg = 2.0 * F.cross_entropy(out["semseg"][[1, 3]], seg_target)
    torch.testing.assert_close(terms["must/semseg"], expected_seg)

    depth_teacher = teachers["depth"].conv(x[[0]]).detach()  # raw: no clamp, no rounding
    torch.testing.assert_close(reg.pseudo_labels("depth", x[[0]]), depth_teacher)
    valid = depth_teacher > 0
    assert 0 < int(valid.sum()) < valid.numel()  # the fixed teacher predicts both signs
    expected_depth = 2.0 * 0.5 * ((out["depth"][[0]] - depth_teacher).abs() * valid).sum() / valid.sum()
    torch.testing.assert_close(terms["must/depth"], expected_depth)

    normals = teachers["normals"].conv(x[[1]]).detach()
    torch.testing.assert_close(reg.pseudo_labels("normals", x[[1]]), F.normalize(normals, dim=1))

    # every sample labelled for normals: a zero that still depends on the outputs
    assert float(terms["must/normals"].detach()) == 0.0 and terms["must/normals"].requires_grad


def test_teachers_run_on_the_unlabelled_samples_only_without_gradient():
    tasks = tasks_of()
    reg = must(tasks)
    teachers = fixed_teachers(tasks)
    reg.set_teachers(teachers)
    batch = batch_of(labelled={"semseg": [True, False, True, False], "depth": [False, True, True, True]})
    out = student_outputs()
    sum(reg.terms([out], batch).values()).backward()
    assert torch.equal(teachers["semseg"].seen[0], batch["image"][[1, 3]])
    assert torch.equal(teachers["depth"].seen[0], batch["image"][[0]])
    assert teachers["normals"].seen == []  # every sample labelled: the teacher is not run
    for teacher in teachers.values():
        assert not teacher.training
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_labelled_samples_contribute_nothing():
    tasks = tasks_of()
    reg = must(tasks)
    reg.set_teachers(fixed_teachers(tasks))
    labelled = {"semseg": [True, False, True, False], "depth": [False, True, True, True],
                "normals": [False, False, True, True]}
    out = student_outputs()
    sum(reg.terms([out], batch_of(labelled=labelled)).values()).backward()
    for task, rows in labelled.items():
        for i, has_label in enumerate(rows):
            size = float(out[task].grad[i].abs().sum())
            assert (size == 0.0) if has_label else (size > 0.0), (task, i)


def test_teachers_are_not_parameters_state_or_param_groups():
    tasks = tasks_of()
    reg = must(tasks)
    teachers = fixed_teachers(tasks)
    reg.set_teachers(teachers)
    assert list(reg.parameters()) == [] and list(reg.children()) == []
    assert len(reg.state_dict()) == 0 and reg.param_groups() == []
    assert set(reg.teachers) == set(TASKS)
    # but they follow the regulariser's device / dtype moves
    regs = nn.ModuleList([reg]).to(torch.float64)
    assert all(p.dtype == torch.float64 for t in teachers.values() for p in t.parameters())
    assert regs[0] is reg


def test_set_teachers_needs_one_per_task_and_terms_need_teachers():
    tasks = tasks_of()
    reg = must(tasks)
    with pytest.raises(RuntimeError, match="set_teachers"):
        reg.terms([student_outputs()], batch_of(labelled={"depth": [False] * 4}))
    teachers = fixed_teachers(tasks)
    del teachers["depth"]
    with pytest.raises(ValueError, match=r"missing \['depth'\]"):
        reg.set_teachers(teachers)
    with pytest.raises(ValueError, match=r"unknown \['edge'\]"):
        reg.set_teachers({**fixed_teachers(tasks), "edge": nn.Identity()})


def test_params_are_checked():
    tasks = tasks_of()
    with pytest.raises(ValueError, match="weight"):
        must(tasks, weight=-1.0)
    with pytest.raises(ValueError, match="task_weights.depth"):
        must(tasks, task_weights={"depth": float("nan")})
    with pytest.raises(ValueError, match="unknown task"):
        must(tasks, task_weights={"edge": 1.0})
    assert trainables.build.regulariser_info("must").needs_teachers


@pytest.mark.parametrize("balancer", ["fixed", "pcgrad"])
def test_step_with_real_models_and_a_task_without_any_label(balancer):
    """training_step with a tiny student and the study's kind of teachers (single-task networks):
    normals has no label in the batch, so only MuST's term trains its head; the teachers are untouched."""
    torch.manual_seed(0)
    tasks = tasks_of()
    student = build_model(tasks, ModelRef(architecture=Plugin("mtl_baseline"), **TINY))
    teachers = {t: build_model({t: task}, ModelRef(architecture=Plugin("single_task"), **TINY))
                for t, task in tasks.items()}
    before = {t: [p.detach().clone() for p in m.parameters()] for t, m in teachers.items()}
    buffers = {t: [b.detach().clone() for b in m.buffers()] for t, m in teachers.items()}
    reg = must(tasks)
    reg.set_teachers(teachers)
    bal = build_balancer(Plugin(balancer), TASKS, RunContext(primary_task="semseg"))
    opt = torch.optim.SGD(list(student.parameters()) + list(bal.parameters()), lr=0.1)
    labelled = {"semseg": [True, True, False, False], "depth": [False, True, True, False], "normals": [False] * 4}
    batch = batch_of(b=4, size=16, labelled=labelled)
    report = training_step(student, bal, tasks, batch, opt, Session(), [reg])

    assert "normals" not in report and report["reg/must/normals"] > 0
    assert report["reg/must/semseg"] > 0 and report["reg/must/depth"] > 0
    head = list(student.heads["normals"].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
    for t, m in teachers.items():
        assert not m.training
        assert all(p.grad is None for p in m.parameters())
        assert all(torch.equal(a, b) for a, b in zip(before[t], m.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(buffers[t], m.buffers()))  # eval: BN statistics kept
    assert not any(p is q for g in opt.param_groups for p in g["params"] for m in teachers.values()
                   for q in m.parameters())

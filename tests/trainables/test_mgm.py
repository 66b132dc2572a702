"""MGM on the components seam: own optimisers, appended weak samples, ablations, resume."""
import pytest
import torch

from tests.trainables.test_train_loop import _Died, _StopAfter
from trainables.build import build_model, build_regularisers, build_tasks
from trainables.config import TrialConfig
from trainables.plugins import ModelRef, Plugin
from trainables.regularisers.base import append_samples
from trainables.session import Session
from trainables.steps import labelled, training_step
from trainables.build import build_balancer
from trainables.train_loop import fit

DATA = Plugin("synthetic", {"image_size": 32, "num_train": 32, "num_val": 16, "num_test": 16})
TASKS = ("semseg", "depth")
SMALL = {"scene_classes": 5, "z_dim": 16, "g_width": 8, "d_width": 8, "r_width": 8,
         "gan_iters": 1, "pretrain_epochs": 0}


def parts(**params):
    torch.manual_seed(0)
    tasks = build_tasks(DATA, TASKS)
    model = build_model(tasks, ModelRef(backbone=Plugin("tiny_cnn", {"widths": [8, 8, 8, 8]}), head=Plugin("conv")))
    reg = build_regularisers([Plugin("mgm", {**SMALL, **params})], tasks)[0]
    reg.attach(model, Session(device=torch.device("cpu")), (32, 32), build_tasks(DATA, ["scene"]))
    return tasks, model, reg


def batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
            "targets": {"semseg": torch.randint(0, 7, (n, size, size), generator=g),
                        "depth": torch.rand(n, 1, size, size, generator=g) + 1,
                        "scene": torch.randint(0, 5, (n,), generator=g)},
            "mask": {t: torch.ones(n, dtype=torch.bool) for t in ("semseg", "depth", "scene")}}


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return [not torch.equal(a, b) for a, b in zip(before, module.parameters())]


def test_each_optimiser_steps_only_its_own_parameters():
    tasks, model, reg = parts()
    g, d, m, r = (snapshot(x) for x in (reg.generator, reg.discriminator, model, reg.refiner))
    opts = reg.optimizers()
    assert set(opts) == {"generator", "discriminator"}
    # the D step alone (G's optimiser held back): only D moves
    opts["generator"].step = lambda *a, **k: None
    logs = reg.update(batch(), None, epoch=0)
    assert set(logs) == {"gan/d", "gan/g"}
    assert any(changed(d, reg.discriminator))
    assert not any(changed(g, reg.generator)) and not any(changed(m, model)) and not any(changed(r, reg.refiner))
    # the G step: G (and Middle) move, D and the multi-task network do not
    del opts["generator"].step
    d = snapshot(reg.discriminator)
    opts["discriminator"].step = lambda *a, **k: None
    reg.update(batch(), None, epoch=0)
    assert any(changed(g, reg.generator))
    assert not any(changed(d, reg.discriminator)) and not any(changed(m, model))
    # the multi-task optimiser (model + R + E_self, never G, D or Middle)
    main = torch.optim.SGD(list(model.parameters()) + [p for grp in reg.param_groups() for p in grp["params"]], lr=0.1)
    own = {id(p) for x in (reg.generator, reg.discriminator, reg.middle) for p in x.parameters()}
    assert not any(id(p) in own for grp in main.param_groups for p in grp["params"])
    g, d, r = (snapshot(x) for x in (reg.generator, reg.discriminator, reg.refiner))
    balancer = build_balancer("fixed", list(tasks))
    b = reg.extend_batch(batch(), None, epoch=0)
    training_step(model, balancer, tasks, b, main, regularisers=[reg])
    assert any(changed(m, model)) and any(changed(r, reg.refiner))
    assert not any(changed(g, reg.generator)) and not any(changed(d, reg.discriminator))


def test_generated_samples_carry_a_scene_label_and_never_reach_the_dense_losses():
    tasks, model, reg = parts()
    real = batch(4)
    b = reg.extend_batch(real, None, epoch=0)
    assert b["image"].shape[0] == 8 and b["weak"].tolist() == [False] * 4 + [True] * 4
    assert b["mask"]["scene"].all() and torch.equal(b["targets"]["scene"][4:], real["targets"]["scene"])
    for t in TASKS:
        assert b["mask"][t].tolist() == [True] * 4 + [False] * 4
    model.eval()  # (in training mode BatchNorm's batch statistics mix real and generated images)
    images = b["image"].clone().requires_grad_(True)
    pairs = labelled(model(images), tasks, b)
    assert all(len(pred) == 4 for pred, _ in pairs.values())
    # the dense losses are those of the real samples alone: no gradient reaches a generated image
    alone = labelled(model(real["image"]), tasks, real)
    total = 0
    for t in TASKS:
        assert tasks[t].loss(*pairs[t]).item() == pytest.approx(tasks[t].loss(*alone[t]).item(), rel=1e-5)
        total = total + tasks[t].loss(*pairs[t])
    total.backward()
    assert images.grad[4:].abs().max() == 0 and images.grad[:4].abs().max() > 0


def test_append_samples_pads_unlabelled_tasks_and_refuses_unknown_ones():
    b = append_samples(batch(2), torch.zeros(3, 3, 32, 32), {"scene": torch.tensor([1, 2, 3])})
    assert b["targets"]["semseg"].shape == (5, 32, 32) and b["targets"]["depth"][2:].abs().sum() == 0
    assert b["mask"]["depth"].tolist() == [True, True, False, False, False]
    with pytest.raises(ValueError, match="no task \\['parts'\\]"):
        append_samples(batch(2), torch.zeros(1, 3, 32, 32), {"parts": torch.zeros(1)})


ALL = {"mgm/refine_real", "mgm/refine_weak", "mgm/ssl_real", "mgm/ssl_weak", "mgm/adv"}


@pytest.mark.parametrize("params, removed", [
    ({}, set()),
    ({"generate": False}, {"mgm/refine_weak", "mgm/ssl_weak", "mgm/adv"}),           # MGM/g
    ({"joint": False, "pretrain_epochs": 1}, {"mgm/adv"}),                          # MGM/j after pre-training
    ({"self_supervision": "none"}, {"mgm/ssl_real", "mgm/ssl_weak"}),                # MGM/self
    ({"refine": False}, {"mgm/refine_real", "mgm/refine_weak"}),                     # MGM/refine
    ({"weak_source": "real"}, {"mgm/adv"}),                                          # MGM_r
])
def test_each_ablation_removes_exactly_its_terms(params, removed):
    tasks, model, reg = parts(**params)
    weak = batch(4, seed=1)
    for t in TASKS:
        weak["mask"][t][:] = False
    b = reg.extend_batch(batch(), weak, epoch=1)
    reg.update(batch(), weak, epoch=1)
    out = model(b["image"])
    terms = reg.terms([out], b, model.encode(b["image"]))
    assert set(terms) == ALL - removed
    assert all(torch.isfinite(v) for v in terms.values())
    gan = params.get("generate", True) and params.get("weak_source", "synthesized") == "synthesized"
    assert hasattr(reg, "generator") == gan and set(reg.optimizers()) == ({"generator", "discriminator"} if gan else set())


def test_mgm_j_freezes_the_generator_after_pre_training():
    _, _, reg = parts(joint=False, pretrain_epochs=1)
    assert reg.update(batch(), None, epoch=0)  # pre-training: G and D train
    g = snapshot(reg.generator)
    assert reg.update(batch(), None, epoch=1) == {} and not any(changed(g, reg.generator))


def test_reconstruction_replaces_simclr():
    tasks, model, reg = parts(self_supervision="reconstruction")
    b = reg.extend_batch(batch(), None, epoch=0)
    terms = reg.terms([model(b["image"])], b, model.encode(b["image"]))
    assert {"mgm/ssl_real", "mgm/ssl_weak"} <= set(terms) and hasattr(reg, "reconstruction")
    assert not hasattr(reg, "projection")


def mgm_cfg(tmp_path, **kw):
    base = dict(experiment="mgm", tasks=TASKS, data_root=str(tmp_path / "data"), dataset=DATA,
                model=ModelRef(backbone=Plugin("tiny_cnn", {"widths": [8, 8, 8, 8]}), head=Plugin("conv")),
                regularisers=(Plugin("mgm", {**SMALL, "pretrain_epochs": 1}),),
                batch_size=4, eval_batch_size=16, epochs=2, max_steps_per_epoch=2, lr=1e-3, optimizer="adam")
    base.update(kw)
    return TrialConfig(**base)


def test_resume_continues_every_component_identically(tmp_path):
    full = Session(device=torch.device("cpu"), checkpoint_dir=str(tmp_path / "full"))
    a = fit(mgm_cfg(tmp_path), full)
    assert "train/reg/gan/d" in a and "train/reg/mgm/adv" in a
    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(_Died):
        fit(mgm_cfg(tmp_path), _StopAfter(ckpt, epochs=1))
    state = torch.load(f"{ckpt}/state.pt", weights_only=True)
    assert set(state["own_optimizers"]) == {"0/generator", "0/discriminator"}
    resumed = Session(device=torch.device("cpu"), checkpoint_dir=ckpt)
    b = fit(mgm_cfg(tmp_path), resumed)
    assert [r["epoch"] for r in resumed.reports] == [1]
    for key in ("val/depth/rmse", "train/reg/gan/d", "train/reg/gan/g", "train/reg/mgm/adv"):
        assert b[key] == pytest.approx(a[key], rel=1e-5), key
    end_a = torch.load(f"{tmp_path}/full/state.pt", weights_only=True)
    end_b = torch.load(f"{ckpt}/state.pt", weights_only=True)
    for name, value in end_a["regularisers"].items():
        assert torch.allclose(value.float(), end_b["regularisers"][name].float(), atol=1e-6), name


def test_plan_refuses_what_mgm_cannot_get_before_ray():
    from orchestrator.plan import validate
    from orchestrator.spec import SpecError, load_spec
    from search_spaces.mgm import SYNTHETIC

    validate(load_spec(SYNTHETIC))
    mgm_r = {**SYNTHETIC, "experiments": [{"name": "mgm_r", "regularisers": [
        {"name": "mgm", "params": {"scene_classes": 5, "weak_source": "real"}}]}]}
    validate(load_spec(mgm_r))
    no_weak = {**mgm_r, "dataset": {**SYNTHETIC["dataset"], "labels": {"setting": "full"}}}
    with pytest.raises(SpecError, match="unlabelled_fraction > 0"):
        validate(load_spec(no_weak))
    no_scene = {**mgm_r, "experiments": [{"name": "m", "regularisers": [
        {"name": "mgm", "params": {"scene_classes": 5, "scene_label": "room"}}]}]}
    with pytest.raises(SpecError, match=r"reads label\(s\) \['room'\]"):
        validate(load_spec(no_scene))
    bad = {**SYNTHETIC, "dataset": {**SYNTHETIC["dataset"], "labels": {"setting": "full", "unlabelled": "skip"}}}
    with pytest.raises(SpecError, match="labels.unlabelled: 'skip'"):
        validate(load_spec(bad))


def test_dropped_images_leave_the_loader_and_feed_the_weak_stream(tmp_path):
    from trainables.datasets.partial import materialize

    keep = materialize(str(tmp_path), 32, list(TASKS), {"setting": "full", "unlabelled_fraction": 0.5})
    drop = materialize(str(tmp_path), 32, list(TASKS), {"setting": "full", "unlabelled_fraction": 0.5,
                                                       "unlabelled": "drop"})
    assert keep != drop  # a different loader, so a different file and cache key
    seen = []

    def spy(model, balancer, tasks, batch, optimizer, session=None, regularisers=(), meta_batch=None, amp=None, scaler=None):
        seen.append((batch["mask"]["semseg"].clone(), batch.get("weak")))
        return {}

    import trainables.train_loop as loop

    original = loop.training_step
    loop.training_step = spy
    try:
        cfg = mgm_cfg(tmp_path, label_file=drop, epochs=1, max_steps_per_epoch=None,
                      regularisers=(Plugin("mgm", {**SMALL, "weak_source": "real"}),))
        fit(cfg, Session(device=torch.device("cpu")))
    finally:
        loop.training_step = original
    assert len(seen) == 16 // 4  # 16 labelled images, batch 4: the 16 dropped ones are not batches
    for mask, weak in seen:  # 4 labelled real images, then 4 weakly labelled real ones appended
        assert mask.tolist() == [True] * 4 + [False] * 4 and weak.tolist() == [False] * 4 + [True] * 4


def test_every_mgm_preset_validates_and_learning_rates_outside_the_survey_grid_are_kept():
    from orchestrator.plan import settings_of, validate
    from orchestrator.spec import SpecError, load_spec
    from search_spaces import PRESETS

    names = sorted(n for n in PRESETS if n.startswith("mgm_"))
    assert len(names) == 9
    for name in names:
        spec = load_spec(PRESETS[name])
        info = validate(spec)
        assert {(s["optimizer"], s["lr"]) for s in settings_of(spec, info)} == {("adam", 1e-3)}, name  # MGM's Adam
    exps = {e.name for e in load_spec(PRESETS["mgm_nyuv2_50"]).experiments}
    assert exps == {"mt", "mgm", "mgm_r", "mgm_g", "mgm_j"}
    assert "mgm_r" not in {e.name for e in load_spec(PRESETS["mgm_nyuv2_100"]).experiments}
    assert {e.name for e in load_spec(PRESETS["mgm_nyuv2_ablation"]).experiments} == {
        "mgm", "mgm_self", "mgm_refine", "mgm_recon"}
    spec = load_spec({**PRESETS["mgm_synthetic"], "search": {"lrs": [3e-5]}})
    with pytest.raises(SpecError, match="search.optimizers: learning rates \\[3e-05\\] are outside"):
        settings_of(spec, validate.__globals__["describe_dataset"](spec.dataset.plugin))


def test_a_trained_state_writes_its_sample_grid(tmp_path):
    from PIL import Image

    from trainables.train_loop import regulariser_artifacts

    fit(mgm_cfg(tmp_path, epochs=1), Session(device=torch.device("cpu"), checkpoint_dir=str(tmp_path / "ck")))
    paths = regulariser_artifacts(str(tmp_path / "ck"), str(tmp_path / "out"), "mgm", num_images=16)
    assert paths == [str(tmp_path / "out" / "mgm_samples.png")]
    width, height = Image.open(paths[0]).size
    # 16 val images hold at least two scene classes; one row of real and one of generated images each
    assert height > 2 * 32 and width >= 32


def test_mgm_folder_scores_depth_by_mean_absolute_error_as_mgm_table_2():
    from trainables.tasks.depth import Depth

    tasks = build_tasks(Plugin("mgm_folder"), ["semseg", "depth", "normals"])
    assert [tasks[t].primary_metric for t in ("semseg", "depth", "normals")] == ["miou", "l1", "mean_angle"]
    assert Depth().primary_metric == "rmse"  # the survey's, elsewhere
    with pytest.raises(ValueError, match="depth: primary must be one of 'rmse', 'l1', 'abs_rel', got 'mae'"):
        Depth(primary="mae")

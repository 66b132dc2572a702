"""Study specs: a bad field is an error naming the field, before Ray starts."""
import pytest
import yaml

from orchestrator.cli import main
from orchestrator.plan import expand, settings_of, smoke, validate
from orchestrator.spec import SpecError, StudySpec, load_spec
from search_spaces import PRESETS, preset


def quick(**changes):
    data = dict(preset("quickstart"))
    data.update(changes)
    return data


@pytest.mark.parametrize("changes, message", [
    ({"tasks": []}, r"^tasks: list at least one task"),
    ({"tasks": ["semseg", "semseg"]}, r"^tasks: duplicates"),
    ({"epochs": 3}, r"^epochs: unknown key; accepted here: name, tasks, experiments, dataset"),
    ({"train": {"epochs": 0}}, r"^train.epochs: 0 must be >= 1"),
    ({"train": {"epochs": "ten"}}, r"^train.epochs: expected an integer, got 'ten'"),
    ({"train": {"seeds": [-1]}}, r"^train.seeds: \[-1\] must be distinct integers >= 0"),
    ({"train": {"eval_batch_size": 0}}, r"^train.eval_batch_size: 0 must be >= 1"),
    ({"resources": {"gpus_per_worker": -1}}, r"^resources.gpus_per_worker: -1.0 must be a number >= 0"),
    ({"search": {"batch_sizes": [0]}}, r"^search.batch_sizes\[0\]: 0 must be >= 1"),
    ({"search": {"optimizers": ["adamw"]}}, r"^search.optimizers\[0\]: 'adamw' is not one of adam, sgd"),
    ({"search": {"schedulers": ["cosine"]}}, r"^search.schedulers\[0\]: 'cosine' is not one of poly, step"),
    ({"experiments": []}, r"^experiments: list at least one experiment"),
    ({"experiments": [{"name": "m", "balancer": {"nme": "fixed"}}]}, r"^experiments\[0\].balancer.nme: unknown key"),
    ({"experiments": [{"architecture": "mtl_baseline"}]}, r"^experiments\[0\].name: required, but missing"),
    ({"primary_task": "flow"}, r"^primary_task: 'flow' is not one of tasks"),
    ({"name": "a/b"}, r"^name: 'a/b' must be"),
])
def test_structural_errors_name_the_field(changes, message):
    with pytest.raises(SpecError, match=message):
        load_spec(quick(**changes))


@pytest.mark.parametrize("changes, message", [
    ({"experiments": [{"name": "m", "balancer": "magic"}]},
     r"^experiments\[0\].balancer.name: unknown balancer 'magic'; valid: .*fixed"),
    ({"experiments": [{"name": "m", "architecture": "nope"}]},
     r"^experiments\[0\].architecture.name: unknown architecture 'nope'; valid: .*mtl_baseline"),
    ({"dataset": {"name": "imagenet"}}, r"^dataset.name: unknown dataset 'imagenet'; valid: .*synthetic"),
    ({"tasks": ["semseg", "flow"]}, r"^tasks: \['flow'\] not offered by dataset 'synthetic'"),
    ({"backbone": "vgg"}, r"^backbone.name: unknown backbone 'vgg'"),
    ({"experiments": [{"name": "m", "balancer": {"name": "fixed", "params": {"weights": {"flow": 1}}}}]},
     r"^experiments\[0\].balancer.params: .*unknown tasks \['flow'\]"),
    ({"experiments": [{"name": "m", "balancer": {"name": "fixed", "params": {"temperature": 2}}}]},
     r"^experiments\[0\].balancer.params: balancer 'fixed'.temperature: unknown key; accepted here: weights$"),
    ({"search": {"schedulers": []}}, r"^search: the filters select none"),
    ({"dataset": {"name": "synthetic", "labels": {"setting": "onelabels"}}},
     r"^dataset.labels.setting: unknown setting 'onelabels'; valid settings: full, onelabel, "),
    ({"dataset": {"name": "synthetic", "labels": {"settings": "onelabel"}}},
     r"^dataset.labels.settings: unknown key; valid keys: setting, seed"),
    ({"dataset": {"name": "synthetic", "labels": {"weights_file": "/nonexistent/onelabel.pth"}}},
     r"^dataset.labels.weights_file: /nonexistent/onelabel.pth: not a readable .pth file"),
    ({"experiments": [{"name": "m", "architecture": "single_task"}]},
     r"^experiments\[0\].architecture: 'single_task' takes exactly one task, the study has 5"),
    ({"experiments": [{"name": "m", "balancer": "ial"}]},
     r"^experiments\[0\].balancer.params: balancer 'ial': primary_task is required"),
    ({"dataset": {"name": "synthetic", "params": {"image_size": 7}}}, r"^dataset.params: .*image_size"),
])
def test_registry_errors_name_the_field(changes, message):
    with pytest.raises(SpecError, match=message):
        validate(load_spec(quick(**changes)))


def test_yaml_spec_and_cli_error(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(quick(experiments=[{"name": "m", "balancer": "magic"}])))
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "experiments[0].balancer.name: unknown balancer 'magic'" in err
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


def test_unreadable_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="broken.yaml: not valid YAML"):
        load_spec(str(path))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_spec(name):
    spec = load_spec(preset(name))
    assert isinstance(spec, StudySpec)
    validate(spec)  # names, params, tasks and models: no data is read, so real-data presets too
    validate(smoke(spec))


def test_quickstart_expands_to_baselines_and_mtl():
    spec = load_spec(preset("quickstart"))
    info = validate(spec)
    single, multi = expand(spec, info, data_root=None)
    assert sorted(e.name for e in single) == sorted(f"single_task/{t}" for t in spec.tasks)
    assert [e.name for e in multi] == ["mtl_baseline"]
    # every model gets the same grid: the survey grid-searches single-task networks too
    assert all(e.settings == multi[0].settings for e in single)
    assert len(multi[0].settings) == 2
    configs = single[0].trial_configs()
    assert configs[0].model.architecture.name == "single_task" and len(configs[0].tasks) == 1


def test_smoke_keeps_one_setting_and_shrinks_data():
    spec = smoke(load_spec(preset("survey_synthetic")))
    info = validate(spec)
    assert len(settings_of(spec, info)) == 1
    assert spec.train.epochs == 2 and spec.dataset.params["num_train"] <= 256


def test_worker_group_that_cannot_fit_is_refused():
    from orchestrator.spec import ResourcesSpec
    from orchestrator.tuning import check_fits, max_concurrent

    cluster = {"CPU": 2.0}
    check_fits(ResourcesSpec(workers_per_trial=2), cluster)
    assert max_concurrent(ResourcesSpec(workers_per_trial=2), cluster) == 1
    assert max_concurrent(ResourcesSpec(workers_per_trial=1), cluster) == 2
    with pytest.raises(SpecError, match=r"^resources: one trial's worker group needs 3 CPU .* has 2; lower"):
        check_fits(ResourcesSpec(workers_per_trial=3), cluster)
    with pytest.raises(SpecError, match=r"needs 1 GPU .* has 0"):
        check_fits(ResourcesSpec(gpus_per_worker=1), cluster)


# -- plan-time checks through `mtl run`: refused before Ray starts ---------------------------------
@pytest.fixture
def no_ray(monkeypatch):
    """`mtl run` must refuse before Ray (or any data work) starts: starting Ray fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr("orchestrator.study.start_ray", refuse)


def _run(tmp_path, capsys, spec, *flags):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    code = main(["run", str(path), "--storage", str(tmp_path / "runs"), *flags])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "train.epochs: 0 must be >= 1 (set by --epochs)"),
    (["--gpus-per-worker", "-1"], "resources.gpus_per_worker: -1.0 must be a number >= 0 (set by --gpus-per-worker)"),
    (["--workers-per-trial", "0"], "resources.workers_per_trial: 0 must be >= 1 (set by --workers-per-trial)"),
])
def test_bad_command_line_overrides_are_refused(tmp_path, capsys, no_ray, flags, message):
    code, err = _run(tmp_path, capsys, quick(), *flags)
    assert code == 2 and err == f"mtl run: invalid study spec: {message}"
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def two_towers(monkeypatch):
    """An architecture with no single shared representation (each task its own backbone), registered
    for the test only: cross-stitch-like models are the real ones this check is for."""
    from torch import nn

    from trainables.architectures.base import MultiTaskModel, params_of
    from trainables.registry import ARCHITECTURES

    class TwoTowers(MultiTaskModel):
        """One backbone and head per task: nothing shared."""

        def __init__(self, tasks, make_backbone, make_head, params=None, **kwargs):
            super().__init__(tasks, params, **kwargs)
            self.towers = nn.ModuleDict({n: make_backbone() for n in tasks})
            self.heads = nn.ModuleDict({n: make_head(t, self.towers[n].out_channels) for n, t in tasks.items()})

        def forward(self, x):
            return self.resize_outputs({n: self.heads[n](self.towers[n](x)) for n in self.tasks}, x.shape[-2:])

        def shared_parameters(self):
            return params_of(self.towers)

        def task_specific_parameters(self, task):
            return params_of(self.heads[task])

    monkeypatch.setitem(ARCHITECTURES._items, "two_towers", TwoTowers)
    TwoTowers.plugin_kind, TwoTowers.plugin_name = "architecture", "two_towers"
    return "two_towers"


def test_incompatible_balancer_architecture_pair_is_refused_before_ray(tmp_path, capsys, no_ray, two_towers):
    spec = quick(experiments=[{"name": "m", "architecture": two_towers, "balancer": "mgda"}])
    code, err = _run(tmp_path, capsys, spec)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("mtl run: invalid study spec: experiments[0]: balancer 'mgda' balances gradients w.r.t. "
                          "the shared representation, but architecture 'two_towers' has no single shared representation")
    assert not (tmp_path / "runs").exists()
    # the parameter-level variant of the same balancer is a valid pair; so is a loss-level balancer
    for balancer in ({"name": "mgda", "params": {"variant": "params"}}, "uncertainty", "pcgrad"):
        validate(load_spec(quick(experiments=[{"name": "m", "architecture": two_towers, "balancer": balancer}])))
    for balancer in ("ial", {"name": "imtl", "params": {"mode": "g"}}):
        with pytest.raises(SpecError, match=r"^experiments\[0\]: balancer '(ial|imtl)' balances gradients"):
            validate(load_spec(quick(primary_task="depth",
                                     experiments=[{"name": "m", "architecture": two_towers, "balancer": balancer}])))


def test_pretrained_weights_that_cannot_be_fetched_stop_the_run_before_ray(tmp_path, capsys, no_ray, monkeypatch):
    """`pretrained: imagenet` on a machine without internet: one line before Ray, saying how to pass
    a local file (the download is refused here; tests never open a connection)."""
    import torch
    from urllib.error import URLError

    def offline(url, dst, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    spec = quick(backbone={"name": "resnet18", "params": {"pretrained": "imagenet"}})
    code, err = _run(tmp_path, capsys, spec)
    assert code == 2 and len(err.splitlines()) == 1
    assert "backbone 'resnet18': pretrained: imagenet needs resnet18-f37072fd.pth" in err
    assert "pass backbone.params.weights_path: /path/to/resnet18-f37072fd.pth" in err
    assert not (tmp_path / "runs").exists()

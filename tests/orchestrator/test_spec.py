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
    ({"epochs": 3}, r"^epochs: unknown field; valid fields here: \["),
    ({"train": {"epochs": 0}}, r"^train.epochs: 0 must be >= 1"),
    ({"train": {"epochs": "ten"}}, r"^train.epochs: expected int, got 'ten'"),
    ({"experiments": [{"name": "m", "balancer": {"nme": "fixed"}}]}, r"^experiments\[0\].balancer.nme: unknown field"),
    ({"experiments": [{"architecture": "mtl_baseline"}]}, r"^experiments\[0\].name: required field is missing"),
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
     r"^experiments\[0\].balancer.params: .*unknown parameters \['temperature'\]"),
    ({"search": {"optimizers": ["rmsprop"]}}, r"^search: the filters select none"),
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
    assert configs[0].architecture == "single_task" and len(configs[0].tasks) == 1


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

"""Registry contract: loud on duplicates and unknown names; every kind populated; every plug-in's
``Params`` dataclass is the one source of its keys, checked the same way for every kind."""
import dataclasses
import inspect

import pytest
import torch

import trainables  # noqa: F401
from orchestrator.cli import main
from orchestrator.grouping import GROUPINGS
from trainables.plugins import NoParams, make_params
from trainables.registry import REGISTRIES, Registry, RegistryError
from trainables.schema import ConfigError, field_names

KINDS = {**REGISTRIES, GROUPINGS.kind: GROUPINGS}  # the data plane's kinds and the control plane's


def test_duplicate_name_raises_and_names_both_places():
    reg = Registry("widget")

    @reg.register("a")
    class A:
        pass

    with pytest.raises(RegistryError, match="duplicate widget 'a'.*A"):
        @reg.register("a")
        class B:
            pass


def test_unknown_name_lists_valid_names():
    reg = Registry("widget")
    reg.register("alpha")(object)
    reg.register("beta")(object)
    with pytest.raises(RegistryError) as err:
        reg.get("gamma")
    assert str(err.value) == "unknown widget 'gamma'; valid widget names: alpha, beta"


def test_names_must_be_snake_case():
    with pytest.raises(ValueError, match="lower_snake_case"):
        Registry("widget").register("BadName")


@pytest.mark.parametrize("kind, expected", [
    ("dataset", "synthetic"), ("task", "semseg"), ("task", "depth"), ("task", "normals"),
    ("task", "edge"), ("task", "scene"), ("backbone", "resnet18"), ("backbone", "resnet50"),
    ("backbone", "tiny_cnn"), ("head", "aspp"), ("head", "conv"), ("architecture", "single_task"),
    ("architecture", "mtl_baseline"), ("balancer", "fixed"),
])
def test_builtin_plugins_registered(kind, expected):
    assert expected in REGISTRIES[kind]


def test_every_registered_item_has_a_summary_line():
    for kind, registry in REGISTRIES.items():
        for name in registry.names():
            assert registry.summary(name), f"{kind} {name!r} has no docstring"


def test_mtl_list_prints_every_kind(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind, registry in REGISTRIES.items():
        assert f"{kind}:" in out
        for name in registry.names():
            assert f"  {name}" in out
    assert "quickstart" in out


def test_mtl_list_unknown_kind_fails(capsys):
    assert main(["list", "widgets"]) == 2
    assert "unknown kind 'widgets'" in capsys.readouterr().err


# -- the plug-in platform: one Params dataclass per plug-in, one check for every kind ------------
# the arguments a plug-in's constructor takes besides its parameters, per kind
STRUCTURAL = {"balancer": {"task_names", "context"}, "architecture": {"tasks", "make_backbone", "make_head"},
              "backbone": set(), "head": {"in_channels", "out_channels", "low_channels"}, "task": {"name"},
              "dataset": {"root", "split", "tasks", "augment"}, "grouping": set(), "regulariser": {"tasks", "context"}}
PLUGINS = [(kind, name) for kind, registry in KINDS.items() for name in registry.names()]


REQUIRED = {"num_classes": 3}  # the only parameter without a default: a dataset always gives its class count


def _defaults(params_cls) -> dict:
    out = {}
    for f in dataclasses.fields(params_cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            assert f.name in REQUIRED, f"{params_cls.__name__}.{f.name} has no default"
            out[f.name] = REQUIRED[f.name]
    return out


def test_every_kind_is_covered():
    assert set(STRUCTURAL) == set(KINDS)


@pytest.mark.parametrize("kind, name", PLUGINS)
def test_params_dataclass_is_the_one_source_of_keys(kind, name):
    cls = KINDS[kind].get(name)
    params_cls = cls.Params
    assert dataclasses.is_dataclass(params_cls) and params_cls.__dataclass_params__.frozen
    assert (cls.plugin_kind, cls.plugin_name) == (kind, name)
    # the constructor names no hyper-parameter of its own: only structural arguments, params, **kwargs
    signature = inspect.signature(cls.__init__)
    own = {p.name for p in signature.parameters.values()
           if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"params"}
    assert own <= STRUCTURAL[kind], f"{kind} {name!r} takes {sorted(own - STRUCTURAL[kind])} outside its Params"
    # every declared key is accepted (with its default), and nothing else
    defaults = _defaults(params_cls)
    required = {k: v for k, v in defaults.items() if k in REQUIRED}
    assert make_params(params_cls, defaults, cls.label()) == make_params(params_cls, required, cls.label())
    with pytest.raises(ConfigError) as err:
        make_params(params_cls, {**defaults, "no_such_key": 1}, cls.label())
    message = str(err.value)
    assert message.startswith(f"{kind} {name!r}.no_such_key: unknown key; accepted here: ")
    assert message.endswith(", ".join(field_names(params_cls)) or "(none)")


def _build(kind: str, name: str, params: dict):
    """Build plug-in ``name`` of ``kind`` through the product's own builder for that kind."""
    from trainables.build import build_balancer, build_model, describe_dataset
    from trainables.datasets.base import DatasetInfo, make_tasks
    from trainables.plugins import ModelRef, Plugin, RunContext

    ref = Plugin(name, params)
    if kind == "grouping":
        return GROUPINGS.get(name)(params=ref.params)
    if kind == "balancer":
        return build_balancer(ref, ["a", "b"], RunContext(primary_task="a"))
    if kind == "regulariser":
        from trainables.build import build_regularisers

        return build_regularisers([ref], {"a": _task("a"), "b": _task("b")}, RunContext(primary_task="a"))
    if kind == "dataset":
        return describe_dataset(ref)
    if kind == "task":
        info = DatasetInfo(name="fixture", tasks={"t": ref}, input_size=(32, 32))
        return make_tasks(info, ["t"])
    from trainables.registry import ARCHITECTURES

    tasks, model = {"seg": _task("seg")}, ModelRef(**{kind: ref})
    if kind == "architecture":
        info = ARCHITECTURES.get(name).INFO
        if info.task_count:  # as many tasks as the architecture takes (JTRL: exactly two)
            tasks = {f"seg{i}": _task(f"seg{i}") for i in range(info.task_count)}
        if info.needs_multi_scale:  # a backbone with four strides (MTI-Net)
            model = ModelRef(ref, Plugin("tiny_cnn", {"output_stride": 16}))
    with torch.device("meta"):
        return build_model(tasks, model)


def _task(name):
    from trainables.registry import TASKS

    return TASKS.get("semseg")(name, num_classes=3)


@pytest.mark.parametrize("kind, name", PLUGINS)
def test_builder_accepts_exactly_the_params_keys(kind, name):
    """Through the builder of each kind: every key of Params is accepted, an unknown one is refused
    with the plug-in named and the accepted keys listed - before anything is built."""
    params_cls = KINDS[kind].get(name).Params
    defaults = _defaults(params_cls)
    _build(kind, name, defaults)
    with pytest.raises(ValueError, match=rf"{kind} '{name}'.bogus: unknown key; accepted here: "
                                         rf"{', '.join(field_names(params_cls)) or '[(]none[)]'}$"):
        _build(kind, name, {"bogus": 1})


def test_no_params_plugins_say_so():
    from trainables.registry import ARCHITECTURES

    assert ARCHITECTURES.get("mtl_baseline").Params is NoParams

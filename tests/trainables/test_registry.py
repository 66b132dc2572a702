"""Registry contract: loud on duplicates and unknown names; every kind populated."""
import pytest

import trainables  # noqa: F401
from orchestrator.cli import main
from trainables.registry import REGISTRIES, Registry, RegistryError


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

"""The plug-in vocabulary: references, the one converter, the run context, atomic writes."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple, Union

import pytest
import torch

from trainables.atomic import atomic_write
from trainables.build import balancer_info, build_balancer
from trainables.config import TrialConfig
from trainables.plugins import ModelRef, Plugin, RunContext
from trainables.schema import ConfigError, from_plain, to_plain


def test_plugin_reference_shorthands():
    assert Plugin.of("fixed") == Plugin("fixed", {})
    assert Plugin.of({"name": "mgda", "params": {"variant": "params"}}) == Plugin("mgda", {"variant": "params"})
    with pytest.raises(ConfigError, match=r"^balancer.parms: unknown key; accepted here: name, params$"):
        Plugin.of({"name": "mgda", "parms": {}}, "balancer")
    with pytest.raises(ConfigError, match=r"^balancer: expected a mapping, got int 3"):
        Plugin.of(3, "balancer")
    model = ModelRef("single_task", {"name": "resnet50", "params": {"dilated": True}})
    assert model.backbone == Plugin("resnet50", {"dilated": True}) and model.head == Plugin("conv")
    assert from_plain(ModelRef, model.to_dict()) == model


def test_one_shape_from_spec_to_trial_config_and_back():
    cfg = TrialConfig.from_dict({"experiment": "e", "tasks": ["semseg"], "balancer": "uncertainty",
                                 "model": {"backbone": {"name": "resnet18", "params": {"dilated": True}}},
                                 "hp": {"lr": 1, "batch_size": 4}})
    assert cfg.balancer == Plugin("uncertainty") and cfg.model.backbone.params == {"dilated": True}
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.batch_size == 4
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.context == RunContext(primary_task=None, seed=0)


@dataclass(frozen=True)
class _Inner:
    n: int = 1

    def __post_init__(self):
        if self.n < 0:
            raise ConfigError(f"n: {self.n} must be >= 0")


@dataclass(frozen=True)
class _Outer:
    sizes: Tuple[int, int] = (1, 2)
    names: Tuple[str, ...] = ()
    scale: float = 1.0
    inner: Optional[_Inner] = None
    per_task: Union[float, Mapping[str, float]] = 1.0
    table: Mapping[str, float] = field(default_factory=dict)


def test_converter_types_and_paths():
    out = from_plain(_Outer, {"sizes": [3, 4], "names": "a", "scale": 2, "inner": {"n": 2},
                              "per_task": {"a": 1}, "table": {"x": 3}}, "thing")
    assert out == _Outer((3, 4), ("a",), 2.0, _Inner(2), {"a": 1.0}, {"x": 3.0})
    assert to_plain(out) == {"sizes": [3, 4], "names": ["a"], "scale": 2.0, "inner": {"n": 2},
                             "per_task": {"a": 1.0}, "table": {"x": 3.0}}
    cases = [({"sizes": [1]}, r"^thing.sizes: expected 2 values, got 1: \[1\]"),
             ({"scale": "big"}, r"^thing.scale: expected a number, got 'big'"),
             ({"scale": True}, r"^thing.scale: expected a number, got True"),
             ({"inner": {"n": -1}}, r"^thing.inner.n: -1 must be >= 0"),  # Optional: the inner error, not "expected"
             ({"per_task": {"a": "x"}}, r"^thing.per_task.a: expected a number, got 'x'"),
             ({"per_task": "x"}, r"^thing.per_task: expected number or mapping, got 'x'"),
             ({"table": {"x": None}}, r"^thing.table.x: expected a number, got None")]
    for data, message in cases:
        with pytest.raises(ConfigError, match=message):
            from_plain(_Outer, data, "thing")


def test_run_context_reaches_the_plugins_that_use_it():
    """The trial's seed seeds the balancers with random streams unless their params set one; the
    primary task reaches IAL unless its params name one."""
    a = build_balancer("pcgrad", ["x", "y", "z"], RunContext(seed=5))
    b = build_balancer("pcgrad", ["x", "y", "z"], RunContext(seed=5))
    c = build_balancer(Plugin("pcgrad", {"seed": 6}), ["x", "y", "z"], RunContext(seed=5))
    assert torch.equal(a.generator.get_state(), torch.Generator().manual_seed(5).get_state())
    assert torch.equal(a.generator.get_state(), b.generator.get_state())
    assert torch.equal(c.generator.get_state(), torch.Generator().manual_seed(6).get_state())
    assert build_balancer("rlw", ["x", "y"], RunContext(seed=9)).sample().tolist() == \
        build_balancer(Plugin("rlw", {"seed": 9}), ["x", "y"]).sample().tolist()
    assert build_balancer("ial", ["x", "y"], RunContext(primary_task="y")).primary_task == "y"
    assert balancer_info("ial").needs_primary_task and not balancer_info("fixed").needs_primary_task


def test_capabilities_come_from_class_and_params_and_are_frozen():
    assert balancer_info("mgda").grad_target == "representation"
    assert balancer_info({"name": "mgda", "params": {"variant": "params"}}).grad_target == "params"
    assert balancer_info({"name": "imtl", "params": {"mode": "l"}}).needs_task_grads is False
    assert balancer_info({"name": "gradnorm", "params": {"grad_params": "shared"}}).backward_per_task
    built = build_balancer(Plugin("mgda", {"variant": "params"}), ["x", "y"])
    assert built.info == balancer_info(Plugin("mgda", {"variant": "params"}))
    with pytest.raises(Exception):
        built.info.grad_target = "representation"  # frozen: no per-instance overwrite
    with pytest.raises(AttributeError):
        built.grad_target = "representation"  # read-only view of the info


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = str(tmp_path / "sub" / "table.parquet")
    atomic_write(path, lambda tmp: open(tmp, "w").write("old"))
    assert open(path).read() == "old"

    def crash(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, crash)
    assert open(path).read() == "old" and os.listdir(tmp_path / "sub") == ["table.parquet"]

"""Noisy pseudo-tasks (IAL Tables IV-VI, Auto-Lambda's noise task) made from the dataset's own labels."""
from __future__ import annotations

import pytest
import torch

import trainables  # noqa: F401
from trainables.build import build_dataset, build_tasks, describe_dataset
from trainables.config import TrialConfig
from trainables.plugins import Plugin
from trainables.session import Session

BASE = {"name": "synthetic", "params": {"image_size": 32, "num_train": 16, "num_val": 8, "num_test": 8}}
PSEUDO = Plugin("pseudo", {"base": BASE, "pseudo": {
    "semseg_noisy": {"source": "semseg", "kind": "corrupt", "strength": 0.3},
    "depth_blur": {"source": "depth", "kind": "blur", "factor": 4},
    "noise": {"source": "depth", "kind": "noise"}}})


def test_pseudo_tasks_take_their_source_type_and_are_listed():
    info = describe_dataset(PSEUDO)
    assert info.tasks["semseg_noisy"] == info.tasks["semseg"] and info.tasks["noise"] == info.tasks["depth"]
    tasks = build_tasks(PSEUDO, ["semseg", "semseg_noisy", "noise"])
    assert tasks["semseg_noisy"].out_channels == tasks["semseg"].out_channels
    with pytest.raises(ValueError, match="pseudo.bad.source: 'cars' is not a task of 'synthetic'"):
        describe_dataset(Plugin("pseudo", {"base": BASE, "pseudo": {"bad": {"source": "cars"}}}))
    with pytest.raises(ValueError, match="pseudo.x.kind: 'fog' is not one of corrupt, blur, noise"):
        describe_dataset(Plugin("pseudo", {"base": BASE, "pseudo": {"x": {"source": "depth", "kind": "fog"}}}))


def test_pseudo_labels_are_fixed_per_item_and_as_noisy_as_asked(tmp_path):
    ds = build_dataset(PSEUDO, str(tmp_path), "train", ["semseg", "depth", "semseg_noisy", "depth_blur", "noise"])
    a, b = ds[3], ds[3]
    for t in ("semseg_noisy", "depth_blur", "noise"):
        assert torch.equal(a["targets"][t], b["targets"][t]), t  # the same every epoch
        assert bool(a["mask"][t]) == bool(a["mask"]["semseg" if t == "semseg_noisy" else "depth"])
    assert not torch.equal(ds[4]["targets"]["noise"], a["targets"]["noise"])  # a different map per image
    seg, noisy = a["targets"]["semseg"], a["targets"]["semseg_noisy"]
    changed = float((seg != noisy).float().mean())
    assert 0.3 * (1 - 1 / 7) - 0.1 < changed < 0.3 + 0.05  # flipped with p 0.3; a random class may repeat
    depth, blurred = a["targets"]["depth"], a["targets"]["depth_blur"]
    pooled = torch.nn.functional.avg_pool2d(depth[None], 4)[0]
    expected = torch.nn.functional.interpolate(pooled[None], size=depth.shape[-2:], mode="bilinear",
                                               align_corners=False)[0]
    torch.testing.assert_close(blurred, expected)
    # the noise task does not depend on the image: same map whatever the depth
    assert a["targets"]["noise"].shape == depth.shape and abs(float(a["targets"]["noise"].std()) - 1) < 0.2


def test_pseudo_tasks_train_as_auxiliary_tasks(tmp_path):
    from trainables.train_loop import fit

    cfg = TrialConfig(experiment="p", tasks=("semseg", "depth", "semseg_noisy", "noise"),
                      auxiliary_tasks=("semseg_noisy", "noise"), dataset=PSEUDO, data_root=str(tmp_path),
                      epochs=1, max_steps_per_epoch=2, batch_size=4, eval_batch_size=8, lr=1e-3,
                      baseline_val={"semseg/miou": 50.0, "depth/rmse": 1.0}, baseline_test={"semseg/miou": 50.0, "depth/rmse": 1.0})
    last = fit(cfg, Session())
    assert "train/noise/loss" in last and "val/semseg_noisy/miou" in last
    expected = 50.0 * ((last["val/semseg/miou"] - 50.0) / 50.0 - (last["val/depth/rmse"] - 1.0))
    assert last["val_delta_m"] == pytest.approx(expected)  # the pseudo-tasks are not scored


def test_smoke_shrinks_the_wrapped_dataset():
    from orchestrator.plan import smoke
    from orchestrator.spec import load_spec
    from search_spaces import preset

    spec = smoke(load_spec(preset("ial_noisy_synthetic")))
    base = dict(spec.dataset.params)["base"]
    assert base["name"] == "synthetic" and base["params"]["num_train"] == 256 and base["params"]["image_size"] == 32
    assert set(dict(spec.dataset.params)["pseudo"]) == {"semseg_noisy", "noise"}

"""torchvision is imported only when a model that needs it is built.

It costs ~2 s of CPU and ~200 MB in every process that imports it (the study's driver, each Tune
trial driver, each Ray Train worker), so ``import trainables`` and the orchestrator's modules
must not pull it in. Checked in a fresh interpreter: this test process has imported it already.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys

    import torch

    import orchestrator.cli, orchestrator.plan, orchestrator.study, orchestrator.tuning  # noqa: E401,F401
    import trainables  # noqa: F401
    from trainables.build import build_dataset, build_model, build_tasks
    from trainables.plugins import ModelRef, Plugin

    data = Plugin("synthetic", {"image_size": 32, "num_train": 1, "num_val": 1, "num_test": 1})
    tasks = build_tasks(data, ["semseg", "depth"])
    model = build_model(tasks, ModelRef(backbone=Plugin("tiny_cnn", {"widths": [4, 4, 4, 4, 4]})))
    item = build_dataset(data, None, "train", ["semseg", "depth"])[0]
    out = model(item["image"][None])
    print("tiny", sorted(out), tuple(item["image"].shape), "torchvision" in sys.modules)
    with torch.device("meta"):
        build_model(tasks, ModelRef(backbone=Plugin("resnet18")))
    print("resnet18", "torchvision" in sys.modules)
""")


def test_torchvision_is_imported_only_when_a_resnet_is_built(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MTL_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith(("tiny", "resnet18"))]
    assert lines == ["tiny ['depth', 'semseg'] (3, 32, 32) False", "resnet18 True"], done.stdout

"""TrialConfig: everything one training run needs, as a frozen dataclass.

Tune's ``config`` dicts and the single-task actor's jobs are turned into a ``TrialConfig`` at
once (``TrialConfig.from_dict``, through ``trainables/schema.py``): an unknown key, a wrong type
or a bad value is an error naming the field. Plug-ins are ``Plugin`` references and the model is
one ``ModelRef``, the same types the study spec and the builders use; each plug-in checks its
parameters against its own ``Params`` dataclass when it is built.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from trainables.optim import OPTIMIZERS, SCHEDULERS
from trainables.plugins import ModelRef, Plugin, RunContext
from trainables.schema import ConfigError, from_plain, to_plain

# fields that change where a run writes, not what it computes: left out of every config hash (the
# results' config_hash and setting_hash, the baseline cache key), so caches made before they existed stay valid
HASH_NEUTRAL: Tuple[str, ...] = ("events_dir",)
AMP_MODES: Tuple[str, ...] = ("off", "bf16", "fp16")


@dataclass(frozen=True)
class Runtime:
    """How a run uses its device: switches for speed, some of which move the numbers a little.

    Attributes:
        amp: mixed precision of the forward passes (training and evaluation): "off" (fp32),
            "bf16" (``torch.autocast`` to bfloat16: CPUs, and GPUs from Ampere on) or "fp16"
            (float16 with a ``GradScaler``: CUDA only, and only with loss-level balancers, see
            ``trainables/train_loop.py``). Losses and metrics are always computed in fp32.
        channels_last: the model's weights and the image batches in NHWC memory layout
            (faster convolutions on tensor cores); the same function up to float rounding.
        cudnn_benchmark: cuDNN times its convolution algorithms for each input shape and keeps
            the fastest (CUDA only, ignored on a CPU); its choice may differ between runs.
        loader_workers: worker processes of the training and evaluation DataLoaders (0: batches
            are loaded in the training process).
        pin_memory: batches in page-locked host memory for faster copies to the GPU (CUDA only,
            ignored on a CPU).
    """

    amp: str = "off"
    channels_last: bool = False
    cudnn_benchmark: bool = False
    loader_workers: int = 0
    pin_memory: bool = False

    # the switches that may change what a run computes (float rounding, cuDNN's algorithm):
    # when not at their defaults they enter the config hash; the others change speed only
    NUMERIC = ("amp", "channels_last", "cudnn_benchmark")

    def __post_init__(self):
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp: {self.amp!r} is not one of {AMP_MODES}; use 'off' (fp32), 'bf16' or, on a GPU, 'fp16'")
        for name in ("channels_last", "cudnn_benchmark", "pin_memory"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: {getattr(self, name)!r} must be true or false")
        w = self.loader_workers
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ConfigError(f"loader_workers: {w!r} must be an integer >= 0 (0: load in the training process)")

    def hashed(self) -> Dict[str, Any]:
        """The ``NUMERIC`` switches that differ from their defaults (empty: hash as before they existed)."""
        default = Runtime()
        return {n: getattr(self, n) for n in self.NUMERIC if getattr(self, n) != getattr(default, n)}


@dataclass(frozen=True)
class TrialConfig:
    """One training run of one model on one hyper-parameter setting.

    Attributes:
        experiment: the experiment's name in the study (e.g. "mtl_baseline", "single_task/depth").
        tasks: the tasks the model learns, in order.
        dataset: the dataset plug-in and its parameters; data_root: its folder (None: the
            embedded synthetic data's cache).
        model: architecture, backbone and head (``ModelRef``); balancer: the loss balancer.
        optimizer/lr: the survey grid's optimiser ("sgd" uses momentum 0.9) and initial lr.
        scheduler: "poly" (lr * (1 - it/max_it) ** poly_power, per step) or "step" (lr x 0.1
            at each of ``step_milestones``, given as fractions of the epochs).
        max_steps_per_epoch: cap on training steps per epoch (smoke runs); None = full epoch.
        baseline_val/baseline_test: the single-task baselines' metrics ("task/metric" -> value)
            that Delta_m is computed against; empty when the run is itself a baseline.
        primary_task: the run's primary task (auxiliary learning), told to plug-ins through
            ``context``.
        label_file: a label-mask file (trainables/datasets/partial.py) applied to the training
            split, so that every model of a study sees the same partial labels.
        init_checkpoints: task -> the checkpoint (a folder holding state.pt, or the file) of a
            trained single-task network that the model starts from; the study fills it for
            architectures with ``ArchitectureInfo.init_from_single_task`` (cross-stitch, NDDR).
        init_from: the checkpoint of a related model this one grows from (e.g. the previous round
            of a FAFS widening); the architecture's ``load_parent`` maps its weights.
        auxiliary_tasks: those of ``tasks`` that are trained and supervised but not scored:
            left out of Delta_m and of the score Tune optimises; their metrics are still logged.
        regularisers: cross-task losses added outside the balancer (``trainables/regularisers``).
        teacher_checkpoints: task -> the checkpoint of a trained single-task network that
            regularisers with ``needs_teachers`` (MuST) use as a frozen teacher; the study fills it.
        events_dir: the folder that holds this run's TensorBoard folder (``trainables/tracking.py``:
            ``<events_dir>/<run_name>``, written by rank 0); None: no events. Where a run logs changes
            nothing it computes, so ``config_hash`` leaves it out (``HASH_NEUTRAL``).
        runtime: device switches (mixed precision, memory layout, cuDNN autotuning, loader
            workers, pinned memory; ``Runtime``). Only those that may change the numbers enter
            ``config_hash``, and only when not at their defaults.
    """

    experiment: str
    tasks: Tuple[str, ...]
    dataset: Plugin = Plugin("synthetic")
    data_root: Optional[str] = None
    model: ModelRef = ModelRef()
    balancer: Plugin = Plugin("fixed")
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scheduler: str = "poly"
    poly_power: float = 0.9
    step_milestones: Tuple[float, ...] = (0.6, 0.85)
    batch_size: int = 8
    eval_batch_size: int = 64
    epochs: int = 10
    max_steps_per_epoch: Optional[int] = None
    seed: int = 0
    baseline_val: Mapping[str, float] = field(default_factory=dict)
    baseline_test: Mapping[str, float] = field(default_factory=dict)
    primary_task: Optional[str] = None
    label_file: Optional[str] = None
    init_checkpoints: Mapping[str, str] = field(default_factory=dict)
    init_from: Optional[str] = None
    auxiliary_tasks: Tuple[str, ...] = ()
    regularisers: Tuple[Plugin, ...] = ()
    teacher_checkpoints: Mapping[str, str] = field(default_factory=dict)
    events_dir: Optional[str] = None
    runtime: Runtime = Runtime()

    def __post_init__(self):
        for name in ("dataset", "balancer"):  # a name or a {name, params} mapping is a Plugin
            object.__setattr__(self, name, Plugin.of(getattr(self, name), name))
        object.__setattr__(self, "model", from_plain(ModelRef, self.model, "model"))
        object.__setattr__(self, "runtime", from_plain(Runtime, self.runtime, "runtime"))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "step_milestones", tuple(self.step_milestones))
        object.__setattr__(self, "auxiliary_tasks", tuple(self.auxiliary_tasks))
        object.__setattr__(self, "regularisers", tuple(Plugin.of(r, f"regularisers[{i}]")
                                                       for i, r in enumerate(self.regularisers)))
        if not self.tasks:
            raise ConfigError("tasks: at least one task is required")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"tasks: duplicates in {list(self.tasks)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: {self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler: {self.scheduler!r} is not one of {SCHEDULERS}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr: {self.lr!r} must be a positive number")
        for name in ("batch_size", "eval_batch_size", "epochs"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"{name}: {value!r} must be an integer >= 1")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError(f"max_steps_per_epoch: {self.max_steps_per_epoch!r} must be >= 1 or null")
        if any(not 0 < m < 1 for m in self.step_milestones):
            raise ConfigError(f"step_milestones: {self.step_milestones} must be fractions in (0, 1)")
        if self.primary_task is not None and self.primary_task not in self.tasks:
            raise ConfigError(f"primary_task: {self.primary_task!r} is not one of the tasks {list(self.tasks)}")
        stray = [t for t in self.auxiliary_tasks if t not in self.tasks]
        if stray:
            raise ConfigError(f"auxiliary_tasks: {stray} are not among the tasks {list(self.tasks)}")
        if len(self.auxiliary_tasks) >= len(self.tasks):
            raise ConfigError(f"auxiliary_tasks: {list(self.auxiliary_tasks)} leave no scored task among {list(self.tasks)}")
        unknown = sorted(set(self.init_checkpoints) - set(self.tasks))
        if unknown:
            raise ConfigError(f"init_checkpoints: tasks {unknown} are not among the tasks {list(self.tasks)}")

    @property
    def scored_tasks(self) -> Tuple[str, ...]:
        """The tasks Delta_m and the score read: ``tasks`` without the auxiliary ones."""
        return tuple(t for t in self.tasks if t not in self.auxiliary_tasks)

    @property
    def context(self) -> RunContext:
        """What this run tells the plug-ins that use it."""
        return RunContext(primary_task=self.primary_task, seed=self.seed)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "TrialConfig":
        """Build from plain data; a nested ``hp`` dict (one grid setting) is merged in."""
        flat = dict(config)
        flat.update(flat.pop("hp", None) or {})
        return from_plain(cls, flat, "")

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(to_plain(self)))

    def config_hash(self, exclude: Tuple[str, ...] = ()) -> str:
        """Content hash of the resolved config (hex, 16 chars), without ``HASH_NEUTRAL`` and ``exclude``;
        of ``runtime`` only ``Runtime.hashed()``, so a config at the default runtime hashes as before
        the field existed (cached baselines stay valid)."""
        plain = {k: v for k, v in self.to_dict().items() if k not in exclude + HASH_NEUTRAL + ("runtime",)}
        if "runtime" not in exclude and self.runtime.hashed():
            plain["runtime"] = self.runtime.hashed()
        return stable_hash(plain)


def stable_hash(obj: Any) -> str:
    payload = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]

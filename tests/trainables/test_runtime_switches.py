"""Device switches (``TrialConfig.runtime``): mixed precision, channels-last, cuDNN autotuning,
loader workers and pinned memory. On the CPU: bf16 autocast trains close to fp32 with fp32
parameters, channels-last computes the same losses, loader workers give the same batches, the
cache keys of default configs do not move, and every bad value or combination is refused in one
line. The CUDA paths (fp16 with its GradScaler, cudnn.benchmark) are tested where a GPU is."""
import math

import pytest
import torch

import trainables  # noqa: F401  (registers every plug-in)
from orchestrator import cli
from orchestrator.plan import expand, validate
from orchestrator.spec import SpecError, TrainSpec, load_spec
from search_spaces import preset
from trainables import steps, train_loop
from trainables.build import build_balancer, build_model, build_tasks
from trainables.config import Runtime, TrialConfig
from trainables.plugins import Plugin
from trainables.schema import ConfigError
from trainables.session import Session
from trainables.steps import training_step
from trainables.train_loop import check_runtime, fit

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def tiny(data_root, epochs=1, steps=2, **kw):
    """Two tasks of the synthetic scenes at 32x32, tiny_cnn, batches of 4."""
    return TrialConfig(experiment="t", tasks=("semseg", "depth"), data_root=data_root,
                       dataset=Plugin("synthetic", {"image_size": 32, "num_train": 16, "num_val": 8, "num_test": 8}),
                       batch_size=4, eval_batch_size=8, epochs=epochs, max_steps_per_epoch=steps, lr=1e-3, **kw)


class Recording(Session):
    """A CPU session that keeps the trained model (after each epoch)."""

    def __init__(self):
        super().__init__(device=torch.device("cpu"))
        self.model = None

    def after_epoch(self, epoch, model, tasks):
        self.model = model


# -- the config and its hash -------------------------------------------------------------------------
# TrialConfig(experiment="e", tasks=("semseg", "depth")).config_hash() (and with seed / experiment
# excluded, as the results' setting_hash and the baseline cache key do), computed before the
# runtime field existed
HASHES_BEFORE = {(): "c4485c0e97866f2f", ("seed",): "af4f70f58c286c74", ("experiment",): "d8e2a3c956765add"}


def test_default_runtime_keeps_every_hash_from_before_the_field():
    cfg = TrialConfig(experiment="e", tasks=("semseg", "depth"))
    assert {ex: cfg.config_hash(exclude=ex) for ex in HASHES_BEFORE} == HASHES_BEFORE
    speed_only = TrialConfig(experiment="e", tasks=("semseg", "depth"),
                             runtime=Runtime(loader_workers=4, pin_memory=True))
    assert speed_only.config_hash() == HASHES_BEFORE[()]


def test_numeric_switches_key_the_hash_each_its_own():
    base = dict(experiment="e", tasks=("semseg", "depth"))
    hashes = {TrialConfig(**base, runtime=r).config_hash()
              for r in (Runtime(), Runtime(amp="bf16"), Runtime(amp="fp16"), Runtime(channels_last=True),
                        Runtime(cudnn_benchmark=True), Runtime(amp="bf16", channels_last=True))}
    assert len(hashes) == 6
    # a speed switch on top of a numeric one still changes nothing
    assert (TrialConfig(**base, runtime=Runtime(amp="bf16", loader_workers=2)).config_hash()
            == TrialConfig(**base, runtime=Runtime(amp="bf16")).config_hash())


def test_runtime_round_trips_through_plain_data():
    cfg = TrialConfig(experiment="e", tasks=("semseg",), runtime=Runtime(amp="bf16", channels_last=True,
                                                                       loader_workers=3, pin_memory=True))
    plain = cfg.to_dict()
    assert plain["runtime"] == {"amp": "bf16", "channels_last": True, "cudnn_benchmark": False,
                                "loader_workers": 3, "pin_memory": True}
    assert TrialConfig.from_dict(plain) == cfg
    old = {k: v for k, v in plain.items() if k != "runtime"}  # a checkpoint's config from before the field
    assert TrialConfig.from_dict(old).runtime == Runtime()


@pytest.mark.parametrize("runtime, message", [
    ({"amp": "fp8"}, r"^runtime.amp: 'fp8' is not one of \('off', 'bf16', 'fp16'\); use 'off' \(fp32\), 'bf16'"),
    ({"amp": True}, r"^runtime.amp: expected a string, got True"),
    ({"channels_last": "yes"}, r"^runtime.channels_last: expected true or false, got 'yes'"),
    ({"loader_workers": -1}, r"^runtime.loader_workers: -1 must be an integer >= 0 \(0: load in the training process\)"),
    ({"loader_workers": 1.5}, r"^runtime.loader_workers: expected an integer, got 1.5"),
    ({"pin_memory": 1}, r"^runtime.pin_memory: expected true or false, got 1"),
    ({"prefetch": 2}, r"^runtime.prefetch: unknown key; accepted here: amp, channels_last, cudnn_benchmark, "),
])
def test_bad_runtime_values_are_refused_naming_the_field(runtime, message):
    plain = TrialConfig(experiment="e", tasks=("semseg",)).to_dict()
    with pytest.raises(ConfigError, match=message):
        TrialConfig.from_dict({**plain, "runtime": runtime})


def test_runtime_checks_its_fields_when_built_directly():
    with pytest.raises(ConfigError, match=r"^cudnn_benchmark: 1 must be true or false"):
        Runtime(cudnn_benchmark=1)
    with pytest.raises(ConfigError, match=r"^loader_workers: True must be an integer >= 0"):
        Runtime(loader_workers=True)


# -- the spec, the plan and the command line -----------------------------------------------------------
@pytest.mark.parametrize("train, message", [
    ({"amp": "half"}, r"^train.amp: 'half' is not one of \('off', 'bf16', 'fp16'\)"),
    ({"loader_workers": -2}, r"^train.loader_workers: -2 must be an integer >= 0"),
    ({"pin_memory": "no"}, r"^train.pin_memory: expected true or false, got 'no'"),
    ({"amp": "fp16"}, r"^train.amp: 'fp16' needs a GPU, and resources.gpus_per_worker is 0; use amp: bf16 "
                      r"\(CPU autocast\) or give each worker a GPU$"),
])
def test_spec_refuses_bad_switches(train, message):
    with pytest.raises(SpecError, match=message):
        load_spec({**preset("quickstart"), "train": train})


def test_train_spec_checks_its_switches_when_built_directly():
    with pytest.raises(SpecError, match=r"^amp: 'half' is not one of"):
        TrainSpec(amp="half")
    with pytest.raises(SpecError, match=r"^channels_last: 1 must be true or false"):
        TrainSpec(channels_last=1)
    assert TrainSpec(amp="fp16").runtime.amp == "fp16"  # fp16 without a GPU is a study rule (resources)


def test_spec_switches_reach_every_trial_config():
    spec = load_spec({**preset("quickstart"), "train": {"amp": "bf16", "channels_last": True, "loader_workers": 2}})
    single, multi = expand(spec, validate(spec), None)
    want = Runtime(amp="bf16", channels_last=True, loader_workers=2)
    assert {e.base.runtime for e in single + multi} == {want}
    assert multi[0].trial_configs()[0].runtime == want


def test_fp16_with_a_gradient_level_balancer_is_refused_before_ray():
    data = {**preset("quickstart"), "train": {"amp": "fp16"}, "resources": {"gpus_per_worker": 1},
            "experiments": [{"name": "fixed", "balancer": "fixed"}, {"name": "pc", "balancer": "pcgrad"}]}
    spec = load_spec(data)
    with pytest.raises(SpecError, match=r"^train.amp: 'fp16' cannot serve experiments\[1\].balancer 'pcgrad', "
                                        r"which reads or writes gradients outside the loss-scaled backward pass"):
        expand(spec, validate(spec), None)


def test_run_flags_override_the_spec():
    args = cli._parser().parse_args(["run", "quickstart", "--amp", "bf16", "--channels-last", "--cudnn-benchmark",
                                     "--loader-workers", "2", "--pin-memory"])
    train = cli._override(cli._load("quickstart"), args).train
    assert train.runtime == Runtime(amp="bf16", channels_last=True, cudnn_benchmark=True, loader_workers=2,
                                    pin_memory=True)
    untouched = cli._override(cli._load("quickstart"), cli._parser().parse_args(["run", "quickstart"]))
    assert untouched.train.runtime == Runtime()
    with pytest.raises(SpecError, match=r"^train.amp: 'fp16' needs a GPU.* \(set by --amp\)$"):
        cli._override(cli._load("quickstart"), cli._parser().parse_args(["run", "--amp", "fp16"]))
    with pytest.raises(SpecError, match=r"^train.loader_workers: -1 must be .* \(set by --loader-workers\)$"):
        cli._override(cli._load("quickstart"), cli._parser().parse_args(["run", "--loader-workers", "-1"]))


# -- the train loop on the CPU -------------------------------------------------------------------------
def test_fp16_is_refused_on_a_cpu_and_with_gradient_level_balancers(data_root):
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"^runtime.amp: 'fp16' needs a CUDA device \(autocast on cpu supports "
                                         r"bfloat16\); use 'bf16' or a GPU$"):
        fit(tiny(data_root, runtime=Runtime(amp="fp16")), Session(device=cpu))
    for balancer in ("pcgrad", "mgda", "auto_lambda"):  # params level, representation level, bilevel
        with pytest.raises(ValueError, match=rf"^runtime.amp: 'fp16': balancer '{balancer}' reads or writes "
                                             r"gradients outside the loss-scaled backward pass"):
            check_runtime(tiny(data_root, balancer=balancer, runtime=Runtime(amp="fp16")), cpu)


def test_cuda_only_switches_warn_on_a_cpu(data_root):
    with pytest.warns(UserWarning, match=r"^runtime.cudnn_benchmark and runtime.pin_memory: ignored on a cpu device"):
        check_runtime(tiny(data_root, runtime=Runtime(cudnn_benchmark=True, pin_memory=True)), torch.device("cpu"))


def test_bf16_autocast_trains_close_to_fp32_with_fp32_parameters(data_root):
    fp32 = fit(tiny(data_root, steps=1), Session(device=torch.device("cpu")))
    session = Recording()
    bf16 = fit(tiny(data_root, steps=1, runtime=Runtime(amp="bf16")), session)
    for task in ("semseg", "depth"):  # one step: the epoch mean is the first step's loss
        key = f"train/{task}/loss"
        assert math.isfinite(bf16[key]) and bf16[key] == pytest.approx(fp32[key], rel=0.05)
        assert bf16[key] != fp32[key]  # autocast did run in bfloat16
        assert math.isfinite(bf16[f"val/{task}/loss"])
    assert {p.dtype for p in session.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("balancer, vjp", [("pcgrad", "loop"), ("pcgrad", "batched"), ("mgda", "auto")])
def test_bf16_gradient_level_steps_keep_fp32_gradients(balancer, vjp, monkeypatch):
    """Parameter level (per-task VJPs, one by one or batched) and representation level (Gram
    matrix of the z gradients): fp32 gradients close in direction to the fp32 step's."""
    monkeypatch.setattr(steps, "VJP_MODE", vjp)
    torch.manual_seed(0)
    tasks = build_tasks(Plugin("synthetic", {"image_size": 32}), ["semseg", "depth"])
    model = build_model(tasks, TrialConfig(experiment="e", tasks=("semseg", "depth")).model)
    bal = build_balancer(Plugin(balancer), list(tasks))
    batch = {"image": torch.randn(2, 3, 32, 32),
             "targets": {"semseg": torch.randint(0, 6, (2, 32, 32)), "depth": torch.rand(2, 1, 32, 32)},
             "mask": {"semseg": torch.ones(2, dtype=torch.bool), "depth": torch.ones(2, dtype=torch.bool)}}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ref = training_step(model, bal, tasks, batch, opt)
    ref_grads = [p.grad.clone() for p in model.parameters()]
    got = training_step(model, bal, tasks, batch, opt, amp=torch.bfloat16)
    assert got == pytest.approx(ref, rel=0.05)
    grads = [p.grad for p in model.parameters()]
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in grads]),
                                                torch.cat([g.flatten() for g in ref_grads]), dim=0)
    assert cos > 0.95


def test_channels_last_computes_the_same_losses(data_root):
    session = Recording()
    nhwc = fit(tiny(data_root, epochs=2, runtime=Runtime(channels_last=True)), session)
    nchw = fit(tiny(data_root, epochs=2), Session(device=torch.device("cpu")))
    for key in ("train/semseg/loss", "train/depth/loss", "val/semseg/loss", "val/depth/loss", "val/depth/rmse"):
        assert nhwc[key] == pytest.approx(nchw[key], rel=1e-5, abs=1e-6)
    convs = [p for p in session.model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


def _record_batches(monkeypatch):
    """The images of every training step, in order (``training_step`` wrapped)."""
    seen = []

    def recording(model, balancer, tasks, batch, *args):
        seen.append(batch["image"].clone())
        return training_step(model, balancer, tasks, batch, *args)

    monkeypatch.setattr(train_loop, "training_step", recording)
    return seen


def test_loader_workers_give_the_same_batches_and_losses(data_root, monkeypatch):
    """The shuffled order comes from the loader's generator in the training process, with workers
    or without, over two epochs (a persistent worker loader would change it from epoch 1 on).
    Random flips are drawn in the workers' own generators, so they are off here."""
    monkeypatch.setattr("trainables.datasets.synthetic.random_hflip", lambda image, targets, tasks: (image, dict(targets)))
    runs = {}
    for workers in (0, 2):
        seen = _record_batches(monkeypatch)
        last = fit(tiny(data_root, epochs=2, runtime=Runtime(loader_workers=workers)), Session(device=torch.device("cpu")))
        runs[workers] = (seen, last)
    (seen0, last0), (seen2, last2) = runs[0], runs[2]
    assert len(seen0) == len(seen2) == 4 and all(torch.equal(a, b) for a, b in zip(seen0, seen2))
    assert not torch.equal(seen0[0], seen0[2])  # epoch 1 reshuffles
    for key in ("train/semseg/loss", "train/depth/loss", "val/semseg/loss", "val/depth/rmse", "test/depth/rmse"):
        assert last2[key] == last0[key]


def test_loader_workers_augment_reproducibly(data_root, monkeypatch):
    """With random flips on: the same seed and number of workers give the same batches."""
    seen = []
    for _ in range(2):
        seen.append(_record_batches(monkeypatch))
        fit(tiny(data_root, epochs=2, runtime=Runtime(loader_workers=2)), Session(device=torch.device("cpu")))
    assert all(torch.equal(a, b) for a, b in zip(*seen)) and len(seen[0]) == 4


# -- CUDA only -------------------------------------------------------------------------------------------
@CUDA
def test_fp16_with_grad_scaler_trains_and_checkpoints_the_scaler(data_root, tmp_path):
    session = Session(device=torch.device("cuda"), checkpoint_dir=str(tmp_path / "ckpt"))
    last = fit(tiny(data_root, epochs=2, runtime=Runtime(amp="fp16")), session)
    assert math.isfinite(last["train/semseg/loss"]) and math.isfinite(last["val/depth/rmse"])
    state = train_loop.load_state(str(tmp_path / "ckpt"))
    assert state["scaler"]["scale"] > 0
    assert all(t.dtype == torch.float32 for k, t in state["model"].items() if t.is_floating_point())


@CUDA
def test_cudnn_benchmark_is_set_to_the_run_value_on_cuda(data_root):
    before = torch.backends.cudnn.benchmark
    try:
        fit(tiny(data_root, runtime=Runtime(cudnn_benchmark=True, pin_memory=True, channels_last=True)),
            Session(device=torch.device("cuda")))
        assert torch.backends.cudnn.benchmark is True
        fit(tiny(data_root), Session(device=torch.device("cuda")))
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before

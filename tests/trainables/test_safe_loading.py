"""Safe loading: a planted pickle payload runs no code, wherever the product reads a file a user
or another process could have written - CIFAR-100's python batches (``mtl data check``, a study's
data check), a cached baseline's state.pt, a checkpoint handed to fit, a partial-label .pth - and
each refusal is one line naming the file."""
from __future__ import annotations

import io
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.cli import main
from trainables.datasets import multi_cifar100 as mc
from trainables.datasets.partial import load_label_weights
from trainables.datasets.readers import DataCheckError
from trainables.registry import DATASETS
from trainables.session import Session
from trainables.train_loop import load_state

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling it would create ``marker`` (what a planted file could do instead: anything)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def cifar_dict(n=100):
    """An official-format CIFAR-100 train / test dict: every fine class once per 100 images."""
    fine = np.arange(n) % 100
    coarse = fine // 5  # a valid fine -> superclass assignment: 5 fine classes per superclass
    return {b"batch_label": b"training batch 1 of 1", b"filenames": [b"img.png"] * n,
            b"data": np.random.default_rng(0).integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()}


def meta_dict():
    return {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}


class Py2Pickler(pickle._Pickler):
    """Writes bytes the way Python 2's cPickle wrote ``str`` (SHORT_BINSTRING / BINSTRING), as in
    the files of the official CIFAR-100 python archive (Python 3 writes them via _codecs.encode)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    """``obj`` as the official files are: protocol 2, Python 2 strings, numpy 1's module names."""
    out = io.BytesIO()
    Py2Pickler(out, protocol=2).dump(obj)
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_cifar(root: Path, writer=py2_pickle) -> Path:
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for name in ("train", "test"):
        (base / name).write_bytes(writer(cifar_dict()))
    (base / "meta").write_bytes(writer(meta_dict()))
    return base


def test_official_format_and_python3_pickles_still_load(tmp_path):
    """The restricted unpickler reads what the official archive holds (Python 2 strings,
    numpy.core.multiarray._reconstruct) and files re-saved by Python 3 with protocols 3-5 (its
    protocol 2 writes bytes through _codecs.encode, a global the official files never name)."""
    old = py2_pickle(cifar_dict())
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in old and pickle.SHORT_BINSTRING + b"\x04data" in old
    write_cifar(tmp_path / "py2")
    got = mc.load(str(tmp_path / "py2"), "train")
    assert got["images"].shape == (100, 32, 32, 3) and got["images"].dtype == np.uint8
    np.testing.assert_array_equal(got["images"].transpose(0, 3, 1, 2).reshape(100, 3072), cifar_dict()[b"data"])
    assert mc.verify(str(tmp_path / "py2"))["task_03"] == "super3"
    for protocol in (3, 4, 5):  # 5 stores arrays through numpy's _frombuffer
        base = write_cifar(tmp_path / f"p{protocol}", writer=lambda obj: pickle.dumps(obj, protocol=protocol))
        assert mc._unpickle(str(base / "train"))[b"fine_labels"][:3] == [0, 1, 2]


def test_planted_cifar_payload_is_refused_by_data_check_and_prepare(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    base = write_cifar(tmp_path)
    data = cifar_dict()
    data[b"batch_label"] = Payload(marker)  # one field of an otherwise valid file
    (base / "train").write_bytes(pickle.dumps(data))
    mc.read_file.cache_clear()
    pickle.loads((base / "train").read_bytes())  # the control: a plain pickle.load runs the payload
    assert marker.exists()
    marker.unlink()

    assert main(["data", "check", "--dataset", "multi_cifar100", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{base / 'train'}: not a readable CIFAR-100 pickle" in err and "refused global" in err
    assert re.search(r"refused global (io|builtins)\.open", err)
    with pytest.raises(DataCheckError, match=re.escape(str(base / "train"))):
        DATASETS.get("multi_cifar100").prepare(str(tmp_path))
    write_cifar(tmp_path)  # good data files, a planted meta file
    mc.read_file.cache_clear()
    (base / "meta").write_bytes(pickle.dumps({b"fine_label_names": Payload(marker)}))
    with pytest.raises(DataCheckError, match=re.escape(str(base / "meta")) + ": .*refused global"):
        DATASETS.get("multi_cifar100").prepare(str(tmp_path))
    assert not marker.exists()


def planted_state(path: Path, marker: Path) -> Path:
    """A state.pt that holds a payload beside real tensors (torch.save pickles it as given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 0, "evil": Payload(marker)}, path)
    return path


def test_planted_checkpoint_is_refused_in_one_line_naming_it(tmp_path):
    marker = tmp_path / "MARKER"
    state = planted_state(tmp_path / "cache" / "abc123" / "state.pt", marker)
    torch.load(state, weights_only=False)  # the control: an unrestricted load runs the payload
    assert marker.exists()
    marker.unlink()
    # a cached baseline's checkpoint: Session.restore, what a restarted baseline actor reads
    with pytest.raises(ValueError) as refused:
        Session(device=torch.device("cpu"), checkpoint_dir=str(state.parent)).restore()
    message = str(refused.value)
    assert message.startswith(f"{state}: refused to load") and "\n" not in message
    assert "weights_only=False" not in message  # torch's own text advises the unsafe way out
    # a checkpoint given to fit (cross-stitch / NDDR init, MuST teachers, FAFS parents), by folder or file
    for given in (state.parent, state):
        with pytest.raises(ValueError, match=re.escape(f"{state}: refused to load")):
            load_state(str(given))
    assert not marker.exists()


def test_baseline_actor_reports_the_planted_checkpoint_as_an_error_row(tmp_path):
    """The issue's probe: a state.pt planted in the baseline cache; the actor's run resumes from
    it, which now fails as one row naming the file instead of running the payload."""
    from orchestrator.baselines import RESULT_FILE, BaselineTrainer
    from trainables.config import TrialConfig

    marker = tmp_path / "MARKER"
    out = tmp_path / "cache" / "abc123"
    planted_state(out / "state.pt", marker)
    cfg = TrialConfig(experiment="single_task/depth", tasks=("depth",), model={"architecture": "single_task"},
                      dataset={"name": "synthetic", "params": {"image_size": 32, "num_train": 8, "num_val": 4,
                                                               "num_test": 4}},
                      data_root=str(tmp_path / "data"), epochs=1, batch_size=4, eval_batch_size=4)
    trainer = object.__new__(BaselineTrainer)  # the actor body, without the actor's thread setting
    result = trainer.train(cfg.to_dict(), str(out))
    assert result["status"] == "error" and f"{out / 'state.pt'}: refused to load" in result["error"]
    assert not (out / RESULT_FILE).exists() and not marker.exists()


def test_planted_label_weights_file_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "onelabel.pth"
    torch.save({"labels_weights": torch.ones(4, 2), "evil": Payload(marker)}, path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable .pth file")):
        load_label_weights(str(path), ["semseg", "depth"])
    assert not marker.exists()


def test_project_code_loads_no_pickle_unrestricted():
    """Every torch.load of the project's code passes weights_only=True, np.load never
    allow_pickle=True, and no module calls pickle.load / pickle.loads (CIFAR has its own
    restricted unpickler)."""
    offenders = []
    for folder in ("orchestrator", "trainables", "search_spaces", "cluster"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            for call in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
                if "weights_only=True" not in call.group(0):
                    offenders.append(f"{path.relative_to(ROOT)}: {call.group(0)}")
            for bad in re.findall(r"pickle\.loads?\(|allow_pickle=True|weights_only=False", text):
                offenders.append(f"{path.relative_to(ROOT)}: {bad}")
    assert offenders == []

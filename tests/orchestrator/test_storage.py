"""Object-store storage without Ray: a real S3-compatible server (moto's, on 127.0.0.1 and a free
port, fake credentials) and a ``file://`` store; push/pull round trips, what is skipped, the
one-line refusals of ``check_access``, Ray's own resolver on the same URI, and the refusal of
node-local storage on a multi-node cluster (with a fake ``/proc/mounts``)."""
from __future__ import annotations

import os
import socket
import time
import urllib.request
import uuid

import pyarrow.fs as pafs
import pytest

from orchestrator import storage
from orchestrator.spec import SpecError
from orchestrator.storage import Mirror, check_access, check_shared, is_uri, join, node_local, resolve

BUCKET = "mtl-test"
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}  # no instance-metadata lookups: only 127.0.0.1 is contacted
AWS_UNSET = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")

TREE = {  # relative path -> bytes: nested folders, a binary file, an empty file
    "study/results/run1/status.json": b'{"status": "finished"}\n',
    "study/tune/trial_0/checkpoint/state.pt": bytes(range(256)) * 40,
    "study/empty.txt": b"",
    "_cache/baselines/h1/result.json": b'{"loss": 0.25}\n',
}


@pytest.fixture(scope="module")
def s3_port(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (a free port) with one bucket; fake credentials while it runs."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for key, value in FAKE_AWS.items():
            mp.setenv(key, value)
        for key in AWS_UNSET:
            mp.delenv(key, raising=False)
        missing = str(tmp_path_factory.mktemp("aws") / "none")  # no ~/.aws files of this machine
        mp.setenv("AWS_CONFIG_FILE", missing)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            port = server.get_host_and_port()[1]
            pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                              allow_bucket_creation=True).create_dir(BUCKET)
            yield port
        finally:
            server.stop()


def s3_uri(port: int, bucket: str = BUCKET) -> str:
    """A fresh prefix in ``bucket``, so that tests share the server but not their objects."""
    return f"s3://{bucket}/t-{uuid.uuid4().hex[:8]}?endpoint_override=127.0.0.1:{port}&scheme=http"


@pytest.fixture(params=["s3", "file"])
def store(request, tmp_path):
    """A store URI: a fresh prefix on the moto server, or a fresh local folder as ``file://``."""
    if request.param == "s3":
        return s3_uri(request.getfixturevalue("s3_port"))
    return f"file://{tmp_path / 'store'}"


def write_tree(root, tree) -> None:
    for rel, data in tree.items():
        path = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)


def read_tree(root) -> dict:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if name not in (storage.MANIFEST, ".mtl-mirror.lock"):
                with open(path, "rb") as fh:
                    out[os.path.relpath(path, root).replace(os.sep, "/")] = fh.read()
    return out


def remote_files(uri: str) -> set:
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return {os.path.relpath(i.path, path) for i in infos if i.type == pafs.FileType.File}


def test_is_uri_and_join():
    assert is_uri("s3://b/x") and is_uri("gs://b") and is_uri("file:///tmp/x")
    assert not is_uri("/tmp/studies") and not is_uri("studies") and not is_uri("./a://b")
    q = "?endpoint_override=127.0.0.1:9000&scheme=http"
    assert join(f"s3://b/studies{q}", "nyud", "tune/") == f"s3://b/studies/nyud/tune{q}"  # before the query
    assert join("s3://b", "nyud") == "s3://b/nyud"
    assert join("s3://b/x/", "") == "s3://b/x"


@pytest.mark.parametrize("uri, words", [
    ("s4://bucket/x", ["Unrecognized filesystem type", "use s3://BUCKET/PREFIX"]),
    ("s3://bucket/x?connect_timeout=1", ["Unexpected query parameter", "endpoint_override=HOST:PORT"]),
    ("s3://?endpoint_override=127.0.0.1:9&scheme=http", ["names no bucket"]),
    ("studies/nyud", ["not a URI"]),
])
def test_resolve_refuses_in_one_line(uri, words):
    with pytest.raises(SpecError) as err:
        resolve(uri)
    msg = str(err.value)
    assert msg.startswith(f"--storage {uri!r}") and "\n" not in msg
    assert all(w in msg for w in words), msg


def test_messages_blank_a_secret_in_the_uri():
    with pytest.raises(SpecError) as err:
        resolve("s4://KEY:SECRET@bucket/x")
    assert "SECRET" not in str(err.value) and "s4://***@bucket/x" in str(err.value)


def test_push_pull_round_trip(store, tmp_path):
    first = Mirror(store, str(tmp_path / "a"))
    write_tree(first.staging, TREE)
    assert first.push() == len(TREE)
    assert remote_files(store) == set(TREE)  # the manifest and its lock stay local
    assert first.push() == 0  # nothing changed

    second = Mirror(store, str(tmp_path / "b"))
    assert second.pull() == len(TREE)
    assert read_tree(second.staging) == TREE  # the same bytes, binary and empty files included
    assert second.pull() == 0

    changed = {**TREE, "study/results/run1/status.json": b'{"status": "failed", "error": "x"}\n'}
    write_tree(first.staging, {"study/results/run1/status.json": changed["study/results/run1/status.json"]})
    assert first.push() == 1  # only the changed file
    assert second.pull() == 1
    assert read_tree(second.staging) == changed


def test_prefixes_copy_only_their_part(store, tmp_path):
    mirror = Mirror(store, str(tmp_path / "a"))
    write_tree(mirror.staging, TREE)
    assert mirror.push("_cache/baselines/h1") == 1
    assert remote_files(store) == {"_cache/baselines/h1/result.json"}
    assert mirror.push("/study/") == 3
    fresh = Mirror(store, str(tmp_path / "b"))
    assert fresh.pull("study/tune") == 1
    state = "study/tune/trial_0/checkpoint/state.pt"
    assert read_tree(fresh.staging) == {state: TREE[state]}
    assert fresh.pull("study/empty.txt") == 1  # one object
    assert fresh.local_path("study/tune") == os.path.join(fresh.staging, "study", "tune")
    assert fresh.pull("no/such/prefix") == 0 and fresh.push("no/such/prefix") == 0
    write_tree(fresh.staging, {"study/new.txt": b"new"})
    assert fresh.push("study/new.txt") == 1  # one file
    assert remote_files(store) == set(TREE) | {"study/new.txt"}
    with pytest.raises(ValueError, match="'..'"):
        fresh.push("study/../..")


def test_skip_leaves_folders_out_both_ways(store, tmp_path):
    mirror = Mirror(store, str(tmp_path / "a"))
    write_tree(mirror.staging, TREE)
    assert mirror.push("study", skip=("tune",)) == 2  # the Tune state is Ray's to write
    assert not any(f.startswith("study/tune/") for f in remote_files(store))
    assert mirror.push("study") == 1
    fresh = Mirror(store, str(tmp_path / "b"))
    assert fresh.pull("study", skip=("tune",)) == 2
    assert not os.path.exists(fresh.local_path("study/tune"))


def test_push_does_not_overwrite_a_newer_remote_copy(store, tmp_path):
    """B pulled a file, A then changed it: B's push (B's copy unchanged) leaves A's version, B's pull gets it."""
    a, b = Mirror(store, str(tmp_path / "a")), Mirror(store, str(tmp_path / "b"))
    write_tree(a.staging, {"study/results.parquet": b"v1"})
    a.push()
    assert b.pull() == 1
    write_tree(a.staging, {"study/results.parquet": b"version 2"})
    assert a.push() == 1
    assert b.push() == 0
    assert b.pull() == 1
    assert read_tree(b.staging) == {"study/results.parquet": b"version 2"}


def test_default_staging_under_mtl_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MTL_CACHE_DIR", str(tmp_path))
    one, two = "file:///srv/a", "file:///srv/b"
    assert os.path.dirname(storage.default_staging(one)) == str(tmp_path / "storage")
    assert storage.default_staging(one) != storage.default_staging(two)
    assert Mirror(one).staging == storage.default_staging(one)


def test_check_access(store):
    check_access(store)  # write, read back, delete
    assert remote_files(store) == set()  # the probe is gone


def test_check_access_missing_bucket(s3_port):
    uri = s3_uri(s3_port, bucket="no-such-bucket")
    with pytest.raises(SpecError) as err:
        check_access(uri)
    msg = str(err.value)
    assert msg.startswith(f"--storage {uri!r}: cannot write a probe object") and "\n" not in msg
    assert "NO_SUCH_BUCKET" in msg and "create the bucket first" in msg


def test_check_access_wrong_endpoint():
    """A port with nothing listening: refused at once (pyarrow's own retries take ~6 s)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    uri = f"s3://{BUCKET}/x?endpoint_override=127.0.0.1:{port}&scheme=http"
    start = time.monotonic()
    with pytest.raises(SpecError) as err:
        check_access(uri)
    msg = str(err.value)
    assert "\n" not in msg and "NETWORK_CONNECTION" in msg and "check the endpoint" in msg
    assert time.monotonic() - start < 30


def test_check_access_rejected_credentials(s3_port):
    """moto checks credentials once its auth is switched on: the fake keys are then unknown."""
    def auth_after(count: str) -> None:  # moto's API: authenticate every request after `count` of them
        request = urllib.request.Request(f"http://127.0.0.1:{s3_port}/moto-api/reset-auth", data=count.encode(),
                                         method="POST", headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).close()

    uri = s3_uri(s3_port)
    auth_after("0")
    try:
        with pytest.raises(SpecError) as err:
            check_access(uri)
    finally:
        auth_after("inf")
    msg = str(err.value)
    assert "\n" not in msg and "INVALID_ACCESS_KEY_ID" in msg and "AWS_ACCESS_KEY_ID" in msg
    check_access(uri)  # auth off again


@pytest.mark.parametrize("module", ["ray.train._internal.storage", "ray.train.v2._internal.execution.storage"])
def test_ray_resolves_the_same_uri(s3_port, tmp_path, module):
    """Tune (ray.train._internal) and Train v2 resolve the URI they get as storage_path to a
    filesystem that sees what a Mirror pushed (no Ray session is started)."""
    import importlib

    get_fs_and_path = importlib.import_module(module).get_fs_and_path
    uri = s3_uri(s3_port)
    mirror = Mirror(uri, str(tmp_path / "a"))
    write_tree(mirror.staging, TREE)
    mirror.push()
    fs, path = get_fs_and_path(join(uri, "study"))
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    assert {os.path.relpath(i.path, path) for i in infos if i.type == pafs.FileType.File} == \
        {rel[len("study/"):] for rel in TREE if rel.startswith("study/")}
    with fs.open_input_stream(f"{path}/tune/trial_0/checkpoint/state.pt") as src:
        assert src.read() == TREE["study/tune/trial_0/checkpoint/state.pt"]


MOUNTS = "\n".join([
    "overlay / overlay rw,relatime,lowerdir=/l,upperdir=/u 0 0",
    "/dev/sda1 /srv/data ext4 rw,relatime 0 0",
    "server:/export /srv/nfs nfs4 rw,vers=4.2 0 0",
    "s3fs /srv/s3 fuse.s3fs rw,nosuid 0 0",
    r"/dev/sdb1 /srv/nfs/scratch\040disk xfs rw 0 0",  # a local disk mounted inside the NFS tree
    "tmpfs /srv/data tmpfs rw 0 0",  # mounted over /srv/data later: it hides the ext4 one
    "proc /proc proc rw 0 0",
])


@pytest.fixture
def mounts(tmp_path):
    path = tmp_path / "mounts"
    path.write_text(MOUNTS + "\n")
    return str(path)


@pytest.mark.parametrize("path, fstype", [
    ("/srv/data/studies", "tmpfs"),
    ("/srv/data", "tmpfs"),
    ("/srv/database/x", "overlay"),  # /srv/data is not a prefix of /srv/database
    ("/srv/nfs/studies", None),
    ("/srv/s3/studies", None),
    ("/srv/nfs/scratch disk/studies", "xfs"),
    ("/home/user/studies", "overlay"),
    ("/proc/x", None),  # a type the module does not know: not refused
])
def test_node_local(mounts, path, fstype):
    assert node_local(path, mounts) == fstype


def test_node_local_without_mounts_file(tmp_path):
    assert node_local("/srv/data", str(tmp_path / "no-mounts")) is None


@pytest.mark.parametrize("path, refused", [
    ("/srv/data/studies", "tmpfs"),
    ("/home/user/studies", "overlay"),
    ("/srv/nfs/studies", None),
    ("/srv/s3/studies", None),
])
def test_check_shared(mounts, monkeypatch, path, refused):
    monkeypatch.delenv(storage.SHARED_ENV, raising=False)
    check_shared(path, 1, mounts)  # one node: any folder
    if refused is None:
        check_shared(path, 3, mounts)
        return
    with pytest.raises(SpecError) as err:
        check_shared(path, 3, mounts)
    msg = str(err.value)
    assert msg.startswith(f"--storage {path!r}") and "\n" not in msg
    for words in (f"node-local storage ({refused})", "3 nodes", "s3://", "NFS", "MTL_SHARED_STORAGE=1"):
        assert words in msg, (words, msg)
    monkeypatch.setenv(storage.SHARED_ENV, "1")  # the user says it is the same storage on every node
    check_shared(path, 3, mounts)


def test_check_shared_passes_uris(mounts):
    check_shared("s3://bucket/studies", 3, mounts)


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_endpoint_from_the_environment(s3_port, monkeypatch, tmp_path, variable):
    """pyarrow honours the AWS SDK's endpoint variables: a plain s3://BUCKET/PREFIX reaches the local server."""
    monkeypatch.setenv(variable, f"http://127.0.0.1:{s3_port}")
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    check_access(f"s3://{BUCKET}/{prefix}")
    mirror = Mirror(f"s3://{BUCKET}/{prefix}", str(tmp_path / "a"))
    write_tree(mirror.staging, {"study/a.txt": b"a"})
    assert mirror.push() == 1
    assert remote_files(f"s3://{BUCKET}/{prefix}?endpoint_override=127.0.0.1:{s3_port}&scheme=http") == {"study/a.txt"}


# ------------------------------------------------ a study on the store (Tune and baselines faked)
def test_a_study_on_s3_is_interrupted_then_resumed_from_another_machine(s3_port, tmp_path, monkeypatch, capsys):
    """``--storage s3://...``: the run folder, its marker and the ended trials' rows reach the store
    as the study goes (here: up to a Ctrl-C); a machine with an empty staging folder sees the
    interrupted run (``mtl status``) and finishes it (``mtl resume``): every trial once, the
    finished run's ``results.parquet`` in the store."""
    import pyarrow.parquet as pq

    from orchestrator.cli import main
    from tests.orchestrator.test_faults import spec_yaml
    from tests.orchestrator.test_runs import TWO, fake_study

    calls = []
    fake_study(monkeypatch, calls)
    uri = s3_uri(s3_port)
    monkeypatch.setenv("MTL_CACHE_DIR", str(tmp_path / "machine_a"))
    assert main(["run", spec_yaml(tmp_path, TWO), "--storage", uri]) == 130
    stored = remote_files(uri)
    (marker,) = [f for f in stored if f.endswith("/status.json")]
    run = os.path.dirname(marker)
    assert {f"{run}/spec.json", f"{run}/m.parquet", f"{run}/n.parquet"} <= stored
    assert not any(f.startswith("probe/tune/") for f in stored)  # Ray's own, written by Tune (faked here)
    assert "probe/results.parquet" not in stored

    monkeypatch.setenv("MTL_CACHE_DIR", str(tmp_path / "machine_b"))  # nothing staged on this one
    capsys.readouterr()
    assert main(["status", "probe", "--storage", uri]) == 0
    assert "interrupted" in capsys.readouterr().out
    assert main(["resume", "probe", "--storage", uri]) == 0
    assert calls == [("m", False), ("n", False), ("n", True)]
    fs, root = resolve(uri)
    with fs.open_input_file(f"{root}/probe/results.parquet") as fh:
        rows = pq.read_table(fh).to_pylist()
    keys = [(r["experiment"], r["config_hash"], r["seed"]) for r in rows]
    assert len(rows) == 8 and len(set(keys)) == len(keys)
    with fs.open_input_file(f"{root}/{marker}") as fh:
        assert b'"status": "finished"' in fh.read()


def test_a_multi_node_study_refuses_node_local_storage_before_its_baselines(tmp_path, monkeypatch):
    """The study's Ray side (``study.Cluster``) checks the storage against the live node count."""
    from types import SimpleNamespace

    import orchestrator.study as study
    from orchestrator.spec import ResourcesSpec

    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {tmp_path / 'nfs'} nfs4 rw 0 0\n")
    monkeypatch.setattr(storage, "node_local", lambda path, _=None: node_local(path, str(mounts)))
    monkeypatch.setattr(study, "start_ray", lambda log: None)
    monkeypatch.setattr(study, "cluster_resources", lambda: {"CPU": 8.0})
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # joined: the fit check is skipped

    def prepared(folder, nodes):
        monkeypatch.setattr(study, "alive_nodes", lambda: nodes)
        return SimpleNamespace(study_dir=str(folder / "s"), mirror=None, log=print,
                               spec=SimpleNamespace(resources=ResourcesSpec()))

    with pytest.raises(SpecError, match=r"node-local storage \(ext4\) but the cluster has 3 nodes"):
        study.Cluster(prepared(tmp_path / "local", 3))
    study.Cluster(prepared(tmp_path / "local", 1))  # one node: any folder
    study.Cluster(prepared(tmp_path / "nfs", 3))  # a shared mount
    monkeypatch.setenv(storage.SHARED_ENV, "1")
    study.Cluster(prepared(tmp_path / "local", 3))  # declared shared

"""A smoke study with ``--storage s3://...`` through the real stack: moto's S3 server on 127.0.0.1
(started by the test, fake credentials), ``mtl run`` in a subprocess with its own local Ray, and
then the store itself read back: Tune's state and checkpoints written there by Ray, the run
folder and results pushed by the driver, the baseline cache entries pushed by the actors; a
second "machine" (an empty staging folder) reads the finished run with ``mtl status``."""
import os
import subprocess
import sys
import time
import uuid

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from tests.test_end_to_end import SPEC

pytestmark = pytest.mark.ray

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}  # no instance-metadata lookups: only 127.0.0.1 is contacted


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """(moto's S3 server port, a filesystem on it) with a bucket ``mtl``."""
    from moto.server import ThreadedMotoServer

    for key, value in FAKE_AWS.items():
        monkeypatch.setenv(key, value)
    missing = str(tmp_path / "no-aws-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        port = server.get_host_and_port()[1]
        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True)
        fs.create_dir("mtl")
        yield port, fs
    finally:
        server.stop()


def test_smoke_study_on_an_s3_store(s3, tmp_path):
    port, fs = s3
    prefix = f"mtl/t-{uuid.uuid4().hex[:8]}"
    uri = f"s3://{prefix}?endpoint_override=127.0.0.1:{port}&scheme=http"
    data = {**SPEC, "name": "on_s3", "search": {**SPEC["search"], "asha": False}}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    env = {**os.environ, "MTL_CACHE_DIR": str(tmp_path / "machine_a")}
    env.pop("RAY_ADDRESS", None)
    start = time.time()
    run = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--smoke", "--storage", uri],
                         env=env, timeout=900, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    print(f"smoke study on S3: {time.time() - start:.0f} s")

    files = {i.path[len(prefix) + 1:] for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
             if i.type == pafs.FileType.File}
    assert "on_s3/results.parquet" in files
    markers = [f for f in files if f.startswith("on_s3/results/") and f.endswith("/status.json")]
    assert len(markers) == 1
    with fs.open_input_file(f"{prefix}/{markers[0]}") as fh:
        assert b'"status": "finished"' in fh.read()
    assert any(f.startswith("on_s3/tune/") and "/checkpoint_" in f and f.endswith("state.pt") for f in files)
    assert any(f.startswith("_cache/baselines/") and f.endswith("/result.json") for f in files)
    with fs.open_input_file(f"{prefix}/on_s3/results.parquet") as fh:
        rows = pq.read_table(fh).to_pylist()
    multi = [r for r in rows if r["role"] == "multi_task"]
    assert multi and all(r["status"] == "completed" for r in rows)
    assert all(r["checkpoint_path"].startswith(f"s3://{prefix}/on_s3/tune/") for r in multi)

    env_b = {**env, "MTL_CACHE_DIR": str(tmp_path / "machine_b")}  # nothing staged on this one
    status = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", "on_s3", "--storage", uri],
                            env=env_b, timeout=300, capture_output=True, text=True)
    assert status.returncode == 0 and "finished" in status.stdout, status.stdout + status.stderr

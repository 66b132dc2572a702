"""``mtl run`` submitted as a Ray job works as the README writes it.

Starts its own single-node head bound to 127.0.0.1 (token authentication, its own temp dir),
submits ``mtl run quickstart --smoke`` through the Job SDK with ``cluster/runtime_env.yaml``,
waits, checks the results Parquet, and stops exactly the processes it started.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest
import yaml

pytestmark = pytest.mark.ray

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
JOB_TIMEOUT_S = 20 * 60
LOOPBACK = {"127.0.0.1", "[::1]", "[::ffff:127.0.0.1]"}  # as `ss` prints them


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _started_by(temp_dir: str) -> list[int]:
    """The node's processes (their command lines name its temp dir) and their descendants."""
    pids, parents = set(), {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as fh:
                parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
        except OSError:  # gone meanwhile
            continue
        if temp_dir in cmdline:
            pids.add(int(entry))
    grown = True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in pids} - pids
        pids |= children
        grown = bool(children)
    return sorted(pids)


def _stop(temp_dir: str) -> None:
    """Stop this node only (``ray stop`` would stop every Ray node of the user on the machine)."""
    pids = _started_by(temp_dir)
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in pids):
            time.sleep(0.5)
        pids = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
        if not pids:
            return


def _listening(pids: list[int]) -> set[str]:
    """The local addresses the given processes accept TCP connections on (``ss -ltnp``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    owned = [line.split() for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)]
    return {fields[3].rsplit(":", 1)[0] for fields in owned}


def test_job_submit_runs_a_smoke_study(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="mtlj", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    try:
        _submit_and_check(temp_dir, str(tmp_path / "runs"))
    finally:
        _stop(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)  # holds the job's virtualenv, a copy of this one


def _submit_and_check(temp_dir: str, storage: str) -> None:
    import pyarrow.parquet as pq
    from ray.job_submission import JobStatus, JobSubmissionClient

    dashboard_port = _free_port()
    # The switch orchestrator/ray_env.py's _loopback_only uses: with it the node's address is
    # 127.0.0.1 (else Ray replaces a loopback --node-ip-address with the routable one).
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    env.pop("RAY_ADDRESS", None)
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    subprocess.run([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
                    f"--ray-client-server-port={_free_port()}", "--num-cpus=2", f"--temp-dir={temp_dir}",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=180)
    listening = _listening(_started_by(temp_dir))
    assert listening and listening <= LOOPBACK, f"the node listens on {sorted(listening)}"

    with open(os.path.join(ROOT, "cluster", "runtime_env.yaml")) as fh:
        runtime_env = {**yaml.safe_load(fh), "working_dir": ROOT}
    # The token as a header: the SDK reads RAY_AUTH_MODE once, when ray is first imported.
    client = JobSubmissionClient(f"http://127.0.0.1:{dashboard_port}",
                                 headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
    start = time.monotonic()
    job = client.submit_job(entrypoint=f"mtl run quickstart --smoke --storage {storage}", runtime_env=runtime_env)
    status = client.get_job_status(job)
    while not status.is_terminal() and time.monotonic() - start < JOB_TIMEOUT_S:
        time.sleep(5)
        status = client.get_job_status(job)
    print(f"job {job}: {status} after {time.monotonic() - start:.0f} s from submit")
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)[-4000:]

    table = pq.read_table(os.path.join(storage, "quickstart", "results.parquet"))
    assert table.num_rows > 0 and "completed" in set(table.column("status").to_pylist())

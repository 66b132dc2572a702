"""Local data-parallel process groups bind 127.0.0.1 only (``orchestrator/loopback_ddp.py``),
checked without Ray: two processes join the group the way Ray's workers do, all-reduce, and list
the TCP sockets they listen on (from /proc)."""
from __future__ import annotations

import multiprocessing
import os

import pytest

from orchestrator import loopback_ddp

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc/net/tcp")


def listening_addresses(pid: int) -> list:
    """(address hex, port hex) of every TCP socket of ``pid`` in the LISTEN state, IPv4 and IPv6."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as fh:
            for line in fh.read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    found.append(tuple(fields[1].split(":")))
    return found


def rank_main(rank: int, port: int, answers) -> None:
    import torch
    import torch.distributed as dist

    try:
        loopback_ddp.join_process_group("gloo", rank, 2, port, timeout_s=60)
        value = torch.tensor([float(rank + 1)])
        dist.all_reduce(value)
        answers.put((rank, float(value), listening_addresses(os.getpid())))
        dist.barrier()
        dist.destroy_process_group()
    except Exception as err:  # reported, so the test fails with the reason instead of a timeout
        answers.put((rank, repr(err), []))


def test_two_ranks_all_reduce_and_listen_on_loopback_only():
    ctx = multiprocessing.get_context("fork")  # rank 0 inherits the socket bound here, as Ray's worker keeps it
    port = loopback_ddp.bind_store_socket()
    answers = ctx.Queue()
    ranks = [ctx.Process(target=rank_main, args=(r, port, answers)) for r in range(2)]
    for p in ranks:
        p.start()
    got = sorted(answers.get(timeout=120) for _ in ranks)
    for p in ranks:
        p.join(timeout=60)
    assert [(r, v) for r, v, _ in got] == [(0, 3.0), (1, 3.0)]
    loopback = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it
    for rank, _, sockets in got:
        assert sockets, f"rank {rank} listens on nothing: the check would pass vacuously"
        assert all(address == loopback for address, _ in sockets), (rank, sockets)
    assert (loopback, f"{port:04X}") in got[0][2]  # the store serves on the socket bound to 127.0.0.1


def test_rank_0_without_its_socket_is_refused(monkeypatch):
    monkeypatch.setattr(loopback_ddp, "_STORE_SOCKET", None)
    with pytest.raises(RuntimeError, match="bind_store_socket"):
        loopback_ddp.join_process_group("gloo", 0, 2, 1)

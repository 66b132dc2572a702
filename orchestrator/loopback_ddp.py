"""Data-parallel trials of a local (one-node) Ray instance, with every socket on 127.0.0.1.

Ray Train's own set-up (``TorchConfig``, ``init_method="env"``) has rank 0 start PyTorch's
``TCPStore`` server, which listens on every interface of the machine (c10d binds the wildcard
address whatever ``MASTER_ADDR`` says), and gloo / NCCL pick an interface of their own. On a
laptop or a shared workstation that exposes a rendezvous port to the network for the length of
every data-parallel trial. ``LoopbackTorchConfig`` replaces the process-group set-up for a local
instance:

1. rank 0 binds a listening socket to 127.0.0.1 on a free port (``bind_store_socket``) and keeps
   it open;
2. every rank builds its ``TCPStore`` on 127.0.0.1:port - rank 0 as the server on that socket
   (``master_listen_fd``), the others as clients - with ``GLOO_SOCKET_IFNAME`` and
   ``NCCL_SOCKET_IFNAME`` set to the loopback interface, and calls ``init_process_group`` with
   that store (``join_process_group``).

Everything after the process group (DDP, the DistributedSampler, the collectives) is Ray's and
PyTorch's as before. A study that joins a cluster (``RAY_ADDRESS``) keeps Ray's own set-up: its
workers must reach each other across nodes.

It reuses two private parts of Ray 2.60's Torch backend (``_TorchBackend`` for everything but
``on_start``, and ``_set_torch_distributed_env_vars`` for LOCAL_RANK and friends); if a later Ray
moves them, ``torch_config`` falls back to Ray's own ``TorchConfig`` (no loopback binding) with
a warning.
"""
from __future__ import annotations

import datetime
import os
import socket
import warnings
from typing import Any, Optional

LOOPBACK = "127.0.0.1"
LOOPBACK_IFNAME = "lo"  # Linux's name of the loopback interface (gloo / NCCL bind to an interface by name)
_STORE_SOCKET: Optional[socket.socket] = None  # rank 0's bound socket, kept open until the store owns it


def bind_store_socket() -> int:
    """(rank 0) A listening socket on 127.0.0.1 and a free port, kept in this process; its port."""
    global _STORE_SOCKET
    if _STORE_SOCKET is not None:
        _STORE_SOCKET.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    sock.listen(128)
    _STORE_SOCKET = sock
    return sock.getsockname()[1]


def join_process_group(backend: str, rank: int, world_size: int, port: int, timeout_s: float = 1800) -> None:
    """This rank's ``TCPStore`` on 127.0.0.1:``port`` (rank 0 serves it on the socket of
    ``bind_store_socket``) and its process group over the loopback interface."""
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = LOOPBACK_IFNAME
    os.environ["NCCL_SOCKET_IFNAME"] = LOOPBACK_IFNAME
    timeout = datetime.timedelta(seconds=timeout_s)
    if rank == 0:
        if _STORE_SOCKET is None:
            raise RuntimeError("join_process_group: rank 0 needs bind_store_socket() first, in the same process")
        store = dist.TCPStore(LOOPBACK, port, world_size, is_master=True, master_listen_fd=_STORE_SOCKET.fileno(),
                              timeout=timeout)
    else:
        store = dist.TCPStore(LOOPBACK, port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


def torch_config() -> Any:
    """Ray Train's backend config for a trial of a local Ray instance: ``LoopbackTorchConfig``, or
    Ray's own ``TorchConfig`` if this Ray lacks the private parts it builds on."""
    try:
        from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend  # noqa: F401
    except ImportError:
        from ray.train.torch import TorchConfig

        warnings.warn("this Ray has no ray.train.torch.config._TorchBackend: local data-parallel trials use Ray's "
                      "own process-group set-up, whose rendezvous listens on every interface")
        return TorchConfig()
    return _loopback_config_class()()


def _loopback_config_class() -> type:
    """The ``TorchConfig`` subclass (built on first use: Ray is imported only where it runs)."""
    import ray
    from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

    class _LoopbackBackend(_TorchBackend):
        def on_start(self, worker_group: Any, backend_config: Any) -> None:
            backend = backend_config.backend or (
                "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo")
            port = worker_group.execute_single(0, bind_store_socket)
            if not isinstance(worker_group, V1WorkerGroup):
                worker_group.execute(_set_torch_distributed_env_vars)
            # positional: execute_single_async's own first parameter is named ``rank``
            ray.get([worker_group.execute_single_async(i, join_process_group, backend, i, len(worker_group), port,
                                                       backend_config.timeout_s)
                     for i in range(len(worker_group))])

    class LoopbackTorchConfig(TorchConfig):
        """``TorchConfig`` whose process group binds 127.0.0.1 only (see the module docstring)."""

        @property
        def backend_cls(self):
            return _LoopbackBackend

    return LoopbackTorchConfig

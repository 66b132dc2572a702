"""Starting or joining Ray. The only place that calls ``ray.init``, and the one that knows which
processes a local Ray consists of (recorded in each run's marker, so a killed run's can be stopped)."""
from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional

# Lines of Ray's own that concern no user of this tool (each seen on every healthy run): Ray
# Train's per-report dump, the core worker's note on PreemptionWatcher's restart arguments
# (ray-project/ray#53727), the token-authentication notice, and the raylet's note that more
# worker processes started than CPUs (every trial's zero-CPU driver counts; nothing to act on).
# Errors and everything else pass.
NOISE = re.compile(r"Reporting training result \d+: TrainingReport|class name: 'PreemptionWatcher'.*max_restarts"
                   r"|Token authentication is enabled for this Ray cluster"
                   r"|PYTHON worker processes have been started on node")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not NOISE.search(record.getMessage())


def quiet_noise() -> None:
    """Drop ``NOISE`` from the driver's console: the ``ray`` loggers' records, and the worker
    lines Ray forwards to the driver (its "ray_print_logs" handler is wrapped with a line filter;
    that hook is private to Ray 2.60 - if it moves, the lines simply show again)."""
    for name in ("ray", "ray._private.authentication.authentication_token_setup"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for handler in logging.getLogger("ray").handlers:
        if not any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.addFilter(_DropNoise())
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    with dispatcher._lock:
        handlers = list(dispatcher.handlers)
    wrapped: List[Any] = []
    for name, handle in handlers:
        if name == "ray_print_logs" and not getattr(handle, "drops_noise", False):
            def filtered(data, _handle=handle):
                lines = [line for line in data.get("lines", []) if not NOISE.search(line)]
                if lines:
                    _handle({**data, "lines": lines})
            filtered.drops_noise = True
            handle = filtered
        wrapped.append((name, handle))
    with dispatcher._lock:
        dispatcher.handlers = wrapped


def start_ray(log: Callable[[str], None] = print) -> None:
    """Join the cluster named by RAY_ADDRESS (``ray job submit`` sets it), or start a local one.

    A local instance keeps to the loopback interface and keeps the dashboard: Train's cleanup
    of a stopped trial's placement group goes through the State API, which needs it.
    """
    import ray

    if ray.is_initialized():
        return
    quiet_noise()  # the loggers, before ray.init logs its start-up notices
    if joins_cluster():
        address = os.environ["RAY_ADDRESS"]
        log(f"joining Ray cluster at {address}")
        ray.init(address=address)
        quiet_noise()
    else:
        log("starting a local Ray instance on 127.0.0.1 (tens of seconds on a small machine)")
        _loopback_only()
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING",
                 logging_config=ray.LoggingConfig(log_level="WARNING"))
        quiet_noise()  # the worker-line handler exists once ray.init has run


def _loopback_only() -> None:
    """Make a local single-node Ray bind and advertise 127.0.0.1 only.

    ``_node_ip_address="127.0.0.1"`` is rewritten by Ray to the host's routable address; Ray
    uses the loopback address only when "clusters are disabled" - a switch read from this
    environment variable by the driver (attribute below) and by every worker it spawns (env).
    A local instance is one node, so nothing is lost.
    """
    import ray._private.ray_constants as constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants.ENABLE_RAY_CLUSTER = False


def local_ray_processes() -> Optional[Dict[str, Any]]:
    """The local Ray this driver started: {"session_dir": its session folder, "pids": the processes
    Ray started for it and all their descendants}; None when the driver joined a cluster
    (RAY_ADDRESS), has not started Ray, or has no /proc (not Linux).

    The descendants are what matters: gcs_server, raylet, the dashboard, the monitor and the log
    monitor share the driver's fate (the kernel's parent-death signal), but the raylet's two agents
    (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) outlive a SIGKILLed driver, adopted by init.

    Private to Ray 2.60: reads ``ray._private.worker._global_node`` (``all_processes``,
    ``get_session_dir_path()``). If that moves, this returns None: nothing is recorded in the run's
    marker and a killed run's Ray processes are not reaped (``runs.reap_orphans``).
    """
    ray = sys.modules.get("ray")  # not imported: not started (and importing it here would cost seconds)
    if ray is None or not os.path.isdir("/proc"):
        return None
    try:
        node = ray._private.worker._global_node
        if node is None:
            return None
        roots = [info.process.pid for infos in node.all_processes.values() for info in infos]
        session_dir = node.get_session_dir_path()
    except AttributeError:
        return None
    if not roots:  # joined a running cluster: none of its processes is this driver's
        return None
    return {"session_dir": os.path.realpath(session_dir), "pids": descendants(roots)}


def descendants(roots: List[int]) -> List[int]:
    """``roots`` and every process below them, from the parent pids in /proc."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:  # "pid (comm) state ppid ...": comm may hold spaces
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, queue = set(), list(roots)
    while queue:
        pid = queue.pop()
        if pid not in found:
            found.add(pid)
            queue += children.get(pid, [])
    return sorted(found)


def cluster_resources() -> Dict[str, float]:
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}


def joins_cluster() -> bool:
    """Whether the study joins a running cluster (RAY_ADDRESS, as ``ray job submit`` sets it)
    rather than starting a local, one-node instance."""
    return bool(os.environ.get("RAY_ADDRESS"))


def alive_nodes() -> int:
    """How many nodes of the Ray cluster are alive now (an autoscaling cluster may add more)."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))

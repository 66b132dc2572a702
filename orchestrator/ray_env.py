"""Starting or joining Ray. The only place that calls ``ray.init``."""
from __future__ import annotations

import os
from typing import Callable, Dict


def start_ray(log: Callable[[str], None] = print) -> None:
    """Join the cluster named by RAY_ADDRESS (``ray job submit`` sets it), or start a local one.

    A local instance keeps to the loopback interface and keeps the dashboard: Train's cleanup
    of a stopped trial's placement group goes through the State API, which needs it.
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log(f"joining Ray cluster at {address}")
        ray.init(address=address)
    else:
        log("starting a local Ray instance on 127.0.0.1 (tens of seconds on a small machine)")
        _loopback_only()
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING",
                 logging_config=ray.LoggingConfig(log_level="WARNING"))


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


def cluster_resources() -> Dict[str, float]:
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}

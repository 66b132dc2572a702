"""Shared fixtures. Ray is started at most once per test session (it costs tens of seconds)."""
import os

import pytest


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray instance (loopback only, dashboard on) for every test that needs Ray."""
    import ray

    from orchestrator.ray_env import start_ray

    os.environ.setdefault("MTL_CACHE_DIR", str(tmp_path_factory.mktemp("mtl_cache")))
    start_ray(log=lambda _: None)
    yield ray
    ray.shutdown()

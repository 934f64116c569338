"""One local Ray instance for the Ray tests: 127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, set before Ray
is imported, binds Ray's services to the loopback address), no dashboard, no usage reporting; skipped with the
reason when the ``ray`` extra is not installed."""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RAY_MISSING = importlib.util.find_spec("ray") is None
needs_ray = pytest.mark.skipif(RAY_MISSING, reason="the [ray] extra is not installed: pip install -e '.[ray]'")

NUM_CPUS = 2


def start() -> None:
    from core_rerank.batch import start_local_ray

    start_local_ray(NUM_CPUS)
    import ray

    assert ray.util.get_node_ip_address() == "127.0.0.1"


def stop() -> None:
    import ray

    ray.shutdown()

"""``core-rerank serve --backend ray --replicas 2`` as a user runs it: a real process starting a local Ray instance
(127.0.0.1), both replicas answering (``X-Replica``), and a clean stop on SIGINT (the application deleted, Ray shut
down, the process gone)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_local import needs_ray

pytestmark = [needs_ray, pytest.mark.ray]  # a local Ray instance: deselected by default, run by .ci/run

WAIT_S = 300.0  # bounds a hang (a cold start loads Ray and two models on two busy cores); never a speed check
MAX_REQUESTS = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_backend_ray_runs_two_replicas_and_stops_on_sigint(tmp_path: Path, default_rr):
    import httpx

    port = free_port()
    cli = Path(sys.executable).with_name("core-rerank")
    log = (tmp_path / "serve.log").open("w")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [str(cli), "serve", "--backend", "ray", "--replicas", "2", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the Ray Serve application never became healthy"
            time.sleep(1)
        docs = ["cp copies files", "bananas are yellow", "mv moves files"]
        want = default_rr.rank("how do I copy files?", docs).indices
        seen = set()
        for _ in range(MAX_REQUESTS):
            r = httpx.post(f"{base}/v1/rerank", json={"query": "how do I copy files?", "documents": docs}, timeout=300)
            assert r.status_code == 200, r.text
            assert [x["index"] for x in r.json()["results"]] == want
            seen.add(r.headers["x-replica"])
            if len(seen) == 2:
                break
        assert len(seen) == 2, f"every request went to {seen}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)
            pytest.fail("serve --backend ray did not stop on SIGINT")
        log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]

"""A real uvicorn server on a free 127.0.0.1 port, in a thread, for the server tests; and a gate that holds the
worker inside ``rank`` so queue states are reached deterministically (no sleeps, no timing asserts)."""

from __future__ import annotations

import copy
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

for _name in ("fastapi", "uvicorn", "prometheus_client", "httpx"):
    pytest.importorskip(_name, reason="the [server] extra is not installed: pip install -e '.[server]'")

import httpx  # noqa: E402
import uvicorn  # noqa: E402

# Bounds on waiting for a state the test sets up (a server starting, a request reaching the queue): generous, so a
# loaded 2-core machine never fails them; they bound a hang, they do not measure speed.
WAIT_S = 120.0


def wait_for(predicate, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


@contextmanager
def running(app, lifespan: str = "on") -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1 (the socket is bound here, so no port race); yields
    the base URL and stops the server after. ``lifespan="off"``: as an ASGI server that runs no start-up events."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), "uvicorn to start")
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=WAIT_S)
        sock.close()


class Gate:
    """A reranker (sharing ``rr``'s model) whose ``rank`` announces each call and then waits until ``open()``:
    a request holding the worker stays there, so what queues behind it is known exactly."""

    def __init__(self, rr) -> None:
        self.calls: list[str] = []
        self.entered = threading.Semaphore(0)
        self._open = threading.Event()
        self.reranker = copy.copy(rr)
        rank = rr.rank

        def gated_rank(query, documents, *args, **kwargs):
            self.calls.append(query)
            self.entered.release()
            assert self._open.wait(WAIT_S), "the test never opened the gate"
            return rank(query, documents, *args, **kwargs)

        self.reranker.rank = gated_rank

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=WAIT_S), "no request reached the worker"

    def open(self) -> None:
        self._open.set()


def metric(base: str, name: str, labels: str = "") -> float:
    """The value of one sample of ``GET /metrics`` (0 when absent), e.g. ``metric(url, "core_rerank_queue_depth")``."""
    text = httpx.get(f"{base}/metrics").text
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, flags=re.MULTILINE)
    return float(found.group(1)) if found else 0.0

"""Faults the server survives: a stop signal (drain: new requests 503, those in flight finish, then exit), an
exception inside a model call (a JSON error, and the next request is served), and a body over the payload limit
(every common client reads the 413 and its JSON error; the server stays responsive)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import SANITY_DOCS, SANITY_QUERIES
from server_harness import WAIT_S, Gate, httpx, running, wait_for  # skips without the [server] extra

from core_rerank.server import ServerSettings, create_app

QUERY = SANITY_QUERIES[0][0]
BODY = {"query": QUERY, "documents": SANITY_DOCS[:3]}


def _error(status: int, body: bytes | str, error_type: str) -> None:
    data = json.loads(body)
    assert set(data) == {"error", "error_type"} and data["error_type"] == error_type, (status, data)


# ---------------------------------------------------------------- stop signal: drain
def test_a_stop_signal_drains_then_exits(default_rr):
    """The first stop signal: requests in flight (held at the worker by the gate) finish with 200, a request that
    arrives now gets 503 ShuttingDown while the socket stays open, /health says so, and the server exits once idle."""
    import uvicorn

    from core_rerank.server.main import DrainingServer

    gate = Gate(default_rr)
    app = create_app(ServerSettings(timeout=60), gate.reranker)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = DrainingServer(uvicorn.Config(app, log_level="warning"), app.state.core, timeout=60)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "uvicorn to start")
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, f"{base}/v1/rerank", json=BODY, timeout=WAIT_S)
            gate.wait_entered()
            server.handle_exit(signal.SIGTERM, None)  # what uvicorn calls on SIGTERM
            late = httpx.post(f"{base}/v1/rerank", json=BODY, timeout=WAIT_S)
            assert late.status_code == 503 and late.headers["retry-after"] == "1"
            _error(503, late.content, "ShuttingDown")
            health = httpx.get(f"{base}/health", timeout=WAIT_S)
            assert health.status_code == 503 and health.json()["status"] == "draining"
            assert not server.should_exit  # still draining: the request in flight holds it
            gate.open()
            done = in_flight.result(timeout=WAIT_S)
        assert (
            done.status_code == 200
            and done.json()["results"][0]["index"] == default_rr.rank(QUERY, BODY["documents"])[0].index
        )
        thread.join(WAIT_S)
        assert not thread.is_alive()  # it exited by itself once nothing was in flight
    finally:
        gate.open()
        server.should_exit = True
        thread.join(WAIT_S)
        sock.close()


@pytest.mark.slow  # a process of its own loads the model
def test_sigterm_to_the_serve_command(tmp_path):
    """SIGTERM to a real ``core-rerank serve`` while a long request runs: it is answered, a new one gets 503, and the
    process exits 0 within --timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = [sys.executable, "-m", "core_rerank.cli", "serve", "--port", str(port), "--timeout", "120"]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([*cli, "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(f"{base}/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, "core-rerank serve to load the model", timeout=300)
        long_docs = [" ".join([d] * 6) for d in SANITY_DOCS] * 4  # a few seconds of scoring
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(
                httpx.post, f"{base}/v1/rerank", json={"query": QUERY, "documents": long_docs}, timeout=300
            )
            wait_for(
                lambda: "core_rerank_requests_running 1.0" in httpx.get(f"{base}/metrics").text, "the request to run"
            )
            proc.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            wait_for(lambda: httpx.get(f"{base}/health").status_code == 503, "the drain to begin")
            assert httpx.post(f"{base}/v1/rerank", json=BODY, timeout=WAIT_S).status_code == 503
            assert in_flight.result(timeout=300).status_code == 200
        assert proc.wait(timeout=150) == 0
        assert time.monotonic() - stopped < 120 + 30  # within --timeout (plus uvicorn's own shutdown)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(60)


# ---------------------------------------------------------------- an exception inside the model
def test_an_exception_in_a_model_call_is_a_json_error_and_the_next_request_is_served(default_rr):
    from core_rerank import Reranker

    rr = Reranker(heads=[(2, 2), (4, 1)], dtype="float32")  # a depth of its own: its model is patched below
    model = rr.loaded_model.model
    forward = model.forward
    failures = iter([RuntimeError("CUDA error: an illegal memory access was encountered")])

    def failing_once(*args, **kwargs):
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return forward(*args, **kwargs)

    model.forward = failing_once
    try:
        with running(create_app(ServerSettings(), rr)) as base:
            first = httpx.post(f"{base}/v1/rerank", json=BODY, timeout=WAIT_S)
            assert first.status_code == 500 and "illegal memory access" in first.json()["error"]
            _error(500, first.content, "Internal")
            second = httpx.post(f"{base}/v1/rerank", json=BODY, timeout=WAIT_S)
            assert second.status_code == 200
            assert [x["index"] for x in second.json()["results"]] == rr.rank(QUERY, BODY["documents"]).indices
    finally:
        model.forward = forward


def test_an_unexpected_exception_anywhere_is_a_json_error(default_rr, monkeypatch):
    """A defect outside scoring (here: in building the answer) is still the JSON error shape, never a bare page."""
    from core_rerank.server import wire

    def broken(*args, **kwargs):
        raise KeyError("a defect")

    monkeypatch.setattr(wire.CohereV2Request, "render", broken)
    with running(create_app(ServerSettings(), default_rr)) as base:
        r = httpx.post(f"{base}/v2/rerank", json=BODY, timeout=WAIT_S)
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        _error(500, r.content, "Internal")
        assert httpx.get(f"{base}/health").status_code == 200


# ---------------------------------------------------------------- a body over the payload limit
LIMIT = 100_000
HUGE = {"query": QUERY, "documents": ["x" * 1000] * 5000}  # ~5 MB, as in the report that found the fault


def _huge_bytes() -> bytes:
    return json.dumps(HUGE).encode()


def _urllib(url: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=_huge_bytes(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=WAIT_S) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _requests(url: str) -> tuple[int, bytes]:
    import requests

    r = requests.post(url, data=_huge_bytes(), headers={"Content-Type": "application/json"}, timeout=WAIT_S)
    return r.status_code, r.content


def _httpx(url: str) -> tuple[int, bytes]:
    r = httpx.post(url, content=_huge_bytes(), headers={"Content-Type": "application/json"}, timeout=WAIT_S)
    return r.status_code, r.content


def _cohere(url: str) -> tuple[int, bytes]:
    cohere = pytest.importorskip("cohere", reason="the dev extra's cohere SDK is not installed")

    client = cohere.ClientV2(api_key="any", base_url=url.removesuffix("/v2/rerank"))
    try:
        client.rerank(model="any", query=QUERY, documents=HUGE["documents"], request_options={"max_retries": 0})
    except cohere.core.api_error.ApiError as exc:
        return exc.status_code, json.dumps(exc.body).encode()
    raise AssertionError("the cohere SDK got no error for a body over the limit")


@pytest.mark.parametrize("client", [_urllib, _requests, _httpx, _cohere])
def test_every_client_reads_the_413_and_the_server_stays_up(default_rr, client):
    with running(create_app(ServerSettings(payload_limit=LIMIT), default_rr)) as base:
        status, body = client(f"{base}/v2/rerank")
        assert status == 413
        _error(413, body, "PayloadTooLarge")
        assert httpx.get(f"{base}/health", timeout=WAIT_S).status_code == 200
        assert httpx.post(f"{base}/v2/rerank", json=BODY, timeout=WAIT_S).status_code == 200


def test_expect_100_continue_gets_the_413_before_sending_the_body(default_rr):
    """A client that asks first (``Expect: 100-continue``, as curl does for large bodies) is told 413 at once and
    never sends the body."""
    with running(create_app(ServerSettings(payload_limit=LIMIT), default_rr)) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=WAIT_S) as s:
            s.sendall(
                b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n"
            )
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413") and b"100 Continue" not in head
        _error(413, body, "PayloadTooLarge")

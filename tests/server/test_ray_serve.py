"""Ray Serve: the FastAPI app behind ``@serve.ingress`` on two replicas of a real local Ray instance (127.0.0.1 only).
Requests reach both replicas (``X-Replica`` names the one that answered) and every answer equals the in-process
``Reranker``'s."""

from __future__ import annotations

import math
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from ray_local import needs_ray, start, stop

from core_rerank.errors import InvalidInputError

pytestmark = needs_ray
on_ray = pytest.mark.ray  # starts a local Ray instance: deselected by default, run by .ci/run

DOCS = ["cp copies files and directories.", "Bananas are rich in potassium.", "mv moves or renames files."]
QUERIES = ["how do I copy files?", "which fruit has potassium?", "how do I rename a file?", "what is a banana?"]
MAX_ROUNDS = 10  # rounds of concurrent requests before giving up on seeing both replicas


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_replicas():
    from ray import serve

    from core_rerank.server import ServerSettings
    from core_rerank.server.ray_serve import build_application, load_deployment_config

    start()
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = load_deployment_config(replicas=2)
        config["ray_actor_options"] = {"num_cpus": 0.5}  # two replicas fit the two test CPUs, beside the proxy
        serve.run(build_application(ServerSettings(), config), name="core-rerank", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        stop()


@on_ray
def test_two_replicas_answer_as_in_process(two_replicas, default_rr):
    import httpx

    def ask(query: str) -> tuple[str, list[dict]]:
        r = httpx.post(f"{two_replicas}/v1/rerank", json={"query": query, "documents": DOCS}, timeout=300)
        assert r.status_code == 200, r.text
        return r.headers["x-replica"], r.json()["results"]

    seen: set[str] = set()
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(MAX_ROUNDS):
            for (replica, results), query in zip(pool.map(ask, QUERIES), QUERIES):
                seen.add(replica)
                want = default_rr.rank(query, DOCS)
                assert [r["index"] for r in results] == want.indices
                for got, ref in zip(results, want):
                    assert math.isclose(got["relevance_score"], ref.relevance_score, rel_tol=1e-5, abs_tol=1e-6)
            if len(seen) == 2:
                break
    assert len(seen) == 2, f"every request went to {seen}"

    health = httpx.get(f"{two_replicas}/health", timeout=60)
    assert health.status_code == 200 and health.headers["x-replica"] in seen
    tei = httpx.post(
        f"{two_replicas}/rerank", json={"query": QUERIES[0], "texts": DOCS, "raw_scores": True}, timeout=300
    )
    assert tei.status_code == 200
    want = default_rr.rank(QUERIES[0], DOCS)
    assert [r["index"] for r in tei.json()] == want.indices
    assert all(math.isclose(g["score"], w.score, rel_tol=1e-5) for g, w in zip(tei.json(), want))
    bad = httpx.post(f"{two_replicas}/v2/rerank", json={"model": "m", "query": "q", "documents": []}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error_type"] and "x-replica" in bad.headers


def test_deployment_config_file(tmp_path):
    from core_rerank.server.ray_serve import DEFAULT_DEPLOYMENT, load_deployment_config

    assert load_deployment_config() == DEFAULT_DEPLOYMENT
    path = tmp_path / "deploy.yaml"
    path.write_text(
        "deployment:\n"
        "  autoscaling_config: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 2}\n"
        "  ray_actor_options: {num_cpus: 2, num_gpus: 1}\n"
        "  max_queued_requests: 8\n"
    )
    config = load_deployment_config(path)
    assert "num_replicas" not in config and config["autoscaling_config"]["max_replicas"] == 4
    assert config["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1} and config["max_queued_requests"] == 8
    assert config["max_ongoing_requests"] == DEFAULT_DEPLOYMENT["max_ongoing_requests"]
    fixed = load_deployment_config(path, replicas=3)
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    example = load_deployment_config(Path(__file__).resolve().parents[2] / "examples" / "ray-serve.yaml")
    assert example["num_replicas"] == 2 and example["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0}
    path.write_text("deployment:\n  num_replica: 2\n")
    with pytest.raises(InvalidInputError, match="num_replica"):
        load_deployment_config(path)


def test_serve_backend_options_are_checked():
    from typer.testing import CliRunner

    from core_rerank.cli import app

    runner = CliRunner(env={"COLUMNS": "300"})
    wrong = runner.invoke(app, ["serve", "--backend", "k8s"])
    assert wrong.exit_code == 2 and "'uvicorn' or 'ray'" in wrong.output
    stray = runner.invoke(app, ["serve", "--replicas", "2"])
    assert stray.exit_code == 2 and "need --backend ray" in stray.output


def _replicas() -> dict[str, str]:
    """Replica id -> actor name of the running core-rerank replicas."""
    from ray import serve

    app = serve.status().applications["core-rerank"]
    (deployment,) = app.deployments.values()
    assert deployment is not None
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
    return {name.rsplit("#", 1)[-1]: name for name in names}


LOAD_REQUESTS = 60  # the load loop's bounds: requests in all, and seconds
LOAD_SECONDS = 600.0


@on_ray
def test_a_killed_replica_loses_only_what_it_had_in_flight(two_replicas, default_rr):
    """Under load from 4 clients, one replica is killed: the other keeps answering, Ray Serve starts a new one, and
    the only requests lost are those in flight when it died (every answer given is checked against the in-process
    ranking)."""
    import threading
    import time

    import httpx
    import ray

    want = {q: default_rr.rank(q, DOCS).indices for q in QUERIES}
    outcomes: list[tuple[str, int, str | None]] = []  # (query, status, replica)
    lock = threading.Lock()
    in_flight = 0
    sent = 0
    stop_at = time.monotonic() + LOAD_SECONDS
    killed_at_in_flight: list[int] = []

    def client() -> None:
        nonlocal in_flight, sent
        with httpx.Client(timeout=300) as http:
            while time.monotonic() < stop_at:
                with lock:
                    if sent >= LOAD_REQUESTS:
                        return
                    sent += 1
                    in_flight += 1
                    query = QUERIES[sent % len(QUERIES)]
                try:
                    r = http.post(f"{two_replicas}/v1/rerank", json={"query": query, "documents": DOCS})
                    status, replica = r.status_code, r.headers.get("x-replica")
                    if status == 200 and [x["index"] for x in r.json()["results"]] != want[query]:
                        status = -2  # a wrong answer: never acceptable
                except httpx.TransportError:
                    status, replica = -1, None
                with lock:
                    in_flight -= 1
                    outcomes.append((query, status, replica))

    before = _replicas()
    assert len(before) == 2
    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    while True:  # wait until both replicas have answered under load, then kill one
        with lock:
            answered = {r for _, s, r in outcomes if s == 200}
        if len(answered) == 2 or time.monotonic() > stop_at:
            break
        time.sleep(0.05)
    victim = sorted(answered)[0]
    with lock:
        killed_at_in_flight.append(in_flight)
    ray.kill(ray.get_actor(before[victim], namespace="serve"), no_restart=True)
    for t in threads:
        t.join(LOAD_SECONDS)
    assert not [o for o in outcomes if o[1] == -2], "an answer differed from the in-process ranking"
    lost = [o for o in outcomes if o[1] != 200]
    after_kill = [o for o in outcomes[-(LOAD_REQUESTS // 2) :] if o[1] == 200]
    print(f"{len(outcomes)} requests, {len(lost)} lost, {killed_at_in_flight[0]} in flight at the kill")
    assert len(outcomes) == LOAD_REQUESTS
    assert len(lost) <= killed_at_in_flight[0]  # nothing but what was in flight
    assert after_kill and {r for _, _, r in after_kill} - {victim}  # the survivor kept answering
    deadline = time.monotonic() + 300
    while True:  # Ray Serve replaces the dead replica
        now = _replicas()
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, f"no new replica: {now}"
        time.sleep(1)
    seen = set()
    for _ in range(MAX_ROUNDS * 4):
        r = httpx.post(f"{two_replicas}/v1/rerank", json={"query": QUERIES[0], "documents": DOCS}, timeout=300)
        assert r.status_code == 200 and [x["index"] for x in r.json()["results"]] == want[QUERIES[0]]
        seen.add(r.headers["x-replica"])
        if seen == set(now):
            break
    assert seen == set(now)  # the new replica answers too

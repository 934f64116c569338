"""The load generator's own logic (benchmarks/bench_server.py), without a model: its answer check catches every kind
of mismatch, its requests are deterministic, and a load level driven against a real (scripted) HTTP server on
127.0.0.1 stops by itself at its request or time bound and checks every 200. No timing asserts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_server.py"
_spec = importlib.util.spec_from_file_location("bench_server", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_server"] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)

EXPECTED = [(2, 0.5), (0, 0.25), (1, -0.125)]


def answer(pairs):
    return {"results": [{"index": i, "relevance_score": s} for i, s in pairs]}


def test_the_answer_check_passes_equal_answers_and_catches_every_mismatch():
    assert bench.check(answer(EXPECTED), EXPECTED)
    assert bench.check(answer([(2, 0.5 + 5e-5), (0, 0.25), (1, -0.125)]), EXPECTED)  # within 1e-4
    assert not bench.check(answer([(2, 0.5 + 2e-4), (0, 0.25), (1, -0.125)]), EXPECTED)  # a score off
    assert not bench.check(answer([(0, 0.5), (2, 0.25), (1, -0.125)]), EXPECTED)  # another order
    assert not bench.check(answer(EXPECTED[:2]), EXPECTED)  # a result missing
    assert not bench.check(answer([(2, None), (0, 0.25), (1, -0.125)]), EXPECTED)  # a null score


def test_the_tally_counts_each_kind_of_answer():
    t = bench.Tally()
    t.record(200, 1.0, answer(EXPECTED), EXPECTED)
    t.record(200, 1.0, answer(EXPECTED[::-1]), EXPECTED)
    t.record(429, 0.01, {"error": "full", "error_type": "Overloaded"}, EXPECTED)
    t.record(504, 2.0, {"error": "late", "error_type": "Timeout"}, EXPECTED)
    t.record(422, 0.01, {"error": "bad", "error_type": "Validation"}, EXPECTED)
    t.record(None, 0.5, None, EXPECTED, "ReadError: reset")
    s = bench.tally_summary(t, 10.0)
    assert (s["count_200"], s["mismatched"], s["count_429"], s["count_5xx"], s["count_other"], s["lost"]) == (
        2, 1, 1, 1, 1, 1,
    )  # fmt: skip
    assert s["statuses_5xx"] == {"504": 1} and s["throughput_rps"] == pytest.approx(0.2)


def test_quantiles_are_nearest_rank():
    q = bench.quantiles([float(x) for x in range(1, 101)])
    assert (q["p50"], q["p95"], q["p99"], q["max"]) == (50.5, 95.0, 99.0, 100.0)
    assert bench.quantiles([]) == {"n": 0}


def test_requests_are_deterministic_and_their_document_lists_distinct():
    source, first = bench.build_requests(4, 20, 115)
    _, again = bench.build_requests(4, 20, 115)
    assert [(r.query, r.documents) for r in first] == [(r.query, r.documents) for r in again]
    assert len({tuple(r.documents) for r in first}) == 4
    assert all(len(r.documents) == 20 and all(len(d.split()) <= 115 for d in r.documents) for r in first)
    assert source


def _scripted_server(answers: list[int]):
    """A real HTTP server whose POST /v2/rerank answers by the scripted status of each request in arrival order
    (the list's last status repeats): 429, or a 200 with EXPECTED's results in the wrong order, a mismatch for the
    load generator to catch. The returned list records what it sent."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    script = list(answers)
    sent: list[int] = []

    async def rerank(request):
        await request.body()
        status = script[min(len(sent), len(script) - 1)]
        sent.append(status)
        if status == 429:
            return JSONResponse({"error": "full", "error_type": "Overloaded"}, status_code=429)
        return JSONResponse(answer(EXPECTED[::-1]))

    return Starlette(routes=[Route("/v2/rerank", rerank, methods=["POST"])]), sent


def _level(url, pool, **kw):
    import asyncio

    args = {"c": 4, "max_requests": 30, "seconds": 120.0, "backoff": 0.01, "timeout": 60.0, "ramp": 0.05} | kw
    return asyncio.run(bench.level(url, pool, **args))


def test_a_load_level_against_a_real_server_stops_at_its_request_bound_and_checks_every_answer():
    harness = pytest.importorskip("server_harness")
    app, sent = _scripted_server([200, 200, 200, 429])
    pool = [bench.Request("q", ["a", "b", "c"], 150, EXPECTED)]
    with harness.running(app) as url:
        tally, _ = _level(url, pool)
    assert tally.sent == 30 == len(sent)  # the bound, exactly: no request past it
    s = bench.tally_summary(tally, 1.0)
    assert (s["count_200"], s["count_429"], s["lost"], s["count_5xx"]) == (3, 27, 0, 0)
    assert s["mismatched"] == 3  # every 200 was checked against the expected answer


def test_a_load_level_stops_by_itself_at_its_time_bound():
    harness = pytest.importorskip("server_harness")
    app, sent = _scripted_server([429])
    pool = [bench.Request("q", ["a", "b", "c"], None, EXPECTED)]
    with harness.running(app) as url:
        tally, wall = _level(url, pool, max_requests=10**9, seconds=0.5, backoff=0.05)
    assert 0 < tally.sent == len(sent) < 10**9 and wall >= 0.5  # stopped on its clock, not on the request bound
    assert bench.tally_summary(tally, wall)["count_429"] == tally.sent

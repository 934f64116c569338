"""The load generator's own logic (benchmarks/bench_server.py), without a server or a model: its answer check
catches every kind of mismatch, and its requests are deterministic. No timing asserts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_server.py"
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

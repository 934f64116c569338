"""Batching of waiting requests that share their documents: the scheduler's generic batching (keys, items and
callables, no model) and the server's use of it (one ``Reranker.rank_batch`` call per batch, each request answered
as if scored alone). No timing asserts: queue states are reached with a gate that holds the worker."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import SANITY_DOCS, SANITY_QUERIES
from server_harness import WAIT_S, Gate, httpx, metric, running, wait_for  # skips without the [server] extra

from core_rerank.server import ServerSettings, create_app
from core_rerank.server.scheduler import Abandoned, Scheduler, TimedOut

SCORE_ATOL = 1e-4


# ---------------------------------------------------------------- the scheduler alone: keys, items, callables
class Worker:
    """A scheduler with one slot whose first run holds it until ``free()``; records what each run was given."""

    def __init__(self, max_batch: int, outcome=None) -> None:
        self.batches: list[list[str]] = []
        self.sizes: list[int] = []
        self.hold = threading.Event()
        self.outcome = outcome or (lambda item: f"batched {item}")
        self.scheduler = Scheduler(
            1, 16, max_batch=max_batch, run_batch=self.run_batch, on_batch_size=self.sizes.append
        )

    def run_batch(self, items):
        self.batches.append(list(items))
        return [self.outcome(item) for item in items]

    async def request(self, key, item, abandon=None, timeout=WAIT_S):
        return await self.scheduler.run(lambda: f"alone {item}", key=key, item=item, abandon=abandon, timeout=timeout)

    async def hold_the_slot(self):
        first = asyncio.ensure_future(self.scheduler.run(lambda: self.hold.wait(WAIT_S) and "held"))
        await self.until(lambda: self.scheduler.running == 1)
        return first

    async def queue(self, key, item, abandon=None, timeout=WAIT_S):
        """A request that waits in the queue (its place known before the next one is sent)."""
        before = self.scheduler.waiting
        task = asyncio.ensure_future(self.request(key, item, abandon, timeout))
        await self.until(lambda: self.scheduler.waiting == before + 1)
        return task

    @staticmethod
    async def until(predicate):
        for _ in range(int(WAIT_S * 100)):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("gave up waiting")

    def free(self):
        self.hold.set()


def test_waiting_requests_with_one_key_run_as_one_batch_up_to_the_maximum():
    async def main():
        w = Worker(max_batch=3)
        first = await w.hold_the_slot()
        tasks = [await w.queue(key, item) for key, item in [("A", "a1"), ("A", "a2"), ("B", "b1"), ("A", "a3"),
                                                            ("A", "a4"), (None, "n1"), (None, "n2")]]  # fmt: skip
        w.free()
        assert await first == "held"
        return w, await asyncio.gather(*tasks)

    w, answers = asyncio.run(main())
    # a1 takes its slot and the next two waiting "A"s (a2, a3: max_batch 3); then b1, a4 alone (no other of their
    # key waits); requests without a key are never batched, even with an equal (None) key
    assert w.batches == [["a1", "a2", "a3"]]
    assert answers == ["batched a1", "batched a2", "alone b1", "batched a3", "alone a4", "alone n1", "alone n2"]
    assert w.sizes == [1, 3, 1, 1, 1, 1]


def test_max_batch_1_never_batches():
    async def main():
        w = Worker(max_batch=1)
        first = await w.hold_the_slot()
        tasks = [await w.queue("A", f"a{i}") for i in range(3)]
        w.free()
        await first
        return w, await asyncio.gather(*tasks)

    w, answers = asyncio.run(main())
    assert w.batches == [] and answers == ["alone a0", "alone a1", "alone a2"] and w.sizes == [1, 1, 1, 1]


def test_each_request_of_a_batch_gets_its_own_error():
    def outcome(item):
        return ValueError(f"bad {item}") if item == "a2" else f"ok {item}"

    async def main():
        w = Worker(max_batch=8, outcome=outcome)
        first = await w.hold_the_slot()
        tasks = [await w.queue("A", f"a{i}") for i in (1, 2, 3)]
        w.free()
        await first
        return await asyncio.gather(*tasks, return_exceptions=True)

    a1, a2, a3 = asyncio.run(main())
    assert a1 == "ok a1" and a3 == "ok a3"
    assert isinstance(a2, ValueError) and str(a2) == "bad a2"


def test_a_failing_batch_call_fails_each_of_its_requests_and_frees_the_slot():
    def outcome(item):
        raise RuntimeError("the whole batch failed")

    async def main():
        w = Worker(max_batch=8, outcome=outcome)
        first = await w.hold_the_slot()
        tasks = [await w.queue("A", f"a{i}") for i in (1, 2)]
        w.free()
        await first
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        after = await w.request("A", "later")  # the slot was given back
        return answers, after, w.scheduler.running

    answers, after, running_after = asyncio.run(main())
    assert all(isinstance(a, RuntimeError) and "whole batch" in str(a) for a in answers)
    assert after == "alone later" and running_after == 0


def test_a_request_whose_client_left_is_not_taken_into_a_batch():
    async def main():
        w = Worker(max_batch=8)
        first = await w.hold_the_slot()
        gone = asyncio.get_running_loop().create_future()
        a1 = await w.queue("A", "a1")
        a2 = await w.queue("A", "a2", abandon=gone)
        a3 = await w.queue("A", "a3")
        gone.set_result(None)
        with pytest.raises(Abandoned):
            await a2
        w.free()
        await first
        return w, await asyncio.gather(a1, a3)

    w, answers = asyncio.run(main())
    assert w.batches == [["a1", "a3"]] and answers == ["batched a1", "batched a3"]


def test_a_request_whose_deadline_passes_during_its_batch_times_out_alone():
    batch_may_end = threading.Event()

    def outcome(item):
        assert batch_may_end.wait(WAIT_S)
        return f"ok {item}"

    async def main():
        w = Worker(max_batch=8, outcome=outcome)
        first = await w.hold_the_slot()
        a1 = await w.queue("A", "a1")
        a2 = await w.queue("A", "a2", timeout=2.0)  # its deadline passes while the batch (held) runs
        w.free()
        await first
        with pytest.raises(TimedOut) as late:
            await a2
        batch_may_end.set()
        answer = await a1
        await w.until(lambda: w.scheduler.running == 0)  # the batch's slot is given back once it ends
        return w, late.value.stage, answer

    w, stage, answer = asyncio.run(main())
    assert w.batches == [["a1", "a2"]] and stage == "inference" and answer == "ok a1"


# ---------------------------------------------------------------- the server: one rank_batch per batch
class BatchGate(Gate):
    """:class:`Gate`, also recording each ``rank_batch`` call's queries."""

    def __init__(self, rr) -> None:
        super().__init__(rr)
        self.batches: list[list[str]] = []
        rank_batch = rr.rank_batch

        def recorded(queries, documents, *args, **kwargs):
            self.batches.append(list(queries))
            return rank_batch(queries, documents, *args, **kwargs)

        self.reranker.rank_batch = recorded


def post(base: str, path: str, body) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=WAIT_S)


def queued(pool, base, path, body, depth):
    """Send a request and wait until it waits in the queue at place ``depth``."""
    future = pool.submit(post, base, path, body)
    wait_for(lambda: metric(base, "core_rerank_queue_depth") == depth, f"request {depth} to queue")
    return future


def assert_same_ranking(answer: list[tuple[int, float]], expected) -> None:
    assert [i for i, _ in answer] == [e.index for e in expected]
    for (_, score), e in zip(answer, expected):
        assert score == pytest.approx(e.relevance, abs=SCORE_ATOL)


def v2_results(r: httpx.Response) -> list[tuple[int, float]]:
    assert r.status_code == 200, r.text
    return [(x["index"], x["relevance_score"]) for x in r.json()["results"]]


def test_requests_sharing_documents_are_batched_and_answered_as_if_alone(default_rr):
    gate = BatchGate(default_rr)
    other_docs = list(reversed(SANITY_DOCS))  # the same texts in another order: another document list
    queries = [q for q, _ in SANITY_QUERIES[:4]]
    with running(create_app(ServerSettings(max_queue=8), gate.reranker)) as base, ThreadPoolExecutor(6) as pool:
        first = pool.submit(post, base, "/v2/rerank", {"query": "first", "documents": SANITY_DOCS})
        gate.wait_entered()  # holds the only worker
        a = queued(pool, base, "/v2/rerank", {"query": queries[0], "documents": SANITY_DOCS}, 1)
        b = queued(pool, base, "/v2/rerank", {"query": queries[1], "documents": other_docs}, 2)
        c = queued(pool, base, "/rerank", {"query": queries[2], "texts": SANITY_DOCS}, 3)  # TEI, same texts
        d = queued(pool, base, "/v1/rerank", {"query": queries[3], "documents": SANITY_DOCS, "top_n": 3}, 4)
        gate.open()
        assert first.result().status_code == 200
        answers = [f.result() for f in (a, b, c, d)]
        # a, c and d share their documents: one rank_batch call; b's list differs and is never merged with them
        assert gate.batches == [[queries[0], queries[2], queries[3]]]
        assert gate.calls == ["first", queries[1]]  # the two runs alone went through rank()
        assert_same_ranking(v2_results(answers[0]), default_rr.rank(queries[0], SANITY_DOCS))
        assert_same_ranking(v2_results(answers[1]), default_rr.rank(queries[1], other_docs))
        assert answers[2].status_code == 200
        tei = [(x["index"], x["score"]) for x in answers[2].json()]
        assert_same_ranking(tei, default_rr.rank(queries[2], SANITY_DOCS))
        assert_same_ranking(v2_results(answers[3]), default_rr.rank(queries[3], SANITY_DOCS)[:3])
        ids = [answers[0].json()["id"], answers[3].json()["id"]]
        assert ids[0] != ids[1]  # each answer is its own
        # three runs: first (1), the batch (3), b (1)
        assert metric(base, "core_rerank_batch_size_count") == 3
        assert metric(base, "core_rerank_batch_size_sum") == 5
        assert metric(base, "core_rerank_batch_size_bucket", 'le="1.0"') == 2
        assert metric(base, "core_rerank_batch_size_bucket", 'le="3.0"') == 3
        assert metric(base, "core_rerank_inference_duration_seconds_count") == 3
        assert metric(base, "core_rerank_requests_total", 'endpoint="/v2/rerank",status="200"') == 3


def test_a_different_budget_or_truncate_is_never_merged(default_rr):
    gate = BatchGate(default_rr)
    q1, q2, q3 = (q for q, _ in SANITY_QUERIES[:3])
    with running(create_app(ServerSettings(max_queue=8), gate.reranker)) as base, ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, base, "/v2/rerank", {"query": "first", "documents": SANITY_DOCS})
        gate.wait_entered()
        a = queued(pool, base, "/rerank", {"query": q1, "texts": SANITY_DOCS}, 1)
        b = queued(pool, base, "/rerank", {"query": q2, "texts": SANITY_DOCS, "truncate": False}, 2)
        c = queued(pool, base, "/v2/rerank", {"query": q3, "documents": SANITY_DOCS, "max_tokens_per_doc": 8}, 3)
        gate.open()
        assert first.result().status_code == 200 and all(f.result().status_code == 200 for f in (a, b, c))
        assert gate.batches == []  # same texts, but another truncate setting or budget: each ran alone
        assert metric(base, "core_rerank_batch_size_sum") == 4 and metric(base, "core_rerank_batch_size_count") == 4


def test_an_invalid_request_in_a_batch_gets_its_own_error_and_the_others_their_answers(default_rr):
    gate = BatchGate(default_rr)
    q1, q2 = SANITY_QUERIES[0][0], SANITY_QUERIES[1][0]
    too_long = " ".join(["which organelle makes ATP for the cell?"] * 1200)  # ~10k tokens: no room for a document
    with running(create_app(ServerSettings(max_queue=8), gate.reranker)) as base, ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, base, "/v2/rerank", {"query": "first", "documents": SANITY_DOCS})
        gate.wait_entered()
        a = queued(pool, base, "/v2/rerank", {"query": q1, "documents": SANITY_DOCS}, 1)
        bad = queued(pool, base, "/v2/rerank", {"query": too_long, "documents": SANITY_DOCS}, 2)
        b = queued(pool, base, "/v2/rerank", {"query": q2, "documents": SANITY_DOCS}, 3)
        gate.open()
        assert first.result().status_code == 200
        assert bad.result().status_code == 422, bad.result().text
        assert bad.result().json()["error_type"] == "ContextLength"
        assert gate.batches == [[q1, too_long, q2]]  # tried as one batch, refused, then each scored alone
        assert_same_ranking(v2_results(a.result()), default_rr.rank(q1, SANITY_DOCS))
        assert_same_ranking(v2_results(b.result()), default_rr.rank(q2, SANITY_DOCS))
        assert metric(base, "core_rerank_request_failures_total", 'endpoint="/v2/rerank",reason="ContextLength"') == 1


def test_max_batch_requests_is_a_setting_and_shown_by_info(default_rr):
    with pytest.raises(Exception, match="max_batch_requests"):
        ServerSettings(max_batch_requests=0)
    with running(create_app(ServerSettings(max_batch_requests=3), default_rr)) as base:
        assert httpx.get(f"{base}/info").json()["limits"]["max_batch_requests"] == 3


def test_the_serve_command_takes_max_batch_requests():
    from typer.testing import CliRunner

    from core_rerank.cli import app

    runner = CliRunner(env={"COLUMNS": "300"})  # wide: rich must not wrap the option names
    out = runner.invoke(app, ["serve", "--help"])
    assert out.exit_code == 0 and "--max-batch-requests" in out.output
    refused = runner.invoke(app, ["serve", "--max-batch-requests", "0"])
    assert refused.exit_code != 0

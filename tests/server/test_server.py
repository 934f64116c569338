"""``core-rerank serve``: every endpoint and wire format, errors, limits, back-pressure and metrics, on a real uvicorn
server on 127.0.0.1 serving the embedded default model (the clients written by others are in test_server_clients.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import SANITY_DOCS, SANITY_QUERIES
from server_harness import WAIT_S, Gate, httpx, metric, running, wait_for  # skips without the [server] extra

from core_rerank.server import ServerSettings, create_app

QUERY, RELEVANT = SANITY_QUERIES[0]  # the French Revolution: document 3
LONG = " ".join(["The storming of the Bastille in 1789 began the French Revolution."] * 40)  # ~600 tokens


@pytest.fixture(scope="module")
def server(default_rr):
    """One server on the default model with the default limits, shared by the tests that only read from it."""
    with running(create_app(ServerSettings(), default_rr)) as base:
        yield base


def post(base: str, path: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=WAIT_S, **kwargs)


def assert_error(r: httpx.Response, status: int, error_type: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type and body["error"], body
    return body


# ---------------------------------------------------------------- the four shapes give the in-process ranking
def test_tei_shape(server, default_rr):
    expected = default_rr.rank(QUERY, SANITY_DOCS)
    r = post(server, "/rerank", {"query": QUERY, "texts": SANITY_DOCS})
    assert r.status_code == 200 and r.headers["x-score-kind"] == "relevance"
    out = r.json()
    assert [x["index"] for x in out] == expected.indices and out[0]["index"] == RELEVANT
    assert [x["score"] for x in out] == pytest.approx([e.relevance for e in expected], abs=1e-9)
    assert all(set(x) == {"index", "score"} for x in out)  # return_text defaults to false
    assert [x["score"] for x in out] == sorted((x["score"] for x in out), reverse=True)
    raw = post(server, "/rerank", {"query": QUERY, "texts": SANITY_DOCS, "raw_scores": True, "return_text": True})
    assert raw.headers["x-score-kind"] == "raw"
    assert [(x["index"], x["text"]) for x in raw.json()] == [(e.index, SANITY_DOCS[e.index]) for e in expected]
    assert [x["score"] for x in raw.json()] == pytest.approx([e.score for e in expected], abs=1e-9)


def test_infinity_shape(server, default_rr):
    expected = default_rr.rank(QUERY, SANITY_DOCS)
    r = post(server, "/rerank", {"query": QUERY, "documents": SANITY_DOCS, "top_n": 3, "return_documents": True})
    assert r.status_code == 200
    out = r.json()
    assert out["object"] == "rerank" and out["model"] == default_rr.model_id and out["id"] and out["created"] > 0
    assert [(x["index"], x["document"]) for x in out["results"]] == [(e.index, e.text) for e in expected[:3]]
    assert [x["relevance_score"] for x in out["results"]] == pytest.approx([e.relevance for e in expected[:3]])
    tokens = sum(e.tokens for e in expected)
    assert out["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    bare = post(server, "/rerank", {"query": QUERY, "documents": SANITY_DOCS}).json()["results"]
    assert len(bare) == len(SANITY_DOCS) and all("document" not in x for x in bare)


def test_v1_shape_with_objects_and_rank_fields(server, default_rr):
    docs = [{"title": f"doc {i}", "text": t, "source": f"s{i}"} for i, t in enumerate(SANITY_DOCS)]
    expected = default_rr.rank(QUERY, docs)  # the engine scores title + text, as the server does
    r = post(server, "/v1/rerank", {"model": "any", "query": QUERY, "documents": docs, "top_n": 2,
                                    "return_documents": True})  # fmt: skip
    out = r.json()
    assert r.status_code == 200 and set(out) >= {"id", "model", "usage", "results", "meta"}
    assert [x["index"] for x in out["results"]] == expected.indices[:2]
    assert out["results"][0]["document"] == docs[RELEVANT]  # an object comes back as sent
    assert [x["relevance_score"] for x in out["results"]] == pytest.approx([e.relevance for e in expected[:2]])
    # rank_fields: only those fields are scored, as "key: value" lines
    fields = post(server, "/v1/rerank", {"query": QUERY, "documents": docs, "rank_fields": ["text"]}).json()
    lines = default_rr.rank(QUERY, [f"text: {d['text']}" for d in docs])
    assert [x["index"] for x in fields["results"]] == lines.indices
    assert [x["relevance_score"] for x in fields["results"]] == pytest.approx([e.relevance for e in lines])
    strings = post(server, "/v1/rerank", {"query": QUERY, "documents": SANITY_DOCS, "return_documents": True}).json()
    assert strings["results"][0]["document"] == {"text": SANITY_DOCS[RELEVANT]}


def test_v2_shape_and_max_tokens_per_doc(server, default_rr):
    expected = default_rr.rank(QUERY, SANITY_DOCS)
    out = post(server, "/v2/rerank", {"model": "rerank-v3.5", "query": QUERY, "documents": SANITY_DOCS, "top_n": 3})
    body = out.json()
    assert out.status_code == 200 and set(body) == {"id", "results", "meta"}
    assert [x["index"] for x in body["results"]] == expected.indices[:3]
    assert all(set(x) == {"index", "relevance_score"} for x in body["results"])
    assert body["meta"]["api_version"] == {"version": "2"} and "warnings" not in body["meta"]
    docs = [*SANITY_DOCS[:3], LONG]
    cut = default_rr.with_options(max_doc_tokens=12).rank(QUERY, docs)
    r = post(server, "/v2/rerank", {"query": QUERY, "documents": docs, "max_tokens_per_doc": 12}).json()
    assert [x["index"] for x in r["results"]] == cut.indices
    assert [x["relevance_score"] for x in r["results"]] == pytest.approx([e.relevance for e in cut])
    assert r["meta"]["tokens"]["input_tokens"] == sum(e.tokens for e in cut) <= 12 * len(docs)
    assert "were cut to their first 12 tokens" in r["meta"]["warnings"][0]
    # a request may lower the server's budget, never raise it
    big = post(server, "/v2/rerank", {"query": QUERY, "documents": docs, "max_tokens_per_doc": 100_000}).json()
    full = default_rr.rank(QUERY, docs)
    assert [x["relevance_score"] for x in big["results"]] == pytest.approx([e.relevance for e in full])


def test_every_optional_field_accepts_null_and_unknown_fields_are_ignored(server, default_rr):
    expected = default_rr.rank(QUERY, SANITY_DOCS).indices
    extra = {"unknown": {"nested": [1, None]}, "another": None}
    bodies = {
        "/rerank": {"query": QUERY, "texts": SANITY_DOCS, "raw_scores": None, "return_text": None, "truncate": None,
                    "truncation_direction": None, **extra},
        "/v1/rerank": {"model": None, "query": QUERY, "documents": SANITY_DOCS, "top_n": None,
                       "return_documents": None, "rank_fields": None, "max_chunks_per_doc": None, **extra},
        "/v2/rerank": {"model": None, "query": QUERY, "documents": SANITY_DOCS, "top_n": None,
                       "max_tokens_per_doc": None, **extra},
    }  # fmt: skip
    for path, body in bodies.items():
        r = post(server, path, body)
        assert r.status_code == 200, (path, r.text)
        results = r.json() if path == "/rerank" else r.json()["results"]
        assert [x["index"] for x in results] == expected, path
    infinity = {"query": QUERY, "documents": SANITY_DOCS, "top_n": None, "return_documents": None,
                "raw_scores": None, "model": None, **extra}  # fmt: skip
    assert [x["index"] for x in post(server, "/rerank", infinity).json()["results"]] == expected


def test_truncate_false_refuses_a_long_document_and_left_truncation_is_refused(server):
    docs = [SANITY_DOCS[0], LONG]
    assert post(server, "/rerank", {"query": QUERY, "texts": docs}).status_code == 200  # cut, as the engine does
    assert post(server, "/rerank", {"query": QUERY, "texts": docs, "truncate": True}).status_code == 200
    body = assert_error(post(server, "/rerank", {"query": QUERY, "texts": docs, "truncate": False}), 422, "Validation")
    assert "[1]" in body["error"] and "truncate" in body["error"]
    left = {"query": QUERY, "texts": docs, "truncation_direction": "Left"}
    assert "Left" in assert_error(post(server, "/rerank", left), 422, "Validation")["error"]


def test_an_empty_document_ranks_last_with_relevance_0_and_raw_null(server):
    docs = [SANITY_DOCS[3], "   "]
    rel = post(server, "/rerank", {"query": QUERY, "texts": docs}).json()
    assert rel[-1] == {"index": 1, "score": 0.0}
    raw = post(server, "/rerank", {"query": QUERY, "texts": docs, "raw_scores": True}).json()
    assert raw[-1] == {"index": 1, "score": None}  # -inf in the engine; JSON has no infinity


# ---------------------------------------------------------------- errors: the codes clients expect, never a 500
@pytest.mark.parametrize(
    "path,body", [("/rerank", {"query": QUERY, "texts": []}), ("/rerank", {"query": QUERY, "documents": []}),
                  ("/v1/rerank", {"query": QUERY, "documents": []}), ("/v2/rerank", {"query": QUERY, "documents": []})],
)  # fmt: skip
def test_an_empty_list_is_400(server, path, body):
    assert_error(post(server, path, body), 400, "Empty")


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v2/rerank", {"documents": ["a"]}),  # no query
        ("/v2/rerank", {"query": None, "documents": ["a"]}),
        ("/v2/rerank", {"query": "  ", "documents": ["a"]}),
        ("/v2/rerank", {"query": 7, "documents": ["a"]}),
        ("/v2/rerank", {"query": "q"}),  # no documents
        ("/v2/rerank", {"query": "q", "documents": None}),
        ("/v2/rerank", {"query": "q", "documents": "a single string"}),
        ("/v2/rerank", {"query": "q", "documents": ["a", None]}),
        ("/v2/rerank", {"query": "q", "documents": ["a", 3]}),
        ("/v2/rerank", {"query": "q", "documents": ["a"], "top_n": 0}),
        ("/v2/rerank", {"query": "q", "documents": ["a"], "top_n": -2}),
        ("/v2/rerank", {"query": "q", "documents": ["a"], "top_n": True}),
        ("/v2/rerank", {"query": "q", "documents": ["a"], "top_n": "3"}),
        ("/v2/rerank", {"query": "q", "documents": ["a"], "top_n": 1.5}),
        ("/v2/rerank", {"query": "q", "documents": ["a"], "max_tokens_per_doc": 0}),
        ("/v1/rerank", {"query": "q", "documents": [{"title": "no text"}, {"text": 5}]}),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "rank_fields": "text"}),
        ("/rerank", {"query": "q", "texts": ["a"], "raw_scores": "yes"}),
        ("/rerank", {"query": "q", "texts": [{"text": "a"}]}),
        ("/rerank", {"query": "q", "texts": ["a"], "truncation_direction": "Up"}),
        ("/rerank", {"query": "q"}),  # neither texts nor documents
        ("/rerank", ["q", ["a"]]),  # not an object
        ("/rerank", "just a string"),
        ("/rerank", None),
    ],
)
def test_invalid_fields_are_422(server, path, body):
    assert_error(post(server, path, body), 422, "Validation")


def test_bad_json_and_odd_bodies_are_4xx_never_500(server):
    for content in (b"{", b"", b"\xff\xfe", b"[1, 2", b'{"query": "q", "texts": ["a"]} trailing', b"NaN"):
        r = httpx.post(f"{server}/rerank", content=content, headers={"content-type": "application/json"})
        assert_error(r, 422, "Validation")
    r = httpx.post(
        f"{server}/v2/rerank", content=b"query=q", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert_error(r, 422, "Validation")
    # text a tokenizer cannot encode as is, special-token spellings, control characters: scored, not failed
    odd = ["\ud800 lone surrogate", "<|im_end|><|im_start|>system", "\x00\x01\x1f", "🙂" * 50]
    r = httpx.post(f"{server}/v2/rerank", content=json.dumps({"query": "q \udfff", "documents": odd}),
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 200 and sorted(x["index"] for x in r.json()["results"]) == [0, 1, 2, 3]
    r = httpx.post(f"{server}/rerank", content=json.dumps({"query": "q", "texts": odd, "return_text": True}),
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 200 and sorted(x["text"] for x in r.json()) == sorted(odd)  # given back as sent


def test_unknown_path_and_method_answer_in_the_error_shape(server):
    assert_error(httpx.get(f"{server}/v3/rerank"), 404, "NotFound")
    assert_error(httpx.get(f"{server}/v2/rerank"), 405, "MethodNotAllowed")


def test_limits_413_and_too_many_documents_422(default_rr):
    settings = ServerSettings(payload_limit=2_000, max_client_batch_size=3)
    with running(create_app(settings, default_rr)) as base:
        big = {"query": QUERY, "documents": ["x" * 3_000]}
        assert_error(post(base, "/v2/rerank", big), 413, "PayloadTooLarge")

        def chunks():  # no Content-Length: the limit applies while reading
            for _ in range(10):
                yield b" " * 500

        r = httpx.post(f"{base}/rerank", content=chunks(), headers={"content-type": "application/json"})
        assert "transfer-encoding" in r.request.headers
        assert_error(r, 413, "PayloadTooLarge")
        body = assert_error(post(base, "/v2/rerank", {"query": QUERY, "documents": SANITY_DOCS[:4]}), 422,
                            "TooManyDocuments")  # fmt: skip
        assert "at most 3" in body["error"]
        assert post(base, "/v2/rerank", {"query": QUERY, "documents": SANITY_DOCS[:3]}).status_code == 200
        info = httpx.get(f"{base}/info").json()["limits"]
        assert info["payload_limit"] == 2_000 and info["max_client_batch_size"] == 3


def test_api_key(default_rr):
    key = "s3cret-key"
    with running(create_app(ServerSettings(api_key=key), default_rr)) as base:
        good = {"Authorization": f"Bearer {key}"}
        for path, body in (("/rerank", {"query": QUERY, "texts": SANITY_DOCS[:2]}),
                           ("/v1/rerank", {"query": QUERY, "documents": SANITY_DOCS[:2]}),
                           ("/v2/rerank", {"query": QUERY, "documents": SANITY_DOCS[:2]})):  # fmt: skip
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}, {"X-Api-Key": key}):
                r = post(base, path, body, headers=headers)
                assert_error(r, 401, "Unauthorized")
                assert r.headers["www-authenticate"] == "Bearer"
            assert post(base, path, body, headers=good).status_code == 200
            # the key is checked before the body: a bad body without a key is still a 401
            assert_error(post(base, path, {"nonsense": 1}), 401, "Unauthorized")
        assert_error(httpx.get(f"{base}/info"), 401, "Unauthorized")
        info = httpx.get(f"{base}/info", headers=good).json()
        assert info["limits"]["api_key_required"] is True and key not in json.dumps(info)
        assert httpx.get(f"{base}/health").status_code == 200  # public
        assert httpx.get(f"{base}/metrics").status_code == 200  # public
        assert metric(base, "core_rerank_request_failures_total", 'endpoint="/info",reason="Unauthorized"') == 1


# ---------------------------------------------------------------- loading
def test_health_is_503_until_the_model_is_loaded(default_rr):
    release = threading.Event()

    def load():
        assert release.wait(WAIT_S)
        return default_rr

    with running(create_app(ServerSettings(), load)) as base:
        r = httpx.get(f"{base}/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        body = assert_error(post(base, "/v2/rerank", {"query": QUERY, "documents": SANITY_DOCS}), 503, "Loading")
        assert "loading" in body["error"]
        assert int(post(base, "/rerank", {"query": QUERY, "texts": ["a"]}).headers["retry-after"]) >= 1
        # input is still checked while loading: a bad request learns what is wrong with it
        assert_error(post(base, "/v2/rerank", {"query": QUERY, "documents": []}), 400, "Empty")
        assert httpx.get(f"{base}/info").json()["status"] == "loading"
        assert metric(base, "core_rerank_model_ready") == 0
        release.set()
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, "the model to load")
        assert httpx.get(f"{base}/health").json() == {"status": "ready"}
        assert metric(base, "core_rerank_model_ready") == 1
        r = post(base, "/v2/rerank", {"query": QUERY, "documents": SANITY_DOCS})
        assert r.status_code == 200 and r.json()["results"][0]["index"] == RELEVANT


def test_a_serving_process_freezes_its_heap_once_the_model_is_loaded(default_rr):
    """The loaded model's objects leave the cyclic collector's sight (gc.freeze), so a full collection no longer
    walks them and stalls the event loop; a host application that imports the app keeps its heap as it is."""
    import gc

    assert gc.get_freeze_count() == 0
    with running(create_app(ServerSettings(), default_rr)) as base:
        assert post(base, "/v2/rerank", {"query": QUERY, "documents": SANITY_DOCS}).status_code == 200
        assert gc.get_freeze_count() == 0
    try:
        with running(create_app(ServerSettings(), default_rr, freeze_heap=True)) as base:
            assert gc.get_freeze_count() > 100_000  # torch, transformers and the model's modules
            r = post(base, "/v2/rerank", {"query": QUERY, "documents": SANITY_DOCS})
            assert r.status_code == 200 and r.json()["results"][0]["index"] == RELEVANT
    finally:
        gc.unfreeze()


def test_without_lifespan_events_the_first_request_starts_loading(default_rr):
    """An ASGI server that runs no start-up events (lifespan off) still gets the model: the first request starts
    the load."""
    with running(create_app(ServerSettings(), lambda: default_rr), lifespan="off") as base:
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, "the model to load")
        r = post(base, "/v2/rerank", {"query": QUERY, "documents": SANITY_DOCS})
        assert r.status_code == 200 and r.json()["results"][0]["index"] == RELEVANT


def test_a_failed_load_is_a_503_and_is_reported(caplog):
    from core_rerank.errors import ModelNotFoundError

    reported = []

    def load():
        raise ModelNotFoundError("no model named 'nope'")

    with caplog.at_level(logging.ERROR, logger="core_rerank.server"):
        with running(create_app(ServerSettings(), load, on_load_failure=reported.append)) as base:
            wait_for(lambda: reported, "the load to fail")
            r = httpx.get(f"{base}/health")
            assert r.status_code == 503 and r.json()["status"] == "failed" and "nope" in r.json()["error"]
            body = assert_error(post(base, "/v2/rerank", {"query": QUERY, "documents": ["a"]}), 503, "LoadFailed")
            assert "ModelNotFoundError" in body["error"]
    assert reported == ["ModelNotFoundError: no model named 'nope'"]
    assert "could not load the model" in caplog.text


# ---------------------------------------------------------------- back-pressure, timeouts, disconnects
def test_a_full_queue_answers_429_with_retry_after(default_rr):
    gate = Gate(default_rr)
    settings = ServerSettings(max_concurrent_requests=1, max_queue=1)
    with running(create_app(settings, gate.reranker)) as base, ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, base, "/v2/rerank", {"query": "first", "documents": SANITY_DOCS})
        gate.wait_entered()  # the first holds the only worker
        second = pool.submit(post, base, "/v2/rerank", {"query": QUERY, "documents": SANITY_DOCS})
        wait_for(lambda: metric(base, "core_rerank_queue_depth") == 1, "the second request to queue")
        r = post(base, "/v2/rerank", {"query": "third", "documents": SANITY_DOCS})
        body = assert_error(r, 429, "Overloaded")
        assert int(r.headers["retry-after"]) >= 1 and "queue is full" in body["error"]
        assert_error(post(base, "/rerank", {"query": "fourth", "texts": SANITY_DOCS}), 429, "Overloaded")
        # Refused before its body is read: under overload even a malformed request costs no parsing, and learns
        # what is wrong with it once it gets a place.
        assert_error(post(base, "/v1/rerank", {"query": "fifth", "documents": "not a list"}), 429, "Overloaded")
        assert gate.calls == ["first"]
        gate.open()
        assert first.result().status_code == 200
        accepted = second.result()
        assert accepted.status_code == 200
        assert [x["index"] for x in accepted.json()["results"]] == default_rr.rank(QUERY, SANITY_DOCS).indices
        assert gate.calls == ["first", QUERY]  # the refused ones were never scored
        assert metric(base, "core_rerank_request_failures_total", 'endpoint="/v2/rerank",reason="Overloaded"') == 1
        assert metric(base, "core_rerank_requests_total", 'endpoint="/v2/rerank",status="429"') == 1
        assert metric(base, "core_rerank_requests_total", 'endpoint="/v1/rerank",status="429"') == 1
        assert metric(base, "core_rerank_queue_depth") == 0


def test_timeouts_are_504_in_the_queue_and_while_scoring(default_rr):
    gate = Gate(default_rr)
    settings = ServerSettings(max_concurrent_requests=1, max_queue=4, timeout=0.5)
    with running(create_app(settings, gate.reranker)) as base, ThreadPoolExecutor(2) as pool:
        scoring = pool.submit(post, base, "/v2/rerank", {"query": "held", "documents": SANITY_DOCS})
        gate.wait_entered()
        waiting = post(base, "/v2/rerank", {"query": "queued", "documents": SANITY_DOCS})  # the gate is still shut
        assert "waiting in the queue" in assert_error(waiting, 504, "Timeout")["error"]
        assert "while scoring" in assert_error(scoring.result(), 504, "Timeout")["error"]
        assert metric(base, "core_rerank_requests_running") == 1  # the timed-out forward pass still holds its thread
        gate.open()
        wait_for(lambda: metric(base, "core_rerank_requests_running") == 0, "the held forward pass to end")
        assert gate.calls == ["held"]  # the request that timed out in the queue never ran
        assert metric(base, "core_rerank_request_failures_total", 'endpoint="/v2/rerank",reason="Timeout"') == 2


def test_a_client_that_disconnects_before_its_turn_is_dropped_from_the_queue(default_rr):
    gate = Gate(default_rr)
    with running(create_app(ServerSettings(max_queue=4), gate.reranker)) as base, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, base, "/v2/rerank", {"query": "first", "documents": SANITY_DOCS})
        gate.wait_entered()
        body = json.dumps({"query": "gone", "documents": SANITY_DOCS}).encode()
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            wait_for(lambda: metric(base, "core_rerank_queue_depth") == 1, "the request to queue")
        # the socket is closed: the server takes the request out of the queue without scoring it
        reason = 'endpoint="/v2/rerank",reason="ClientDisconnected"'
        wait_for(lambda: metric(base, "core_rerank_request_failures_total", reason) == 1, "the drop")
        assert metric(base, "core_rerank_queue_depth") == 0
        gate.open()
        assert first.result().status_code == 200
        assert gate.calls == ["first"]


# ---------------------------------------------------------------- info, metrics, uncalibrated head lists
def test_info_describes_the_model_and_the_limits(server, default_rr):
    info = httpx.get(f"{server}/info").json()
    assert info["status"] == "ready" and info["model"] == default_rr.model_id
    assert info["heads"]["count"] == len(default_rr.head_list.heads) and info["heads"]["method"] == "core"
    assert info["layers"] == {"loaded": default_rr.loaded_model.layers_loaded, "total": 30}
    assert info["dtype"] == str(default_rr.dtype).removeprefix("torch.") and info["device"] == "cpu"
    assert info["scores"]["relevance_score"] == "relevance" and info["scores"]["calibrated"] is True
    assert set(info["scores"]["relevance_map"]) >= {"a", "b"}
    limits = info["limits"]
    assert limits == {
        **limits,
        "max_concurrent_requests": 1,
        "max_queue": 16,
        "max_client_batch_size": 1000,
        "max_doc_tokens": 200,
        "timeout": 60.0,
        "payload_limit": 2_000_000,
        "api_key_required": False,
    }


def test_metrics_count_requests_durations_and_tokens(default_rr):
    with running(create_app(ServerSettings(), default_rr)) as base:
        expected = default_rr.rank(QUERY, SANITY_DOCS)
        assert post(base, "/v2/rerank", {"query": QUERY, "documents": SANITY_DOCS}).status_code == 200
        assert post(base, "/rerank", {"query": QUERY, "texts": SANITY_DOCS}).status_code == 200
        assert post(base, "/v2/rerank", {"query": QUERY, "documents": []}).status_code == 400
        text = httpx.get(f"{base}/metrics")
        assert text.headers["content-type"].startswith("text/plain")
        for name in ("core_rerank_queue_duration_seconds_bucket", "core_rerank_inference_duration_seconds_bucket",
                     "core_rerank_request_duration_seconds_bucket", "process_resident_memory_bytes"):  # fmt: skip
            assert name in text.text
        assert metric(base, "core_rerank_requests_total", 'endpoint="/v2/rerank",status="200"') == 1
        assert metric(base, "core_rerank_requests_total", 'endpoint="/rerank",status="200"') == 1
        assert metric(base, "core_rerank_request_failures_total", 'endpoint="/v2/rerank",reason="Empty"') == 1
        assert metric(base, "core_rerank_documents_total") == 2 * len(SANITY_DOCS)
        assert metric(base, "core_rerank_document_tokens_total") == 2 * sum(e.tokens for e in expected)
        assert metric(base, "core_rerank_inference_duration_seconds_count") == 2
        assert metric(base, "core_rerank_queue_duration_seconds_count") == 2
        assert metric(base, "core_rerank_request_duration_seconds_count", 'endpoint="/v2/rerank"') == 2
        assert metric(base, "core_rerank_model_ready") == 1 and metric(base, "core_rerank_queue_depth") == 0


def test_block_attention_serves_repeat_documents_from_the_kv_cache_and_counts_it(default_rr):
    rr = default_rr.with_options(attention="block")
    with running(create_app(ServerSettings(), rr)) as base:
        info = httpx.get(f"{base}/info").json()
        assert info["attention"] == "block" and info["order"] is None and info["kv_cache"]["enabled"] is True
        hits = metric(base, "core_rerank_kv_cache_hits_total")
        misses = metric(base, "core_rerank_kv_cache_misses_total")
        docs = [f"{d} (served {hits})" for d in SANITY_DOCS]  # documents no other test has encoded
        first = post(base, "/v2/rerank", {"query": QUERY, "documents": docs}).json()
        again = post(base, "/v2/rerank", {"query": SANITY_QUERIES[4][0], "documents": docs[::-1]}).json()
        assert metric(base, "core_rerank_kv_cache_misses_total") - misses == len(docs)
        assert metric(base, "core_rerank_kv_cache_hits_total") - hits == len(docs)
        assert metric(base, "core_rerank_kv_cache_bytes") > 0
        assert first["results"][0]["index"] == RELEVANT
        assert again["results"][0]["index"] == len(docs) - 1 - SANITY_QUERIES[4][1]
        expected = rr.rank(QUERY, docs)
        assert [r["index"] for r in first["results"]] == expected.indices
        stats = httpx.get(f"{base}/info").json()["kv_cache"]
        assert stats["hits"] >= len(docs) and stats["entries"] >= len(docs) and stats["capacity_bytes"] == 1024 * 2**20


def test_a_head_list_without_a_relevance_map_serves_normalized_scores_and_says_so(default_rr, caplog):
    uncalibrated = copy.copy(default_rr)
    uncalibrated.head_list = dataclasses.replace(default_rr.head_list, relevance_map=None)
    assert not uncalibrated.calibrated
    with caplog.at_level(logging.WARNING, logger="core_rerank.server"):
        app = create_app(ServerSettings(), uncalibrated)
    assert "no fitted relevance map" in caplog.text  # said at start-up
    expected = uncalibrated.rank(QUERY, SANITY_DOCS)
    with running(app) as base:
        info = httpx.get(f"{base}/info").json()["scores"]
        assert info["relevance_score"] == "normalized_score" and info["calibrated"] is False
        assert "within one request" in info["note"]
        r = post(base, "/v2/rerank", {"query": QUERY, "documents": SANITY_DOCS})
        assert r.headers["x-score-kind"] == "normalized_score"
        scores = [x["relevance_score"] for x in r.json()["results"]]
        assert scores == pytest.approx([e.normalized_score for e in expected]) and sum(scores) == pytest.approx(1)
        assert [x["index"] for x in r.json()["results"]] == expected.indices


# ---------------------------------------------------------------- the command
def test_the_serve_command(tmp_path, default_rr):
    """``core-rerank serve`` in its own process: loads the default model while /health answers 503, then serves
    with the limits given on the command line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CORE_RERANK_API_KEY": "cli-key"}
    cmd = [
        sys.executable,
        "-m",
        "core_rerank.cli",
        "serve",
        "--port",
        str(port),
        "--max-queue",
        "3",
        "--max-client-batch-size",
        "50",
        "--max-doc-tokens",
        "150",
        "--dtype",
        "float32",
        "--timeout",
        "120",
        "--log-level",
        "warning",
    ]
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"{base}/health").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, "core-rerank serve to load the model", timeout=300)
        key = {"Authorization": "Bearer cli-key"}
        info = httpx.get(f"{base}/info", headers=key).json()
        assert info["limits"]["max_queue"] == 3 and info["limits"]["max_client_batch_size"] == 50
        assert info["limits"]["max_doc_tokens"] == 150 and info["limits"]["timeout"] == 120
        assert info["dtype"] == "float32"  # every engine option reaches serve (--dtype, --device, ...)
        assert info["model"] == default_rr.model_id and info["limits"]["api_key_required"] is True
        r = post(base, "/v2/rerank", {"query": QUERY, "documents": SANITY_DOCS}, headers=key)
        assert [x["index"] for x in r.json()["results"]] == default_rr.rank(QUERY, SANITY_DOCS).indices
        assert_error(post(base, "/v2/rerank", {"query": QUERY, "documents": SANITY_DOCS}), 401, "Unauthorized")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.slow  # a process of its own
def test_the_serve_command_exits_2_when_the_model_cannot_load(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run(
        [sys.executable, "-m", "core_rerank.cli", "serve", "--model", str(tmp_path / "missing"), "--port", str(port)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "error" in out.stderr


# ---------------------------------------------------------------- extension fields: highlights and pruning
TWO_TOPICS = [SANITY_DOCS[i] + " " + SANITY_DOCS[j] for i, j in ((1, 3), (5, 7), (6, 0), (2, 4))]


@pytest.mark.parametrize(
    ("path", "docs_field", "results_of"),
    [
        ("/v1/rerank", "documents", lambda body: body["results"]),
        ("/v2/rerank", "documents", lambda body: body["results"]),
        ("/rerank", "texts", lambda body: body),
        ("/rerank", "documents", lambda body: body["results"]),
    ],
)
def test_return_highlights_and_prune_in_every_format(server, default_rr, path, docs_field, results_of):
    """The extension fields give what the engine gives in process: the same highlights, the same pruned text."""
    query = SANITY_QUERIES[4][0]  # ATP: the first sentence of document 2
    body = {"query": query, docs_field: TWO_TOPICS, "return_highlights": True, "prune": {"keep": 0.5}}
    if docs_field == "documents":
        body["top_n"] = 2
    r = post(server, path, body)
    assert r.status_code == 200, r.text
    results = results_of(r.json())
    expected = default_rr.compress(query, TWO_TOPICS, top_n=2 if docs_field == "documents" else None, keep=0.5)
    assert [x["index"] for x in results] == expected.indices
    for got, want in zip(results, expected):
        assert [h["text"] for h in got["highlights"]] == [h.text for h in want.highlights]
        assert [h["score"] for h in got["highlights"]] == pytest.approx([h.score for h in want.highlights], rel=1e-6)
        assert got["compression"]["text"] == want.compression.text
        assert got["compression"]["ratio"] == pytest.approx(want.compression.ratio)
    assert results[0]["index"] == 2 and results[0]["compression"]["text"].startswith(SANITY_DOCS[6])
    plain = post(server, path, {k: v for k, v in body.items() if k not in ("return_highlights", "prune")}).json()
    assert all("highlights" not in x and "compression" not in x for x in results_of(plain))  # the format's own


def test_a_list_budget_is_shared_by_the_returned_results_and_bad_budgets_are_422(server, default_rr):
    query = SANITY_QUERIES[4][0]
    body = {"query": query, "documents": TWO_TOPICS, "top_n": 2, "prune": {"keep": 0.25, "scope": "list"}}
    results = post(server, "/v2/rerank", body).json()["results"]
    expected = default_rr.compress(query, TWO_TOPICS, top_n=2, keep=0.25, scope="list")
    assert [x["compression"]["text"] for x in results] == [r.compression.text for r in expected]
    for bad in ({"keep": 1.5}, {"keep": 0}, {"scope": "corpus"}, {"keep": None}, {"keep": "half"}, {"kept": 0.5}):
        r = post(server, "/v1/rerank", {"query": query, "documents": TWO_TOPICS, "prune": bad})
        assert_error(r, 422, "Validation")

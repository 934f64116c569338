"""Hostile input, generated: every call returns a permutation of the input (each index at most once, all of
them when nothing filters) or raises a CoreRerankError. Nothing else: no crash deep in torch or the
tokenizer, no NaN, no invalid JSON.

Seeded (``derandomize=True``): every run generates the same cases, so a failure reproduces.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from core_rerank import CoreRerankError, HeadList, Reranker

FUZZ_HEADS = [(0, 0), (1, 4)]  # two layers of the default model: the real tokenizer and model, fast
SPECIAL = [
    "<|im_end|>",
    "<|im_start|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "</s>",
    "<s>",
    "<eos>",
    "<bos>",
    "<start_of_turn>",
    "<pad>",
    "[INST]",
]
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())  # lone surrogates too
ASTRAL = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF)
CONTROL = st.sampled_from(["\x00", "\x01", "\x1b", "\x7f", "\u200b", "\u202e", "\ufeff", "\r", "\t", "\x1f"])
piece = st.one_of(
    st.text(ANY_CHAR, max_size=40),
    st.text(ASTRAL, max_size=8),
    st.sampled_from(SPECIAL),
    CONTROL,
    st.sampled_from(["", " ", "\n\n", "   \t", "Bananas are rich in potassium.", "cp copies files."]),
)
text = st.lists(piece, max_size=6).map("".join)
# Built from short seeds, so failure reports and statistics stay readable.
huge = st.sampled_from([("potassium ", 30_000), ("x", 400_000), ("<|im_end|>", 5_000), ("\U0001f600", 50_000)]).map(
    lambda seed: seed[0] * seed[1]
)
good_text = st.one_of(text, text, text, huge)
nonblank = st.tuples(text, st.sampled_from(["potassium?", "<|im_end|>", "\U0001f600", "x\x00y"]), text).map("".join)
valid_document = st.one_of(
    good_text,
    good_text,
    st.fixed_dictionaries({"text": good_text}, optional={"title": st.one_of(st.none(), text)}),
)
bad_document = st.one_of(
    st.dictionaries(st.sampled_from(["text", "title", "body", "id"]), st.one_of(text, st.integers(), st.none())),
    st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=8), st.lists(st.integers(), max_size=2)),
)
document = st.one_of(valid_document, valid_document, valid_document, bad_document)
valid_documents = st.one_of(
    st.lists(valid_document, max_size=24),
    st.lists(st.sampled_from(["same text", "same text", "", "other"]), max_size=12),  # duplicates
)
bad_documents = st.one_of(
    st.tuples(st.lists(valid_document, max_size=12), bad_document, st.integers(0, 12)).map(
        lambda t: [*t[0][: t[2]], t[1], *t[0][t[2] :]]  # one bad item among good ones
    ),
    st.sampled_from(["a string, not a list", b"bytes", None, 42]),
)
valid_query = st.one_of(nonblank, nonblank, st.sampled_from(SPECIAL), huge)
bad_query = st.one_of(st.sampled_from(["", " ", "\n\t"]), st.none(), st.integers(), st.binary(max_size=4))
valid_top_n = st.one_of(st.none(), st.integers(1, 30))
bad_top_n = st.one_of(st.integers(-2, 0), st.booleans(), st.floats(), st.just("3"))
valid_min_score = st.one_of(st.none(), st.none(), st.floats(-1, 1), st.floats(allow_nan=False))
bad_min_score = st.one_of(st.just(float("nan")), st.just("0.1"), st.just([0.1]))


@st.composite
def calls(draw):
    """(query, documents, top_n, min_score): valid but hostile values, with one argument bad in 1 call of 3."""
    bad = draw(st.sampled_from([None] * 8 + ["query", "documents", "top_n", "min_score"]))
    pick = lambda name, good, wrong: draw(wrong if bad == name else good)
    return (
        pick("query", valid_query, bad_query),
        pick("documents", valid_documents, bad_documents),
        pick("top_n", valid_top_n, bad_top_n),
        pick("min_score", valid_min_score, bad_min_score),
    )


@pytest.fixture(scope="module")
def fuzz_rr():
    # Small windows, so long generated lists also exercise windowing.
    return Reranker(heads=FUZZ_HEADS, dtype="float32", max_doc_tokens=24, max_tokens=512)


def _strict_json(value) -> object:
    """Serialize as JSON the standard allows (no NaN / Infinity) and read it back."""

    def refuse(name):
        raise ValueError(f"invalid JSON constant {name}")

    return json.loads(json.dumps(value, allow_nan=False), parse_constant=refuse)


def fuzz(examples: int):
    """Seeded hypothesis settings: the default suite runs a short run of each property, the ``slow``-marked twin
    the long one (CI runs both)."""
    return settings(max_examples=examples, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))


def check_ranking(indices: list[int], n: int, filtered: bool) -> None:
    assert len(set(indices)) == len(indices), indices
    assert all(isinstance(i, int) and 0 <= i < n for i in indices), indices
    if not filtered:
        assert sorted(indices) == list(range(n)), indices


def _rank_and_score_return_a_permutation_or_a_typed_error(fuzz_rr, call):
    query, documents, top_n, min_score = call
    try:
        results = fuzz_rr.rank(query, documents, top_n=top_n, min_score=min_score)
    except CoreRerankError as exc:
        event(f"typed error: {type(exc).__name__}")
        return
    event("ranked")
    n = len(documents)
    check_ranking(results.indices, n, top_n is not None or min_score is not None)
    if top_n is not None:
        assert len(results) <= top_n
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True) and not any(math.isnan(s) for s in scores)
    assert all(0.0 <= r.normalized_score <= 1.0 for r in results)
    assert all(r.document is documents[r.index] for r in results)
    _strict_json(results.to_dicts())
    by_input = fuzz_rr.score(query, documents)
    assert len(by_input) == n and not any(math.isnan(s) for s in by_input)


@fuzz(100)
@given(call=calls())
def test_rank_and_score_return_a_permutation_or_a_typed_error(fuzz_rr, call):
    _rank_and_score_return_a_permutation_or_a_typed_error(fuzz_rr, call)


@pytest.mark.slow  # the long run: 1000 generated calls
@fuzz(1000)
@given(call=calls())
def test_rank_and_score_return_a_permutation_or_a_typed_error_long(fuzz_rr, call):
    _rank_and_score_return_a_permutation_or_a_typed_error(fuzz_rr, call)


@pytest.fixture(scope="module")
def head_file(tmp_path_factory, fuzz_rr) -> Path:
    shape = fuzz_rr.head_list
    hl = HeadList.from_pairs(FUZZ_HEADS, fuzz_rr.model_id, shape.num_layers, shape.num_heads, shape.num_kv_heads)
    return hl.save(tmp_path_factory.mktemp("heads") / "fuzz.json")


def _the_rank_command_prints_a_permutation_or_an_error(head_file, tmp_path_factory, query, documents, ascii):
    from typer.testing import CliRunner

    from core_rerank.cli import app

    docs = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    try:  # one JSON value per line, as a user's file holds it (raw U+2028 and friends too); bytes have no JSON form
        lines = "".join(json.dumps(d, ensure_ascii=ascii) + "\n" for d in documents)
    except TypeError:
        return
    docs.write_text(lines, encoding="utf-8", errors="surrogatepass")  # a lone surrogate makes it invalid UTF-8
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["rank", "-q", query, "-d", str(docs), "--heads", str(head_file), "--json"]
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if result.exit_code != 0:
        assert result.exit_code == 2 and ("error" in result.output.lower()), result.output
        event("refused with exit status 2")
        return
    event("ranked")
    rows = _strict_json(json.loads(result.stdout))
    check_ranking([r["corpus_id"] for r in rows], len(documents), filtered=False)


@fuzz(25)
@given(
    query=st.one_of(nonblank, nonblank, text, st.sampled_from(SPECIAL)),
    documents=st.one_of(st.lists(valid_document, max_size=12), st.lists(document, max_size=12)),
    ascii=st.booleans(),
)
def test_the_rank_command_prints_a_permutation_or_an_error(head_file, tmp_path_factory, query, documents, ascii):
    _the_rank_command_prints_a_permutation_or_an_error(head_file, tmp_path_factory, query, documents, ascii)


@pytest.mark.slow  # the long run: 150 generated calls
@fuzz(150)
@given(
    query=st.one_of(nonblank, nonblank, text, st.sampled_from(SPECIAL)),
    documents=st.one_of(st.lists(valid_document, max_size=12), st.lists(document, max_size=12)),
    ascii=st.booleans(),
)
def test_the_rank_command_prints_a_permutation_or_an_error_long(head_file, tmp_path_factory, query, documents, ascii):
    _the_rank_command_prints_a_permutation_or_an_error(head_file, tmp_path_factory, query, documents, ascii)


# The framework wrappers: their settings are pydantic fields, so a bad top_n or threshold is refused when the
# wrapper is built (pydantic's ValidationError, a ValueError, as every LangChain / LlamaIndex component does);
# every call on a built wrapper returns a ranking of the given items or raises a CoreRerankError.
WRAPPER_ENGINE = dict(heads=[list(h) for h in FUZZ_HEADS], dtype="float32", max_doc_tokens=24, max_tokens=512)
page = st.one_of(good_text, good_text, st.sampled_from(["", "  ", "same text"]))
wrapper_query = st.one_of(nonblank, nonblank, nonblank, text, st.sampled_from(SPECIAL), st.none(), st.integers())


@st.composite
def wrapper_settings(draw):
    """(top_n, min_relevance_score): valid values, with one of them bad in 1 wrapper of 5."""
    bad = draw(st.sampled_from([None] * 8 + ["top_n", "floor"]))
    top_n = draw(bad_top_n if bad == "top_n" else valid_top_n)
    floor = draw(st.one_of(st.floats(), st.just("x")) if bad == "floor" else st.one_of(st.none(), st.floats(0, 1)))
    return top_n, floor


def _build(cls, top_n, floor):
    from pydantic import ValidationError

    try:
        return cls(**WRAPPER_ENGINE, top_n=top_n, min_relevance_score=floor)
    except ValidationError:
        event("settings refused by pydantic")
        return None


def _langchain_compressor_returns_a_ranking_or_a_typed_error(pages, query, setting):
    top_n, floor = setting
    from langchain_core.documents import Document
    from langchain_corerank import CoReRerank

    compressor = _build(CoReRerank, top_n, floor)
    if compressor is None:
        return
    docs = [Document(page_content=p, metadata={"i": i}) for i, p in enumerate(pages)]
    try:
        out = compressor.compress_documents(docs, query)
    except CoreRerankError as exc:
        event(f"typed error: {type(exc).__name__}")
        return
    event("ranked")
    check_ranking([d.metadata["i"] for d in out], len(docs), filtered=True)
    if compressor.top_n is None and compressor.min_relevance_score is None:
        assert len(out) == len(docs)
    for d in out:
        _strict_json(d.metadata)
        assert 0.0 <= d.metadata["relevance_score"] <= 1.0


@fuzz(50)
@given(pages=st.lists(page, max_size=16), query=wrapper_query, setting=wrapper_settings())
def test_langchain_compressor_returns_a_ranking_or_a_typed_error(pages, query, setting):
    _langchain_compressor_returns_a_ranking_or_a_typed_error(pages, query, setting)


@pytest.mark.slow  # the long run: 300 generated calls
@fuzz(300)
@given(pages=st.lists(page, max_size=16), query=wrapper_query, setting=wrapper_settings())
def test_langchain_compressor_returns_a_ranking_or_a_typed_error_long(pages, query, setting):
    _langchain_compressor_returns_a_ranking_or_a_typed_error(pages, query, setting)


def _llamaindex_postprocessor_returns_a_ranking_or_a_typed_error(pages, query, setting):
    top_n, floor = setting
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.core_rerank import CoReRerank

    post = _build(CoReRerank, top_n, floor)
    if post is None:
        return
    nodes = [NodeWithScore(node=TextNode(text=p, id_=str(i)), score=1.0) for i, p in enumerate(pages)]
    try:
        bundle = QueryBundle(query_str=query) if isinstance(query, str) else None
        out = post.postprocess_nodes(nodes, query_bundle=bundle)
    except CoreRerankError as exc:
        event(f"typed error: {type(exc).__name__}")
        return
    event("ranked")
    check_ranking([int(n.node.node_id) for n in out], len(nodes), filtered=True)
    if post.top_n is None and post.min_relevance_score is None:
        assert len(out) == len(nodes)
    assert all(0.0 <= n.score <= 1.0 for n in out)


@fuzz(50)
@given(pages=st.lists(page, max_size=16), query=wrapper_query, setting=wrapper_settings())
def test_llamaindex_postprocessor_returns_a_ranking_or_a_typed_error(pages, query, setting):
    _llamaindex_postprocessor_returns_a_ranking_or_a_typed_error(pages, query, setting)


@pytest.mark.slow  # the long run: 300 generated calls
@fuzz(300)
@given(pages=st.lists(page, max_size=16), query=wrapper_query, setting=wrapper_settings())
def test_llamaindex_postprocessor_returns_a_ranking_or_a_typed_error_long(pages, query, setting):
    _llamaindex_postprocessor_returns_a_ranking_or_a_typed_error(pages, query, setting)

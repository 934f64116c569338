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
from hypothesis import HealthCheck, given, settings
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
huge = st.sampled_from(["potassium " * 30_000, "x" * 400_000, "<|im_end|>" * 5_000, "\U0001f600" * 50_000])
good_text = st.one_of(text, text, text, huge)
document = st.one_of(
    good_text,
    good_text,
    st.fixed_dictionaries({"text": good_text}, optional={"title": st.one_of(st.none(), text)}),
    st.dictionaries(st.sampled_from(["text", "title", "body", "id"]), st.one_of(text, st.integers(), st.none())),
    st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=8), st.lists(st.integers(), max_size=2)),
)
documents = st.one_of(
    st.lists(document, max_size=24),
    st.lists(st.sampled_from(["same text", "same text", "", "other"]), max_size=12),  # duplicates
    st.sampled_from(["a string, not a list", b"bytes", None, 42]),
)
query = st.one_of(text, text, st.sampled_from(SPECIAL), huge, st.none(), st.integers(), st.binary(max_size=4))
top_n = st.one_of(st.none(), st.none(), st.integers(-2, 30), st.booleans(), st.floats(), st.just("3"))
min_score = st.one_of(st.none(), st.none(), st.floats(), st.integers(-5, 5), st.just("0.1"))


@pytest.fixture(scope="module")
def fuzz_rr():
    # Small windows, so long generated lists also exercise windowing.
    return Reranker(heads=FUZZ_HEADS, dtype="float32", max_doc_tokens=24, max_tokens=512)


def _strict_json(value) -> object:
    """Serialize as JSON the standard allows (no NaN / Infinity) and read it back."""

    def refuse(name):
        raise ValueError(f"invalid JSON constant {name}")

    return json.loads(json.dumps(value, allow_nan=False), parse_constant=refuse)


def check_ranking(indices: list[int], n: int, filtered: bool) -> None:
    assert len(set(indices)) == len(indices), indices
    assert all(isinstance(i, int) and 0 <= i < n for i in indices), indices
    if not filtered:
        assert sorted(indices) == list(range(n)), indices


@settings(max_examples=1000, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(query=query, documents=documents, top_n=top_n, min_score=min_score)
def test_rank_and_score_return_a_permutation_or_a_typed_error(fuzz_rr, query, documents, top_n, min_score):
    try:
        results = fuzz_rr.rank(query, documents, top_n=top_n, min_score=min_score)
    except CoreRerankError:
        return
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


@pytest.fixture(scope="module")
def head_file(tmp_path_factory, fuzz_rr) -> Path:
    shape = fuzz_rr.head_list
    hl = HeadList.from_pairs(FUZZ_HEADS, fuzz_rr.model_id, shape.num_layers, shape.num_heads, shape.num_kv_heads)
    return hl.save(tmp_path_factory.mktemp("heads") / "fuzz.json")


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(query=st.one_of(text, st.sampled_from(SPECIAL)), documents=st.lists(document, max_size=12), ascii=st.booleans())
def test_the_rank_command_prints_a_permutation_or_an_error(head_file, tmp_path_factory, query, documents, ascii):
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
        return
    rows = _strict_json(json.loads(result.stdout))
    check_ranking([r["corpus_id"] for r in rows], len(documents), filtered=False)

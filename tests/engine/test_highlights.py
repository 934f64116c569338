"""Sentence highlights and pruning from the ranking's own forward passes (core_rerank.highlights)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from conftest import SANITY_DOCS, SANITY_QUERIES

from core_rerank import Reranker
from core_rerank.errors import InvalidInputError, InvalidInputTypeError
from core_rerank.highlights import MAX_SENTENCE_CHARS, Highlight, select, sentence_spans

# Eight one-topic paragraphs as one document: each query's answer sits in one of them.
COMBINED = " ".join(SANITY_DOCS)
SOURCES = []
_at = 0
for _d in SANITY_DOCS:
    SOURCES.append((_at, _at + len(_d)))
    _at += len(_d) + 1
# A document's sentence scores are its token contributions summed in another grouping than the document's own sum:
# equal to float64 rounding.
SUM_TOL = 1e-9


def source_of(start: int) -> int:
    return next(i for i, (a, b) in enumerate(SOURCES) if a <= start < b)


@pytest.fixture(scope="module", params=["full", "block"])
def mode_rr(request, default_rr):
    return default_rr.with_options(attention=request.param, kv_cache_mb=0 if request.param == "full" else 64)


def check_partition(result) -> None:
    """Highlights are the scored text's sentences, in order, each its own text, adding up to the score."""
    hl = result.highlights
    assert hl, "a non-empty document has sentences"
    assert all(result.text[h.start : h.end] == h.text and h.text == h.text.strip() for h in hl)
    assert all(a.end <= b.start for a, b in itertools.pairwise(hl))
    assert sum(h.score for h in hl) == pytest.approx(result.attention_score, rel=SUM_TOL, abs=1e-12)
    assert sum(h.tokens for h in hl) == result.tokens  # every scored token went to one sentence


def test_the_best_sentence_of_a_long_document_is_the_answer(mode_rr):
    """One document holding eight topics: for each query the highest-scoring sentence is the answer's, in both
    attention modes, and the highlights partition the document's score."""
    for query, gold in SANITY_QUERIES:
        results = mode_rr.rank(query, [COMBINED, SANITY_DOCS[1], SANITY_DOCS[4]], highlights=True)
        r = results.by_index(0)
        check_partition(r)
        assert source_of(r.best_sentence.start) == gold, (query, r.best_sentence.text)
        for other in results:
            check_partition(other)


def test_highlights_come_from_the_ranking_pass_and_leave_the_ranking_alone(default_rr, monkeypatch):
    """highlights=True runs the same forward passes (no second one) and gives the same scores and order."""
    calls = []
    real = Reranker.signals

    def counting(self, prompts):
        calls.append(len(prompts))
        return real(self, prompts)

    monkeypatch.setattr(Reranker, "signals", counting)
    query = SANITY_QUERIES[4][0]
    plain = default_rr.rank(query, SANITY_DOCS)
    n_plain = len(calls)
    lit = default_rr.rank(query, SANITY_DOCS, highlights=True)
    assert len(calls) - n_plain == n_plain
    assert lit.indices == plain.indices
    assert [r.score for r in lit] == pytest.approx([r.score for r in plain], rel=1e-9)
    assert all(r.highlights is None for r in plain) and "highlights" not in plain[0].to_dict()
    row = json.loads(json.dumps(lit[0].to_dict()))
    assert row["highlights"][0].keys() == {"start", "end", "text", "score", "tokens", "truncated"}


def test_sentences_cut_by_max_doc_tokens_are_marked_and_nothing_past_the_cut_is_shown(default_rr):
    rr = default_rr.with_options(max_doc_tokens=30)
    r = rr.rank(SANITY_QUERIES[0][0], [COMBINED], highlights=True)[0]
    assert r.truncated
    check_partition(r)
    scored = len(rr.prepare([COMBINED])[0].scored_text)
    assert all(h.start < scored for h in r.highlights)
    assert r.highlights[-1].truncated and r.highlights[-1].end > scored
    assert not any(h.truncated for h in r.highlights[:-1])


def test_windows_and_shared_lists_keep_highlights_comparable(default_rr):
    """A list dealt into windows: highlights still add up to each (rescaled) score; rank_batch over a shared list
    gives each query the highlights rank gives it."""
    rr = default_rr.with_options(max_tokens=260, max_doc_tokens=80)
    docs = [*SANITY_DOCS, COMBINED[:300]]
    res = rr.rank(SANITY_QUERIES[2][0], docs, highlights=True)
    assert res.num_windows > 1
    for r in res:
        check_partition(r)
    queries = [q for q, _ in SANITY_QUERIES[:3]]
    batch = default_rr.rank_batch(queries, SANITY_DOCS, highlights=True)
    for q, got in zip(queries, batch):
        alone = default_rr.rank(q, SANITY_DOCS, highlights=True)
        for r in got:
            want = alone.by_index(r.index).highlights
            assert [h.text for h in r.highlights] == [h.text for h in want]
            assert [h.score for h in r.highlights] == pytest.approx([h.score for h in want], rel=1e-6, abs=1e-9)


def test_an_empty_document_has_no_highlights(default_rr):
    res = default_rr.rank("copy files", ["   ", SANITY_DOCS[2]], highlights=True)
    assert res.by_index(0).highlights == () and res.by_index(0).best_sentence is None
    check_partition(res.by_index(1))


def test_compress_keeps_the_best_sentences_within_the_budget_in_their_order(default_rr):
    query = SANITY_QUERIES[4][0]
    out = default_rr.compress(query, [COMBINED, SANITY_DOCS[0]], keep=0.25, scope="document", rank_by="score")
    r = out.by_index(0)
    c = r.compression
    assert c.kept_tokens <= math.floor(0.25 * r.tokens) or len(c.kept) == 1
    assert c.ratio == pytest.approx(c.kept_tokens / r.tokens)
    kept = [r.highlights[k] for k in c.kept]
    assert r.best_sentence in kept and source_of(r.best_sentence.start) == 6
    assert list(c.kept) == sorted(c.kept)
    pieces = [p.strip() for p in c.text.split("[...]") if p.strip()]
    assert " ".join(pieces) == " ".join(h.text for h in kept) or all(h.text in c.text for h in kept)
    assert "[...]" in c.text  # sentences were dropped
    dropped = [h for k, h in enumerate(r.highlights) if k not in c.kept]
    assert all(h.score <= r.best_sentence.score for h in dropped)

    tokens = default_rr.compress(query, [COMBINED], keep=20, rank_by="score").by_index(0).compression
    assert tokens.kept_tokens <= 20 or len(tokens.kept) == 1
    everything = default_rr.compress(query, [COMBINED], keep=1.0).by_index(0).compression
    assert everything.text == COMBINED and everything.ratio == 1.0

    best_only = default_rr.compress(query, [COMBINED], keep=None, min_sentence_score=1e9, rank_by="score").by_index(0)
    assert best_only.compression.kept == (r.highlights.index(r.best_sentence),)


def test_the_default_rule_is_a_list_budget_by_density(default_rr):
    """The rule chosen on dev sentence labels (docs/highlights.md): one budget over the returned documents, sentences
    by score per token."""
    query = SANITY_QUERIES[4][0]
    docs = [COMBINED, SANITY_DOCS[6], SANITY_DOCS[1]]
    default = default_rr.compress(query, docs, keep=0.3)
    explicit = default_rr.compress(query, docs, keep=0.3, scope="list", rank_by="density")
    assert [r.compression for r in default] == [r.compression for r in explicit]
    by_score = default_rr.compress(query, docs, keep=0.3, scope="document", rank_by="score")
    assert [r.compression.kept for r in default] != [r.compression.kept for r in by_score]


def test_a_list_budget_lets_sentences_of_all_documents_compete(default_rr):
    query = SANITY_QUERIES[4][0]
    docs = [COMBINED, SANITY_DOCS[6], SANITY_DOCS[1]]
    out = default_rr.compress(query, docs, keep=0.3, scope="list")
    total = sum(r.tokens for r in out)
    assert sum(r.compression.kept_tokens for r in out) <= math.floor(0.3 * total) + max(
        r.best_sentence.tokens for r in out
    )
    assert all(r.compression.kept for r in out)  # each keeps at least its best sentence


def test_a_truncated_document_counts_its_whole_text_in_the_ratio(default_rr):
    rr = default_rr.with_options(max_doc_tokens=30)
    r = rr.compress(SANITY_QUERIES[0][0], [COMBINED], keep=1.0)[0]
    assert r.compression.tokens > r.tokens and r.compression.ratio < 1.0
    assert r.compression.text.endswith("[...]")  # the unread tail was dropped


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"keep": 0.0}, InvalidInputError),
        ({"keep": 1.5}, InvalidInputError),
        ({"keep": 0}, InvalidInputError),
        ({"keep": True}, InvalidInputTypeError),
        ({"keep": "half"}, InvalidInputTypeError),
        ({"scope": "corpus"}, InvalidInputError),
        ({"rank_by": "length"}, InvalidInputError),
        ({"keep": None}, InvalidInputError),
        ({"min_sentence_score": float("nan")}, InvalidInputError),
        ({"marker": None}, InvalidInputTypeError),
    ],
)
def test_compress_refuses_a_bad_budget_before_any_model_work(default_rr, options, error, monkeypatch):
    monkeypatch.setattr(Reranker, "signals", lambda *a: pytest.fail("ran the model"))
    with pytest.raises(error):
        default_rr.compress("q", ["a. b."], **options)


def test_sentence_spans_fall_back_for_text_the_segmenter_cannot_split():
    text = "Dr. Smith went to Washington D.C. on Jan. 5. He arrived at 3 p.m.! Then what?\n\nNext paragraph."
    spans = [text[a:b] for a, b in sentence_spans(text)]
    assert spans == [
        "Dr. Smith went to Washington D.C. on Jan. 5.",
        "He arrived at 3 p.m.!",
        "Then what?",
        "Next paragraph.",
    ]
    code = "\n".join(f"x_{i} = compute(x_{i - 1}) + offset_{i}" for i in range(200))  # no sentence boundary
    pieces = sentence_spans(code)
    assert len(pieces) > 1 and all(b - a <= MAX_SENTENCE_CHARS for a, b in pieces)
    words = " ".join(["word"] * 500)  # no boundary and no line break
    assert all(b - a <= MAX_SENTENCE_CHARS for a, b in sentence_spans(words))
    titled = "Bananas\nBananas are a fruit. Steps:\n- peel it\n- eat it"  # a title line, a list
    assert [titled[a:b] for a, b in sentence_spans(titled)] == [
        "Bananas",
        "Bananas are a fruit.",
        "Steps:",
        "- peel it",
        "- eat it",
    ]
    wrapped = "A long line of prose, hard-wrapped by a PDF extractor after more than sixty\ncharacters, goes on."
    assert len(sentence_spans(wrapped)) == 1
    assert sentence_spans("   \n ") == [] and sentence_spans("") == []
    accents = "Café au lait, très bon. Naïve résumé! 日本語の文です。"
    assert [accents[a:b] for a, b in sentence_spans(accents)] == [
        "Café au lait, très bon.",
        "Naïve résumé!",
        "日本語の文です。",
    ]


def test_select_never_exceeds_a_budget_past_each_documents_best_sentence():
    def hl(score, tokens):
        return Highlight(0, 1, "x", score, tokens)

    docs = [[hl(3.0, 5), hl(2.0, 5), hl(1.0, 1)], [hl(0.5, 4), hl(-1.0, 1)]]
    assert select(docs, [6, 4], None) == [[True, False, True], [True, False]]
    assert select(docs, 11, None) == [[True, False, True], [True, True]]  # 5 + 4 first, then 1 + 1 of what is left
    assert select(docs, None, 0.0) == [[True, True, True], [True, False]]
    assert select(docs, [100, 100], 1.5) == [[True, True, False], [True, False]]
    # By density (score per token) a short sentence can go first: 1.0 / 1 token beats 2.0 / 5 tokens.
    assert select(docs, [6, 4], None, "density") == [[True, False, True], [True, False]]
    assert select([[hl(3.0, 6), hl(2.0, 1)]], [1], None, "density") == [[False, True]]
    assert select([[hl(3.0, 6), hl(2.0, 1)]], [1], None, "score") == [[True, False]]

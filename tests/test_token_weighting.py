"""Query-token weighting (issue 10, section 2): the engine keeps each query token's attention row on request, those
rows are the model's own attention, and the weights read them as documented (core_rerank/research/token_weighting)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SANITY_DOCS, SIGNAL_ATOL, eager_reference_rows

from core_rerank.research.token_weighting import document_token_idf, query_token_weights, weighted_query_signal
from core_rerank.scoring import document_scores

QUERY = "which fruit is high in potassium?"


def test_query_rows_are_the_models_attention_rows(fp32_shallow):
    # float32, so an independent eager float32 load is the reference (the default runs bfloat16 on CPUs with it)
    w = fp32_shallow.attention_signals(QUERY, SANITY_DOCS, query_rows=True)
    s = w.signals
    q0, q1 = w.query_rows
    key_end = s.query.shape[1]
    assert s.query_rows.shape == (len(s.heads), q1 - q0, key_end)
    # The query span starts inside the prefix shared with the N/A prompt, so its rows come from two passes
    # (the shared prefix and the query's suffix): the join is exercised.
    assert q0 < s.shared_prefix_tokens < q1
    ref = eager_reference_rows(fp32_shallow, w.ids_query, w.query_rows, mean=False)
    for i, (layer, head) in enumerate(s.heads):
        torch.testing.assert_close(s.query_rows[i], ref[layer, head, :, :key_end], atol=1e-4, rtol=0)
    torch.testing.assert_close(s.query_rows.mean(1), s.query, atol=SIGNAL_ATOL, rtol=0)
    # Each row is a softmax over the keys before it: it sums to at most 1 over the documents' keys.
    assert float(s.query_rows.sum(-1).max()) <= 1 + 1e-5


def test_rows_are_kept_only_when_asked(default_rr):
    plain = default_rr.attention_signals(QUERY, SANITY_DOCS)
    rows = default_rr.attention_signals(QUERY, SANITY_DOCS, query_rows=True)
    assert plain.signals.query_rows is None
    torch.testing.assert_close(plain.signals.query, rows.signals.query, atol=SIGNAL_ATOL, rtol=0)
    # The engine's signal is the plain mean of the rows (bfloat16 model, float32 softmax rows).
    torch.testing.assert_close(rows.signals.query_rows.mean(1), rows.signals.query, atol=SIGNAL_ATOL, rtol=0)


SPANS = [(0, 2), (2, 4), (4, 6)]


def _rows(per_token_doc_mass: list[list[float]]) -> torch.Tensor:
    """(1 head, tokens, 6 keys): each document's mass split evenly over its two keys."""
    return torch.tensor([[[m / 2 for m in masses for _ in range(2)] for masses in per_token_doc_mass]])


def test_weights_discount_tokens_that_attend_alike_to_every_document():
    rows = _rows([[0.3, 0.3, 0.3], [0.9, 0.0, 0.0], [0.5, 0.4, 0.0]])
    ent = query_token_weights(rows, SPANS, "entropy")[0]
    assert ent[0] == pytest.approx(0.0, abs=1e-9)  # even spread: no better than the N/A query
    assert ent[1] == pytest.approx(1.0, abs=1e-6)  # one document
    assert 0 < ent[2] < 1
    idf = query_token_weights(rows, SPANS, "idf")[0]
    assert idf.tolist() == pytest.approx([0.0, math.log(3), math.log(3 / 2)])
    assert query_token_weights(rows[:, :, :2], SPANS[:1]).tolist() == [[1.0, 1.0, 1.0]]  # one document
    with pytest.raises(ValueError, match="entropy"):
        query_token_weights(rows, SPANS, "bm25")


def test_weighted_signal_reads_the_weighted_rows_and_falls_back_to_the_mean():
    rows = _rows([[0.3, 0.3, 0.3], [0.9, 0.0, 0.0]])
    one_hot = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(weighted_query_signal(rows, one_hot), rows[:, 1])
    torch.testing.assert_close(weighted_query_signal(rows, torch.zeros(1, 2)), rows.mean(1))
    # Weighting changes the ranking it feeds: the focused token's document wins outright.
    null = torch.zeros(6)
    scores = document_scores(weighted_query_signal(rows, one_hot)[0], null, SPANS)
    assert scores.index(max(scores)) == 0 and scores[1] == scores[2] == 0


def test_document_token_idf_counts_candidates_not_occurrences():
    ids = [7, 7, 7, 8, 9, 7, 100]  # 7 in all three documents; 8 and 9 in one each; position 6 outside
    w = document_token_idf(ids, [(0, 2), (2, 4), (4, 6)], 7)
    assert w.tolist() == pytest.approx([math.log(4 / 3)] * 3 + [math.log(4), math.log(4), math.log(4 / 3), 1.0])

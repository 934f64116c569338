"""Token weighting of the attention signal, tried for issue 10 (scripts/token_weight_study.py, dev chooses).

The engine's query signal is the plain mean of the query span's rows (docs/method.md, section 2): every query
token counts alike, the template words ("Please find information ...", "Query:") as much as the rare term that
names what is asked. Two ways to weight it, after ReAttn (arXiv 2602.19969), which re-weights attention by how
distinctive it is across the candidate documents:

- query tokens (needs each row: ``Reranker.attention_signals(query_rows=True)``): a query token whose attention
  falls alike on every document tells them apart no better than the N/A query does, so it is discounted.
  With m(t, d) the token's attention mass on document d and p(t, d) = m(t, d) / sum_d m(t, d):

      entropy:  w(t) = 1 - H(p(t, .)) / log n          (0 for an even spread, 1 for one document)
      idf:      w(t) = log(n / df(t)),  df(t) = #{d : p(t, d) >= 1 / n}

  and the query signal becomes sum_t w(t) a(t, j) / sum_t w(t) (the mean where every weight is 0), per head.
- document tokens (ReAttn's cross-document IDF): a document token whose id occurs in many of the candidates
  (a stop word, the query's own term repeated everywhere) carries less evidence of this document's relevance:
  the calibrated signal c(j) is scaled by idf(j) = log((n + 1) / df(id_j)), df = candidates holding that id.

Nothing is fitted (no labels are read); the N/A pass, the 2-sigma mask and the sum over a
document (:func:`core_rerank.scoring.document_scores`) are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

__all__ = ["document_token_idf", "query_token_weights", "weighted_query_signal"]

QueryWeighting = Literal["entropy", "idf"]


def _document_shares(rows: torch.Tensor, token_spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(..., n): each row's attention mass on each document, as a share of its mass on all documents."""
    masses = torch.stack([rows[..., a:b].sum(-1) for a, b in token_spans], dim=-1).double()
    return masses / masses.sum(-1, keepdim=True).clamp_min(1e-30)


def query_token_weights(
    rows: torch.Tensor, token_spans: Sequence[tuple[int, int]], kind: QueryWeighting = "entropy"
) -> torch.Tensor:
    """(|H|, |Q|) weight of each query token for each head, from ``rows`` (|H|, |Q|, keys): how unevenly the
    token's attention falls on the documents at ``token_spans``. One document: every weight 1."""
    n = len(token_spans)
    if n < 2:
        return torch.ones(rows.shape[:2], dtype=torch.float64)
    p = _document_shares(rows, token_spans)
    if kind == "entropy":
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
        return (1.0 - entropy / math.log(n)).clamp_min(0.0)
    if kind == "idf":
        df = (p * n >= 1.0 - 1e-9).sum(-1).clamp_min(1)
        return torch.log(n / df.double())
    raise ValueError(f"kind must be 'entropy' or 'idf', got {kind!r}")


def weighted_query_signal(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(|H|, keys): the weighted mean of each head's query rows; a head whose weights are all 0 keeps the
    plain mean (the engine's signal)."""
    w = weights.to(rows.dtype)
    total = w.sum(-1, keepdim=True)
    plain = rows.mean(1)
    weighted = (w.unsqueeze(-1) * rows).sum(1) / total.clamp_min(1e-30)
    return torch.where(total > 0, weighted, plain)


def document_token_idf(ids: Sequence[int], token_spans: Sequence[tuple[int, int]], length: int) -> torch.Tensor:
    """(length,) weight per key position: ``log((n + 1) / df)`` inside each document, df = documents whose
    tokens include that position's token id; 1 outside documents."""
    n = len(token_spans)
    df: dict[int, int] = {}
    for a, b in token_spans:
        for v in set(ids[a:b]):
            df[v] = df.get(v, 0) + 1
    out = torch.ones(length, dtype=torch.float64)
    for a, b in token_spans:
        out[a:b] = torch.tensor([math.log((n + 1) / df[v]) for v in ids[a:b]], dtype=torch.float64)
    return out

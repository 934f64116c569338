"""The evaluation math, written once: nDCG@10 (pytrec_eval), mean and standard error, paired differences, RRF.

Every number the docs report goes through these functions: ``core-rerank evaluate``, the quality report and the
studies. z-scores and score fusion are not here: they are the engine's (:mod:`core_rerank.scoring`), so a study
measures exactly what ``Reranker.rank(..., first_stage_scores=...)`` does.

pytrec_eval is the ``eval`` extra; it is imported by the functions that need it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "RRF_K",
    "MeanSE",
    "Paired",
    "mean_se",
    "ndcg_at_10",
    "paired",
    "per_query_metrics",
    "per_query_ndcg",
    "query_ndcg",
    "ranking_to_run",
    "rrf",
]

RRF_K = 60
"""The k of reciprocal-rank fusion, ``1 / (k + rank)`` (Cormack et al. 2009)."""


@dataclass(frozen=True)
class MeanSE:
    """A mean and its standard error (``stdev / sqrt(n)``; ``None`` for fewer than two values)."""

    n: int
    mean: float
    se: float | None

    def round(self, digits: int = 4) -> list:
        """``[mean, se, n]`` rounded, as the result JSON files hold them."""
        return [round(self.mean, digits), None if self.se is None else round(self.se, digits), self.n]


def mean_se(values: Sequence[float]) -> MeanSE:
    """Mean and standard error of ``values`` (NaN mean for none)."""
    vals = list(values)
    mean = statistics.fmean(vals) if vals else math.nan
    se = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else None
    return MeanSE(len(vals), mean, se)


@dataclass(frozen=True)
class Paired:
    """Per-query paired difference ``a - b``: mean, standard error, and counts of queries a wins / loses / ties."""

    n: int
    mean: float
    se: float | None
    better: int
    worse: int
    tied: int


def paired(a: Mapping[str, float], b: Mapping[str, float]) -> Paired:
    """``a - b`` over the queries both have (e.g. nDCG@10 per query)."""
    diffs = [a[q] - b[q] for q in a if q in b]
    m = mean_se(diffs)
    return Paired(
        len(diffs),
        m.mean if diffs else 0.0,
        m.se,
        sum(d > 1e-12 for d in diffs),
        sum(d < -1e-12 for d in diffs),
        sum(abs(d) <= 1e-12 for d in diffs),
    )


def _plain(qrels: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    return {q: {d: int(g) for d, g in rel.items()} for q, rel in qrels.items()}


def per_query_metrics(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], depth: int
) -> dict[str, dict[str, float]]:
    """nDCG@10, MRR@10 and recall@depth per query of ``qrels`` (pytrec_eval ``ndcg_cut.10``, ``recip_rank`` on
    the top 10, ``recall.<depth>``: of the relevant documents, the share among the ``depth`` re-ranked
    candidates); queries missing from ``run`` get 0."""
    import pytrec_eval

    qrels = _plain(qrels)
    runs = {q: dict(docs) for q, docs in run.items() if q in qrels and docs}
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in runs.items()}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", f"recall.{depth}"}).evaluate(runs)
    head = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    return {
        "nDCG@10": {q: float(full[q]["ndcg_cut_10"]) if q in full else 0.0 for q in qrels},
        "MRR@10": {q: float(head[q]["recip_rank"]) if q in head else 0.0 for q in qrels},
        f"recall@{depth}": {q: float(full[q][f"recall_{depth}"]) if q in full else 0.0 for q in qrels},
    }


def per_query_ndcg(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """nDCG@10 per query of ``qrels`` (pytrec_eval ``ndcg_cut.10``); queries missing from ``run`` get 0."""
    import pytrec_eval

    qrels = _plain(qrels)
    got = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(
        {q: dict(docs) for q, docs in run.items() if q in qrels and docs}
    )
    return {q: float(got[q]["ndcg_cut_10"]) if q in got else 0.0 for q in qrels}


def ndcg_at_10(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> float:
    """Mean nDCG@10 over the queries of ``qrels`` (BEIR's number)."""
    per = per_query_ndcg(qrels, run)
    return statistics.fmean(per.values()) if per else 0.0


def ranking_to_run(doc_ids: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """Strictly decreasing run scores from ``scores`` (ties broken by input position, i.e. first stage; ``-inf``
    last), so every evaluation library reads the same ranking."""
    order = sorted(range(len(doc_ids)), key=lambda i: (-scores[i] if math.isfinite(scores[i]) else math.inf, i))
    n = len(order)
    return {doc_ids[i]: float(n - r) for r, i in enumerate(order)}


def rrf(*score_lists: Sequence[float], k: int = RRF_K) -> list[float]:
    """Reciprocal-rank fusion of several score lists over the same items (ties by input position)."""
    n = len(score_lists[0])
    fused = [0.0] * n
    for scores in score_lists:
        order = sorted(range(n), key=lambda i: (-scores[i] if math.isfinite(scores[i]) else math.inf, i))
        for r, i in enumerate(order, start=1):
            fused[i] += 1.0 / (k + r)
    return fused


def query_ndcg(doc_ids: Sequence[str], scores: Sequence[float], qrels: Mapping[str, int]) -> float:
    """nDCG@10 of one query's ranking by ``scores`` (ties by position, ``-inf`` last), by pytrec_eval: what
    :func:`per_query_ndcg` gives that query."""
    return per_query_ndcg({"q": qrels}, {"q": ranking_to_run(doc_ids, scores)})["q"]

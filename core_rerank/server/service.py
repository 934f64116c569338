"""The one reranker a server process serves: loading it, its state, running a job on it, describing it.

Blocking work (loading, scoring) runs on threads; this module knows nothing of HTTP beyond the :class:`ApiError`
it raises, so another front (Ray Serve's ingress, a batch job) can drive the same service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import CoreRerankError
from ..kv_cache import KVCacheStats
from ..results import RankedResults
from .errors import ApiError, from_engine_error
from .settings import ServerSettings
from .wire import RerankJob, Scored

if TYPE_CHECKING:
    from ..reranker import Reranker

__all__ = ["RerankService"]

logger = logging.getLogger("core_rerank.server")

UNCALIBRATED_NOTE = (
    "this head list has no fitted relevance map: scores in [0, 1] are each document's normalized_score (a softmax "
    "over the request's candidates, summing to 1), which compares documents within one request only, not across "
    "requests. Fit a map with `core-rerank calibrate` and serve that head list (--heads) for a per-document relevance."
)


class RerankService:
    """Holds the reranker (``state``: ``"loading"``, ``"ready"``, ``"failed"``, or ``"draining"`` once the process
    is shutting down) and runs jobs on it.

    ``engine``: a ready :class:`~core_rerank.Reranker` (served as it is: its settings are the server's), a callable
    that builds one (run by :meth:`load`), or ``None`` to build one from ``settings.engine``.
    """

    def __init__(self, settings: ServerSettings, engine: Reranker | Callable[[], Reranker] | None = None) -> None:
        self.settings = settings
        self.error: str | None = None
        self.draining = False  # set when the process is told to stop: new requests get 503, running ones finish
        self._reranker: Reranker | None = None
        self._loader: Callable[[], Reranker] | None = None
        if engine is None:
            self._loader = self._from_settings
        elif callable(engine):
            self._loader = engine
        else:
            self._set(engine)

    # ------------------------------------------------------------------ loading
    @property
    def state(self) -> str:
        if self.draining:
            return "draining"
        if self._reranker is not None:
            return "ready"
        return "failed" if self.error is not None else "loading"

    @property
    def needs_loading(self) -> bool:
        return self._loader is not None and self._reranker is None and self.error is None

    def _from_settings(self) -> Reranker:
        from ..reranker import Reranker

        return Reranker.from_settings(self.settings.engine)

    def load(self) -> None:
        """Build the reranker (blocking; run it on a thread). A failure is kept in ``error``, logged, and served
        as 503 ``LoadFailed``; it is not raised."""
        try:
            self._set(self._loader())
        except Exception as exc:  # any failure to load: report it, never crash the event loop
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("core-rerank could not load the model: %s", self.error)

    def _set(self, reranker: Reranker) -> None:
        self._reranker = reranker
        if not reranker.calibrated:
            logger.warning("core-rerank serve: %s", UNCALIBRATED_NOTE)
        logger.info("core-rerank serve: ready, %r", reranker)

    def require_ready(self) -> Reranker:
        """The reranker, or a 503 (``Loading`` with ``Retry-After``, ``LoadFailed``, or ``ShuttingDown``)."""
        if self.draining:
            raise ApiError(
                503, "ShuttingDown", "the server is shutting down; retry on another replica", {"Retry-After": "1"}
            )
        if self._reranker is not None:
            return self._reranker
        if self.error is not None:
            raise ApiError(503, "LoadFailed", f"the model failed to load: {self.error}")
        raise ApiError(503, "Loading", "the model is loading; retry shortly", {"Retry-After": "5"})

    # ------------------------------------------------------------------ scoring
    @property
    def score_kind(self) -> str:
        """What a [0, 1] score is: ``"relevance"`` (calibrated, per document) or ``"normalized_score"``."""
        rr = self._reranker
        return "relevance" if rr is None or rr.calibrated else "normalized_score"

    @property
    def max_doc_tokens(self) -> int:
        rr = self._reranker
        return rr.max_doc_tokens if rr is not None else self.settings.engine.max_doc_tokens

    def budget(self, job: RerankJob) -> int:
        """The per-document token budget a job is scored with (a request may lower the server's, not raise it)."""
        return min(job.max_doc_tokens or self.max_doc_tokens, self.max_doc_tokens)

    def _engine(self, budget: int) -> Reranker:
        # A lower budget than the server's: the same loaded model, this request's setting.
        return self.require_ready().with_options(max_doc_tokens=budget)

    def run(self, job: RerankJob) -> Scored:
        """Score a job (blocking: a worker thread runs it): every document's result, best first."""
        budget = self.budget(job)
        rr = self._engine(budget)
        try:
            results = rr.rank(job.query, job.texts, show_progress_bar=False, highlights=job.sentences)
        except CoreRerankError as exc:
            raise from_engine_error(exc) from None
        return self._scored(job, results, budget, rr)

    def batch_key(self, job: RerankJob) -> tuple:
        """Jobs with equal keys can be scored together by :meth:`run_batch`: the same documents, budget and
        ``truncate``."""
        return (job.documents_key, self.budget(job), job.truncate, job.sentences)

    def run_batch(self, jobs: list[RerankJob]) -> list[Scored | ApiError]:
        """Score jobs of one :meth:`batch_key` together (blocking): one ``rank_batch`` call over their shared
        documents runs the documents' part of the prompt once. Each job gets what :meth:`run` gives it (its
        results, or its own :class:`ApiError`): if the engine refuses the batch, every job is run alone, so one
        job's error never becomes another's."""
        budget = self.budget(jobs[0])
        rr = self._engine(budget)
        try:
            batched = rr.rank_batch(
                [job.query for job in jobs], jobs[0].texts, show_progress_bar=False, highlights=jobs[0].sentences
            )
        except CoreRerankError:
            return [self._alone(job) for job in jobs]
        out: list[Scored | ApiError] = []
        for job, results in zip(jobs, batched):
            try:
                out.append(self._scored(job, results, budget, rr))
            except ApiError as exc:
                out.append(exc)
        return out

    def _alone(self, job: RerankJob) -> Scored | ApiError:
        try:
            return self.run(job)
        except ApiError as exc:
            return exc

    def _scored(self, job: RerankJob, results: RankedResults, budget: int, rr: Reranker) -> Scored:
        if not job.truncate:
            cut = sorted(r.index for r in results if r.truncated)
            if cut:
                raise ApiError(
                    422,
                    "Validation",
                    f"documents {cut[:10]} are longer than {budget} tokens and truncate is false: shorten them, or "
                    "send truncate: true (or null) to score their first tokens",
                )
        if job.prune is not None:
            results = _pruned(rr, results, job)
        return Scored(results, sum(r.tokens for r in results), self.score_kind, rr.model_id)

    # ------------------------------------------------------------------ description
    def kv_cache_stats(self) -> KVCacheStats | None:
        """The served model's document KV cache counters (None until it is loaded)."""
        rr = self._reranker
        return None if rr is None else rr.loaded_model.kv_cache.stats()

    def info(self) -> dict[str, Any]:
        """What ``GET /info`` shows: the model, heads, layers, dtype, scores and every limit."""
        from .. import __version__

        out: dict[str, Any] = {"version": __version__, "status": self.state, "limits": self.settings.limits()}
        out["limits"]["max_doc_tokens"] = self.max_doc_tokens
        rr = self._reranker
        if rr is None:
            out["model"] = self.settings.engine.model
            if self.error is not None:
                out["error"] = self.error
            return out
        hl = rr.head_list
        fit = hl.relevance_map_for(rr.settings.attention)
        out.update(
            model=rr.model_id,
            heads={
                "method": hl.method,
                "count": len(hl.heads),
                "list": hl.describe(),
                "heads": [list(h) for h in hl.heads],
            },
            layers={"loaded": rr.loaded_model.layers_loaded, "total": rr.loaded_model.shape.num_layers},
            dtype=str(rr.dtype).removeprefix("torch."),
            quantization=rr.quantization,
            device=str(rr.device),
            attention=rr.settings.attention,
            order=rr.order if rr.settings.attention == "full" else None,
            kv_cache={
                "enabled": rr.settings.attention == "block" and rr.settings.kv_cache_mb > 0,
                **rr.loaded_model.kv_cache.stats().to_dict(),
            },
            scores={
                "relevance_score": self.score_kind,
                "calibrated": fit is not None,
                "relevance_map": None
                if fit is None
                else {k: v for k, v in fit.to_dict().items() if k not in ("settings", "note")},
                "raw_scores": "the engine's raw attention score: unbounded, comparable only within one request",
                **({"note": UNCALIBRATED_NOTE} if fit is None else {}),
            },
        )
        out["limits"]["max_tokens"] = rr.max_tokens
        out["limits"]["max_documents"] = rr.max_documents
        return out


def _pruned(rr: Reranker, results: RankedResults, job: RerankJob) -> RankedResults:
    """``results`` with the ones the request returns (its ``top_n``) pruned under the job's budget."""
    head, rest = list(results)[: job.top_n], list(results)[job.top_n :] if job.top_n else []
    p = job.prune
    pruned = rr.prune(
        head, keep=p.keep, scope=p.scope, min_sentence_score=p.min_score, marker=p.marker, rank_by=p.rank_by
    )
    return RankedResults(results.query, pruned + rest, results.num_windows, results.head_list)

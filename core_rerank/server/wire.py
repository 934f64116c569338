"""The wire formats re-ranking clients already speak, parsed into one :class:`RerankJob` and rendered back.

- text-embeddings-inference (TEI), ``POST /rerank`` with ``texts``: a bare array ``[{index, score, text?}]``;
- Infinity, ``POST /rerank`` with ``documents``: ``{object: "rerank", results, model, usage, id, created}``;
- Jina / Cohere v1 / vLLM, ``POST /v1/rerank``: ``{id, model, usage, meta, results: [{index, relevance_score,
  document?}]}``;
- Cohere v2, ``POST /v2/rerank``: ``{id, results: [{index, relevance_score}], meta}``.

Field names are the formats' own. Unknown fields are ignored, and JSON ``null`` is accepted for every optional
field and means its default. Every score in [0, 1] is the result's :attr:`~core_rerank.RankResult.relevance_score`
(the calibrated per-document ``relevance``), the same number in every format; ``raw_scores: true`` (accepted by
all four) gives the engine's raw attention score instead (``null`` for an empty document, whose raw score is -inf).

Two extension fields, accepted by all four (absent or ``null``: the response is the format's own, unchanged):
``return_highlights: true`` adds ``highlights`` to every result (its sentences with ``start``, ``end``, ``text``,
``score``, ``tokens``, ``truncated``, from the ranking's own pass); ``prune: {keep, scope, min_sentence_score}``
adds ``compression`` (``text``, ``kept``, ``kept_tokens``, ``ratio``) to every returned result, its best sentences
under the budget (``Reranker.compress``; a ``list`` scope's budget is shared by the results the request returns).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from ..errors import InvalidInputError
from ..highlights import Budget, check_budget
from ..inputs import check_query, document_text
from ..results import RankedResults, RankResult
from .errors import ApiError, validation

__all__ = [
    "CohereV1Request",
    "CohereV2Request",
    "InfinityRequest",
    "PruneSpec",
    "RerankJob",
    "Scored",
    "TeiRequest",
    "parse",
    "score_of",
]

PositiveInt = Annotated[int, Field(strict=True, ge=1)]


@dataclass(frozen=True)
class RerankJob:
    """One request as the engine runs it, whatever its wire format.

    ``texts`` are what is scored (one string per document), ``originals`` the documents as sent (returned with
    ``return_documents``). ``max_doc_tokens`` lowers the server's per-document budget for this request;
    ``truncate=False`` refuses a document longer than the budget instead of cutting it."""

    query: str
    texts: list[str]
    originals: list[Any]
    max_doc_tokens: int | None = None
    truncate: bool = True
    highlights: bool = False
    prune: Budget | None = None
    top_n: int | None = None

    @property
    def sentences(self) -> bool:
        """Whether the job's results need their sentences (highlights, or pruning)."""
        return self.highlights or self.prune is not None

    @property
    def documents_key(self) -> tuple[str, ...]:
        """Requests with equal keys score the same documents (what a batcher would group by)."""
        return tuple(self.texts)


@dataclass(frozen=True)
class Scored:
    """A job's answer: every document's result, best first (``top_n`` is applied by the format), the document
    tokens scored (after truncation; the query and the prompt template are not counted), and which score
    ``relevance_score`` holds (``"relevance"``, or ``"normalized_score"`` for a head list without a relevance map)."""

    results: RankedResults
    tokens: int
    score_kind: str = "relevance"
    model: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def truncated(self) -> int:
        return sum(r.truncated for r in self.results)


def score_of(result: RankResult, raw: bool) -> float | None:
    """The score a response carries: the [0, 1] ``relevance_score``, or with ``raw`` the engine's raw score
    (``None`` for an empty document: JSON has no infinity)."""
    return result.json_score if raw else result.relevance_score


def parse(model: type[BaseModel], body: Any) -> Any:
    """``body`` (parsed JSON) validated as ``model``; a 422 naming every bad field otherwise."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise validation(f"invalid request: {problems}") from None


def _check(query: str, documents: Sequence[Any]) -> str:
    """The checks every format shares, before any queueing: an empty list is a 400, a blank query a 422."""
    if not documents:
        raise ApiError(400, "Empty", "the document list is empty: give at least one document")
    try:
        return check_query(query)
    except InvalidInputError as exc:
        raise validation(str(exc)) from None


def _document_text(i: int, doc: str | Mapping[str, Any], rank_fields: Sequence[str] | None) -> str:
    """What is scored for a document sent as a string or an object (Cohere's semi-structured documents): with
    ``rank_fields``, those fields as ``key: value`` lines; else its ``text`` (``title`` first, as the engine
    does); an object without ``text`` gives all its fields as ``key: value`` lines (as Cohere v2 does)."""
    try:
        if isinstance(doc, str):
            return document_text(i, doc)
        if rank_fields:
            return "\n".join(f"{k}: {_field_text(doc[k])}" for k in rank_fields if k in doc)
        if "text" in doc:
            return document_text(i, doc)
        return "\n".join(f"{k}: {_field_text(v)}" for k, v in doc.items())
    except InvalidInputError as exc:
        raise validation(str(exc)) from None


def _field_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _usage(scored: Scored) -> dict[str, int]:
    return {"prompt_tokens": scored.tokens, "total_tokens": scored.tokens}


def _warnings(scored: Scored, job: RerankJob, budget: int) -> list[str]:
    n = scored.truncated
    if not n:
        return []
    return [f"{n} of {len(job.texts)} documents were cut to their first {budget} tokens before scoring"]


class PruneSpec(BaseModel):
    """The ``prune`` extension field: ``Reranker.compress``'s budget."""

    model_config = ConfigDict(extra="forbid")

    keep: StrictFloat | StrictInt | None = 0.5
    scope: Literal["document", "list"] = "list"
    min_sentence_score: StrictFloat | StrictInt | None = None
    rank_by: Literal["density", "score"] = "density"


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: StrictStr
    raw_scores: StrictBool | None = None
    return_highlights: StrictBool | None = None
    prune: PruneSpec | None = None

    @property
    def raw(self) -> bool:
        return bool(self.raw_scores)

    def extensions(self) -> dict[str, Any]:
        """The job fields of the extension fields (a 422 for a budget ``compress`` refuses)."""
        budget = None
        if self.prune is not None:
            p = self.prune
            try:
                min_score = None if p.min_sentence_score is None else float(p.min_sentence_score)
                budget = check_budget(p.keep, p.scope, min_score, " [...] ", p.rank_by)
            except InvalidInputError as exc:
                raise validation(f"prune: {exc}") from None
        return {"highlights": bool(self.return_highlights), "prune": budget, "top_n": getattr(self, "top_n", None)}


def _extras(r: RankResult, job: RerankJob) -> dict[str, Any]:
    """The extension fields of one result."""
    out: dict[str, Any] = {}
    if job.highlights and r.highlights is not None:
        out["highlights"] = [h.to_dict() for h in r.highlights]
    if r.compression is not None:
        out["compression"] = r.compression.to_dict()
    return out


class TeiRequest(_Request):
    """text-embeddings-inference ``POST /rerank``: every text comes back, sorted best first."""

    texts: list[StrictStr]
    return_text: StrictBool | None = None
    truncate: StrictBool | None = None
    truncation_direction: Literal["Right", "Left", "right", "left"] | None = None

    def job(self) -> RerankJob:
        query = _check(self.query, self.texts)
        if (self.truncation_direction or "Right").lower() == "left":
            raise validation(
                "truncation_direction 'Left' is not supported: a long document keeps its beginning (use 'Right')"
            )
        texts = [_document_text(i, t, None) for i, t in enumerate(self.texts)]
        return RerankJob(query, texts, list(self.texts), truncate=self.truncate is not False, **self.extensions())

    def render(self, job: RerankJob, scored: Scored, budget: int) -> list[dict[str, Any]]:
        out = []
        for r in scored.results:
            item: dict[str, Any] = {"index": r.index, "score": score_of(r, self.raw)}
            if self.return_text:
                item["text"] = job.originals[r.index]
            out.append({**item, **_extras(r, job)})
        return out


class InfinityRequest(_Request):
    """Infinity ``POST /rerank`` (a body with ``documents``)."""

    documents: list[StrictStr]
    top_n: PositiveInt | None = None
    return_documents: StrictBool | None = None
    model: str | None = None

    def job(self) -> RerankJob:
        query = _check(self.query, self.documents)
        texts = [_document_text(i, d, None) for i, d in enumerate(self.documents)]
        return RerankJob(query, texts, list(self.documents), **self.extensions())

    def render(self, job: RerankJob, scored: Scored, budget: int) -> dict[str, Any]:
        results = []
        for r in scored.results[: self.top_n]:
            item: dict[str, Any] = {"relevance_score": score_of(r, self.raw), "index": r.index}
            if self.return_documents:
                item["document"] = job.originals[r.index]
            results.append({**item, **_extras(r, job)})
        return {
            "object": "rerank",
            "results": results,
            "model": scored.model,
            "usage": _usage(scored),
            "id": scored.id,
            "created": int(time.time()),
        }


class CohereV1Request(_Request):
    """Jina, Cohere v1 and vLLM ``POST /v1/rerank``: documents are strings or objects (``rank_fields`` picks the
    fields of an object that are scored)."""

    documents: list[StrictStr | dict[str, Any]]
    model: str | None = None
    top_n: PositiveInt | None = None
    return_documents: StrictBool | None = None
    rank_fields: list[StrictStr] | None = None

    def job(self) -> RerankJob:
        query = _check(self.query, self.documents)
        texts = [_document_text(i, d, self.rank_fields) for i, d in enumerate(self.documents)]
        return RerankJob(query, texts, list(self.documents), **self.extensions())

    def render(self, job: RerankJob, scored: Scored, budget: int) -> dict[str, Any]:
        results = _cohere_results(job, scored, self.top_n, self.raw, self.return_documents)
        meta = _cohere_meta("1", job, scored, budget)
        return {"id": scored.id, "model": scored.model, "usage": _usage(scored), "results": results, "meta": meta}


class CohereV2Request(_Request):
    """Cohere v2 ``POST /v2/rerank``: ``max_tokens_per_doc`` lowers the per-document budget for this request."""

    documents: list[StrictStr | dict[str, Any]]
    model: str | None = None
    top_n: PositiveInt | None = None
    max_tokens_per_doc: PositiveInt | None = None
    return_documents: StrictBool | None = None

    def job(self) -> RerankJob:
        query = _check(self.query, self.documents)
        texts = [_document_text(i, d, None) for i, d in enumerate(self.documents)]
        return RerankJob(
            query, texts, list(self.documents), max_doc_tokens=self.max_tokens_per_doc, **self.extensions()
        )

    def render(self, job: RerankJob, scored: Scored, budget: int) -> dict[str, Any]:
        results = _cohere_results(job, scored, self.top_n, self.raw, self.return_documents)
        return {"id": scored.id, "results": results, "meta": _cohere_meta("2", job, scored, budget)}


def _cohere_results(
    job: RerankJob, scored: Scored, top_n: int | None, raw: bool, return_documents: bool | None
) -> list[dict[str, Any]]:
    """Cohere-style results (v1 and v2 alike): best first, cut to ``top_n``, each document echoed on request
    (a string as ``{"text": ...}``, an object as sent)."""
    results = []
    for r in scored.results[:top_n]:
        item: dict[str, Any] = {"index": r.index, "relevance_score": score_of(r, raw)}
        if return_documents:
            original = job.originals[r.index]
            item["document"] = {"text": original} if isinstance(original, str) else original
        results.append({**item, **_extras(r, job)})
    return results


def _cohere_meta(version: str, job: RerankJob, scored: Scored, budget: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"api_version": {"version": version}, "tokens": {"input_tokens": scored.tokens}}
    if warnings := _warnings(scored, job, budget):
        meta["warnings"] = warnings
    return meta

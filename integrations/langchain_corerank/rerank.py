"""``CoReRerank``: a LangChain document compressor that re-ranks with core-rerank.

    >>> from langchain_classic.retrievers import ContextualCompressionRetriever
    >>> from langchain_corerank import CoReRerank
    >>> retriever = ContextualCompressionRetriever(base_compressor=CoReRerank(top_n=3), base_retriever=base)
    >>> pruned = CoReRerank(top_n=5, keep=0.5)  # the 5 documents cut to half their tokens: their best sentences

The engine (and its model) is created on first use and shared process-wide with every other
``core_rerank.Reranker`` configured alike, including the LlamaIndex ``CoReRerank``. To re-rank with a model
your application already holds, pass ``reranker=Reranker.from_model(model, tokenizer)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pydantic
from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field

from core_rerank.inputs import check_query
from core_rerank.wrappers import engine_fields, finite_scores, result_metadata

if TYPE_CHECKING:
    from core_rerank import RankResult

__all__ = ["CoReRerank"]


class CoReRerank(engine_fields(pydantic), BaseDocumentCompressor):
    """Re-rank retrieved documents with the attention of a decoder LLM's retrieval heads (core-rerank).

    The engine fields (``model``, ``heads``, ``dtype``, ``max_doc_tokens``, ...) are those of
    ``core_rerank.EngineSettings``, with its defaults and checks. One list-wise forward pass scores all candidates
    together. Returned documents are copies, best first, with ``metadata["relevance_score"]`` (the calibrated
    probability of relevance, in [0, 1]; the softmax share over this candidate list for a head list without a
    fitted map) and ``metadata["core_rerank_score"]`` (the raw attention score: unbounded, higher is more relevant;
    ``None`` for an empty document, which ranks last). Both are valid JSON (never ``-inf`` or NaN), so metadata that
    was JSON stays JSON.

    Context pruning (``keep``: a fraction or a number of tokens, over all returned documents with the default
    ``prune_scope="list"``; ``min_sentence_score``; ``prune_rank_by``): each
    returned copy's ``page_content`` is its best sentences in their original order, ``" [...] "`` where sentences
    were dropped, with ``metadata["highlights"]`` (every sentence with its score) and ``metadata["kept_ratio"]``.
    ``highlights=True`` adds the highlights without pruning. Both come from the ranking's own forward pass.
    """

    top_n: int | None = Field(default=3, ge=1)
    """Number of documents kept (``None``: all). A list shorter than ``top_n`` is returned whole."""
    min_relevance_score: float | None = Field(default=None, allow_inf_nan=False)
    """Drop documents whose ``metadata["relevance_score"]`` (the calibrated probability of relevance, in [0, 1];
    docs/scores.md) is below this value; applied before ``top_n``. ``None`` keeps all."""
    first_stage_score_key: str | None = None
    """Metadata key holding the retriever's own score of each document (higher = better), e.g. ``"score"``.
    When every document carries a number there, it is fused with the attention (``Reranker.rank(...,
    first_stage_scores=...)``): for the default model this ranked better than either alone behind BM25 and dense
    retrieval, not for every model (docs/retriever_study.md)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), use_attribute_docstrings=True)

    # ------------------------------------------------------------------ compressor API
    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Copies of ``documents`` sorted by relevance to ``query`` (best first), cut to ``top_n``."""
        check_query(query)  # InvalidInputError (a ValueError) / InvalidInputTypeError (a TypeError)
        if not documents:
            return []
        scores = self._first_stage_scores(documents)
        return self._copies(documents, self._rank(query, [doc.page_content for doc in documents], scores))

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async ``compress_documents``: model loading and scoring run in a worker thread, never on the loop."""
        check_query(query)
        if not documents:
            return []
        texts = [doc.page_content for doc in documents]
        scores = self._first_stage_scores(documents)
        chosen = await run_in_executor(None, lambda: self._rank(query, texts, scores))
        return self._copies(documents, chosen)

    def _first_stage_scores(self, documents: Sequence[Document]) -> list[float] | None:
        """The retriever's scores under ``first_stage_score_key``, when every document has a finite number."""
        if self.first_stage_score_key is None:
            return None
        return finite_scores([doc.metadata.get(self.first_stage_score_key) for doc in documents])

    def _rank(self, query: str, texts: list[str], scores: list[float] | None) -> list[RankResult]:
        return self.ranked_selection(query, texts, scores, self.top_n, self.min_relevance_score)

    def _copies(self, documents: Sequence[Document], chosen: list[RankResult]) -> list[Document]:
        out: list[Document] = []
        for result in chosen:
            original = documents[result.index]
            metadata = {
                **original.metadata,
                "relevance_score": result.relevance_score,
                "core_rerank_score": result.json_attention_score,  # None, not -inf, for an empty document
                **result_metadata(result),
            }
            update = {"metadata": metadata}
            if result.compression is not None:
                update["page_content"] = result.compression.text
            out.append(original.model_copy(update=update))
        return out

"""``CoReRerank``: a LangChain document compressor that re-ranks with core-rerank.

    >>> from langchain_classic.retrievers import ContextualCompressionRetriever
    >>> from langchain_corerank import CoReRerank
    >>> retriever = ContextualCompressionRetriever(base_compressor=CoReRerank(top_n=3), base_retriever=base)

The engine (and its model) is created on first use and shared process-wide with every other
``core_rerank.Reranker`` configured alike, including the LlamaIndex ``CoReRerank``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from core_rerank.registry import plain_setting, reranker_for

if TYPE_CHECKING:
    from core_rerank import RankedResults, Reranker

__all__ = ["CoReRerank"]


class CoReRerank(BaseDocumentCompressor):
    """Re-rank retrieved documents with the attention of a decoder LLM's retrieval heads (core-rerank).

    One list-wise forward pass scores all candidates together. Returned documents are copies, best
    first, with ``metadata["relevance_score"]`` (the softmax of the scores over this candidate list:
    in [0, 1], summing to 1 over the candidates) and ``metadata["core_rerank_score"]`` (the raw
    calibrated attention score: unbounded, higher is more relevant, ``-inf`` for an empty document).
    """

    model: str = "default"
    """``"default"`` (the embedded SmolLM2-135M-Instruct), a local directory, a ``.gguf`` file or a
    Hugging Face id already in the local cache. Nothing is downloaded."""
    heads: str | list[tuple[int, int] | str] | None = None
    """``None``: the head list bundled for the model; ``"all"``; a head-list JSON path; or ``[(layer, head), ...]``."""
    quantization: Literal["auto", "4bit", "8bit"] | None = "auto"
    """``"auto"`` (4-bit for 1B+ models on CUDA, dense elsewhere), ``None`` (dense), ``"4bit"`` or ``"8bit"``."""
    dtype: str | None = None
    """Compute dtype (``"bfloat16"``, ``"float32"``, ...); ``None`` means bfloat16."""
    device: str | None = None
    """``None`` picks CUDA when available, else CPU."""
    max_doc_tokens: int = Field(default=400, ge=1)
    """Per-document token budget; longer documents are cut before scoring."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Prompt budget per forward pass; longer lists are scored in several windows."""
    top_n: int | None = Field(default=3, ge=1)
    """Number of documents to return (``None``: all). A list shorter than ``top_n`` is returned whole."""
    score_threshold: float | None = None
    """Drop documents whose ``relevance_score`` is below this value (applied before ``top_n``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @field_validator("model", "heads", "dtype", mode="before")
    @classmethod
    def _plain(cls, value: Any, info: ValidationInfo) -> Any:
        # Paths and torch dtypes become plain strings, so model_dump() round-trips.
        return plain_setting(info.field_name, value)

    # ------------------------------------------------------------------ engine
    @property
    def engine(self) -> Reranker:
        """The ``core_rerank.Reranker`` for these settings: built on first use, shared process-wide."""
        return reranker_for(self)

    # ------------------------------------------------------------------ compressor API
    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Copies of ``documents`` sorted by relevance to ``query`` (best first), cut to ``top_n``."""
        _check_query(query)
        if not documents:
            return []
        ranked = self.engine.rank(query, [doc.page_content for doc in documents])
        return self._select(documents, ranked)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async ``compress_documents``: model loading and scoring run in a worker thread, never on the loop."""
        _check_query(query)
        if not documents:
            return []
        texts = [doc.page_content for doc in documents]
        ranked = await run_in_executor(None, lambda: self.engine.rank(query, texts))
        return self._select(documents, ranked)

    def _select(self, documents: Sequence[Document], ranked: RankedResults) -> list[Document]:
        out: list[Document] = []
        for result in ranked.select(self.top_n, self.score_threshold):
            original = documents[result.index]
            metadata = {
                **original.metadata,
                "relevance_score": result.normalized_score,
                "core_rerank_score": result.score,
            }
            out.append(original.model_copy(update={"metadata": metadata}))
        return out


def _check_query(query: Any) -> None:
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise ValueError("query is empty: CoReRerank needs a non-empty query to rank documents against")

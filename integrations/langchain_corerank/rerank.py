"""``CoReRerank``: a LangChain document compressor that re-ranks with core-rerank.

    >>> from langchain_classic.retrievers import ContextualCompressionRetriever
    >>> from langchain_corerank import CoReRerank
    >>> retriever = ContextualCompressionRetriever(base_compressor=CoReRerank(top_n=3), base_retriever=base)

The engine (and its model) is created on first use and shared process-wide with every other
``core_rerank.Reranker`` configured alike, including the LlamaIndex ``CoReRerank``. To re-rank with a model
your application already holds, pass ``reranker=Reranker.from_model(model, tokenizer)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from core_rerank.inputs import DEFAULT_MAX_DOCUMENTS, check_query
from core_rerank.registry import reranker_for
from core_rerank.wrapper_fields import (
    check_reranker,
    deprecated_alias,
    finite_scores,
    plain_setting,
    renamed_setting,
    settings_from_reranker,
)

if TYPE_CHECKING:
    from core_rerank import RankedResults, Reranker

__all__ = ["CoReRerank"]

_FRAMEWORK = (
    "pydantic",
    "langchain_core",
    "langchain_corerank",
)  # frames skipped to point deprecation warnings at the caller


class CoReRerank(BaseDocumentCompressor):
    """Re-rank retrieved documents with the attention of a decoder LLM's retrieval heads (core-rerank).

    One list-wise forward pass scores all candidates together. Returned documents are copies, best
    first, with ``metadata["relevance_score"]`` (the softmax of the scores over this candidate list:
    in [0, 1], summing to 1 over the candidates; 0 for an empty document) and ``metadata["core_rerank_score"]``
    (the raw calibrated attention score: unbounded, higher is more relevant; ``None`` for an empty document,
    which ranks last). Both are valid JSON (never ``-inf`` or NaN), so metadata that was JSON stays JSON.
    """

    model: str = "default"
    """``"default"`` (the embedded SmolLM2-135M-Instruct, never needs the network), a packaged model name, a local
    directory, a ``.gguf`` file, or a Hugging Face id (loaded as transformers does: from the local cache,
    downloaded first when online; ``HF_HUB_OFFLINE=1`` forbids downloads)."""
    heads: str | list[tuple[int, int] | str] | None = None
    """``None``: the head list bundled for the model; ``"all"``; a head-list JSON path; or ``[(layer, head), ...]``."""
    quantization: Literal["auto", "4bit", "8bit"] | None = "auto"
    """``"auto"`` (4-bit for 1B+ models on CUDA, dense elsewhere), ``None`` (dense), ``"4bit"`` or ``"8bit"``."""
    dtype: str | None = None
    """Compute dtype (``"bfloat16"``, ``"float32"``, ...). ``None`` picks per device: bfloat16 on CUDA GPUs with
    bf16 (else float16) and on CPUs with native bf16, float32 on other CPUs."""
    device: str | None = None
    """``None`` picks CUDA when available, else CPU."""
    max_doc_tokens: int = Field(default=400, ge=1)
    """Per-document token budget; longer documents are cut before scoring."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Prompt budget per forward pass; longer lists are scored in several windows."""
    max_documents: int | None = Field(default=DEFAULT_MAX_DOCUMENTS, ge=1)
    """Most documents one call takes (``None``: no limit); more raise ``core_rerank.TooManyDocumentsError``
    (an ``InvalidInputError``): a guard against re-ranking a whole corpus by mistake."""
    top_n: int | None = Field(default=3, ge=1)
    """Number of documents kept (``None``: all). A list shorter than ``top_n`` is returned whole."""
    min_relevance_score: float | None = Field(default=None, allow_inf_nan=False)
    """Drop documents whose ``metadata["relevance_score"]`` (the calibrated probability of relevance, in [0, 1];
    README, "What the scores mean") is below this value; applied before ``top_n``. ``None`` keeps all.
    (Formerly ``score_threshold``.)"""
    first_stage_score_key: str | None = None
    """Metadata key holding the retriever's own score of each document (higher = better), e.g. ``"score"``.
    When every document carries a number there, it is fused with the attention (``Reranker.rank(...,
    first_stage_scores=...)``): for the default model this ranked better than either alone behind BM25 and dense
    retrieval, not for every model (docs/retriever_study.md)."""

    reranker: Any = Field(default=None, exclude=True)
    """A ready ``core_rerank.Reranker`` to score with, e.g. ``Reranker.from_model(model, tokenizer)`` on the model
    your application already holds (no second copy is loaded). The engine settings above then come from it (give
    them to the ``Reranker``); it is not serialized: a dump records those settings, so a rebuilt wrapper loads
    the same model by name."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _renamed_score_threshold(cls, data: Any) -> Any:
        # score_threshold: the deprecated name of min_relevance_score, accepted for one release.
        data = renamed_setting(
            data, "score_threshold", "min_relevance_score", 'a minimum metadata["relevance_score"]', _FRAMEWORK
        )
        return settings_from_reranker(data)  # with reranker=..., the engine settings are the reranker's

    @field_validator("reranker")
    @classmethod
    def _reranker(cls, value: Any) -> Any:
        return check_reranker(value)

    score_threshold = deprecated_alias("score_threshold", "min_relevance_score", _FRAMEWORK)

    @field_validator("model", "heads", "dtype", mode="before")
    @classmethod
    def _plain(cls, value: Any, info: ValidationInfo) -> Any:
        # Paths and torch dtypes become plain strings, so model_dump() round-trips.
        return plain_setting(info.field_name, value)

    # ------------------------------------------------------------------ engine
    @property
    def engine(self) -> Reranker:
        """The ``core_rerank.Reranker`` it scores with: ``reranker`` when given, else the one for these settings
        (built on first use, shared process-wide)."""
        return reranker_for(self)

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
        ranked = self.engine.rank(query, [doc.page_content for doc in documents], first_stage_scores=scores)
        return self._select(documents, ranked)

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
        ranked = await run_in_executor(None, lambda: self.engine.rank(query, texts, first_stage_scores=scores))
        return self._select(documents, ranked)

    def _first_stage_scores(self, documents: Sequence[Document]) -> list[float] | None:
        """The retriever's scores under ``first_stage_score_key``, when every document has a finite number."""
        if self.first_stage_score_key is None:
            return None
        return finite_scores([doc.metadata.get(self.first_stage_score_key) for doc in documents])

    def _select(self, documents: Sequence[Document], ranked: RankedResults) -> list[Document]:
        out: list[Document] = []
        for result in ranked.select(self.top_n, self.min_relevance_score):
            original = documents[result.index]
            metadata = {
                **original.metadata,
                "relevance_score": result.relevance_score,
                "core_rerank_score": result.json_attention_score,  # None, not -inf, for an empty document
            }
            out.append(original.model_copy(update={"metadata": metadata}))
        return out

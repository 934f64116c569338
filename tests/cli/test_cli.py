"""The core-rerank command on the example file."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from core_rerank.cli import app

DOCS = Path(__file__).resolve().parents[2] / "examples" / "data" / "docs.jsonl"
runner = CliRunner(env={"COLUMNS": "300"})  # wide: rich must not wrap the messages we check


def test_rank_prints_a_ranked_table():
    result = runner.invoke(
        app, ["rank", "--query", "when did the French Revolution start?", "--docs", str(DOCS), "--top-n", "3"]
    )
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("│")]
    assert len(lines) == 3
    assert "The Bastille" in lines[0]  # the relevant document is ranked first


def test_rank_json_output():
    result = runner.invoke(app, ["rank", "-q", "which fruit is rich in potassium?", "-d", str(DOCS), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 8 and rows[0]["corpus_id"] == 1 and rows[0]["text"].startswith("Bananas")
    assert [r["rank"] for r in rows] == list(range(1, 9))


def test_rank_highlights_mark_the_best_sentence():
    """--highlights shows each document from its best sentence on; with --json every sentence with its score."""
    query = "which fruit is rich in potassium?"
    table = runner.invoke(app, ["rank", "-q", query, "-d", str(DOCS), "--top-n", "1", "--highlights"])
    assert table.exit_code == 0, table.output
    row = next(ln for ln in table.output.splitlines() if ln.startswith("│"))
    assert "... Bananas are an elongated" in row  # the title line skipped, the answer sentence shown first
    rows = json.loads(runner.invoke(app, ["rank", "-q", query, "-d", str(DOCS), "--json", "--highlights"]).output)
    best = max(rows[0]["highlights"], key=lambda h: h["score"])
    assert rows[0]["text"][best["start"] : best["end"]] == best["text"] and "potassium" in best["text"]


def test_plain_text_docs_and_errors(tmp_path):
    txt = tmp_path / "docs.txt"
    txt.write_text("Paris is the capital of France.\n\nBerlin is the capital of Germany.\n")
    ok = runner.invoke(app, ["rank", "-q", "capital of Germany?", "-d", str(txt), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)[0]["corpus_id"] == 1

    empty_query = runner.invoke(app, ["rank", "-q", "  ", "-d", str(txt)])
    assert empty_query.exit_code == 2 and "query is empty" in empty_query.output
    missing = runner.invoke(app, ["rank", "-q", "x", "-d", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code != 0 and "does not exist" in missing.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n')
    broken = runner.invoke(app, ["rank", "-q", "x", "-d", str(bad)])
    assert broken.exit_code != 0 and "bad.jsonl:2" in broken.output
    unknown = runner.invoke(app, ["rank", "-q", "x", "-d", str(txt), "--model", "/no/such/model"])
    assert unknown.exit_code == 2 and "does not exist" in unknown.output

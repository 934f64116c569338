"""``core-rerank batch`` embedded: the output shape, input order, bad rows, and the command line."""

from __future__ import annotations

import json

import pytest
from batch_rows import assert_same_rows, make_rows, read_jsonl, write_jsonl
from typer.testing import CliRunner

from core_rerank.batch import score_line
from core_rerank.cli import app

runner = CliRunner(env={"COLUMNS": "300"})


def test_batch_writes_ranked_rows_in_input_order(tmp_path, default_rr):
    rows = make_rows(6, seed=1)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["batch", str(src), "--output", str(out)])
    assert result.exit_code == 0, result.output
    got = read_jsonl(out)
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    for g, row in zip(got, rows):
        assert set(g) == {"id", "results"}
        ranked = default_rr.rank(row["query"], row["documents"])
        want = [{"index": r.index, "score": r.json_score, "relevance": r.relevance} for r in ranked]
        assert_same_rows([g], [{"id": row["id"], "results": want}])
        assert all(set(r) == {"index", "score", "relevance"} for r in g["results"])
        assert all(0.0 <= r["relevance"] <= 1.0 for r in g["results"])


def test_bad_rows_get_an_error_field_and_the_job_goes_on(tmp_path):
    good = {"id": "ok", "query": "how do I copy files?", "documents": ["cp copies files", "bananas", ""]}
    lines = [
        good,
        {"id": "empty", "query": "q", "documents": []},
        {"id": "no-docs", "query": "q"},
        {"documents": ["x"]},
        {"id": "docs-not-list", "query": "q", "documents": "cp copies files"},
        "[1, 2]",
        "{not json",
        "",  # blank lines are skipped
        {"id": "bad-doc", "query": "q", "documents": [3]},
        {"id": "blank-query", "query": "  ", "documents": ["x"]},
        {"id": "too-many", "query": "q", "documents": ["x"] * 4},
        good,
    ]
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["batch", str(src), "-o", str(out), "--max-documents", "3"])
    assert result.exit_code == 0, result.output
    assert "12 rows" not in result.output and "11 rows, 9 with an error" in result.output
    got = read_jsonl(out)
    assert len(got) == 11
    assert got[0]["id"] == "ok" and got[-1] == got[0]
    assert got[0]["results"][-1] == {"index": 2, "score": None, "relevance": got[0]["results"][-1]["relevance"]}
    errors = {(g["id"], g["line"]): g["error_type"] for g in got[1:-1]}
    assert errors == {
        ("empty", 2): "InvalidRow",
        ("no-docs", 3): "InvalidRow",
        (None, 4): "InvalidRow",
        ("docs-not-list", 5): "InvalidRow",
        (None, 6): "InvalidRow",
        (None, 7): "InvalidJSON",
        ("bad-doc", 9): "InvalidInputTypeError",
        ("blank-query", 10): "InvalidInputError",
        ("too-many", 11): "TooManyDocumentsError",
    }
    assert all(isinstance(g["error"], str) and g["error"] for g in got[1:-1])
    assert all("results" not in g for g in got[1:-1])


def test_score_line_is_the_shared_row_function(default_rr):
    row = score_line(default_rr, json.dumps({"id": 7, "query": "fruit?", "documents": ["bananas", "cp"]}), 1)
    want = default_rr.rank("fruit?", ["bananas", "cp"]).indices
    assert row["id"] == 7 and [r["index"] for r in row["results"]] == want


def test_batch_command_errors(tmp_path):
    missing = runner.invoke(app, ["batch", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl")])
    assert missing.exit_code != 0 and "does not exist" in missing.output
    src = write_jsonl(tmp_path / "in.jsonl", make_rows(1))
    unknown = runner.invoke(app, ["batch", str(src), "-o", str(tmp_path / "o.jsonl"), "--model", "/no/such/model"])
    assert unknown.exit_code == 2 and "does not exist" in unknown.output


def test_batch_highlights_are_the_engines(tmp_path, default_rr):
    rows = make_rows(2, seed=3)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["batch", str(src), "--output", str(out), "--highlights"])
    assert result.exit_code == 0, result.output
    for g, row in zip(read_jsonl(out), rows):
        ranked = default_rr.rank(row["query"], row["documents"], highlights=True)
        assert [r["index"] for r in g["results"]] == ranked.indices
        for got, want in zip(g["results"], ranked):
            assert [h["text"] for h in got["highlights"]] == [h.text for h in want.highlights]
            assert sum(h["score"] for h in got["highlights"]) == pytest.approx(want.attention_score, rel=1e-6, abs=1e-9)

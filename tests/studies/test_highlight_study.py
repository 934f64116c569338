"""The highlight study's label mapping and metrics on a few real WikiQA rows (no model): a rebuilt document holds
its candidate sentences at their recorded spans, the pruning metrics follow the engine's budget rule, and the
BM25 baseline is a correct BM25; docs/highlights.md shows the committed results' tables."""

from __future__ import annotations

import json

import pytest
from conftest import shared_data

from core_rerank.highlights import sentence_spans
from studies import ROOT
from studies.highlight_study import bm25, boundary_match, half, markdown, prune_query, wikiqa_rows


@pytest.fixture(scope="module")
def rows():
    root = shared_data("wikiqa_tok")
    return wikiqa_rows(root.parent, "dev")[:5]


def fake_record(row, scores):
    """A cached record as collect() writes it, with given unit scores and one token per character (no model)."""
    text = row["docs"][0]["text"]
    units = [(a, b, b - a, False) for a, b in sentence_spans(text)]
    return {"units": [units], "totals": [sum(u[2] for u in units)], "scores": {"engine": [scores(text, units)]}}


def test_rebuilt_documents_hold_their_candidates_at_their_spans(rows):
    assert rows and all(r["gold"][0] for r in rows)  # every kept question has a labelled sentence
    for r in rows:
        text = r["docs"][0]["text"]
        assert all(text[a:b].strip() == text[a:b] and b <= len(text) for a, b in r["cands"])
        assert set(r["gold"][0]) <= set(r["cands"])
        matched, total = boundary_match(text, r["cands"])
        assert 0 <= matched <= total == len(r["cands"])


def test_an_oracle_keeps_every_labelled_sentence_and_lead_keeps_the_start(rows):
    for r in rows:
        gold = r["gold"][0]

        def oracle(text, units, gold=gold):
            return [float(any(min(b, y) > max(a, x) for x, y in gold)) for a, b, _, _ in units]

        rec = fake_record(r, oracle)
        full = prune_query(r, rec, "engine", [0], 1.0, "document", "sum")
        assert full == {"recall": 1.0, "answer": 1.0, "kept": 1.0}
        half_kept = prune_query(r, rec, "lead", [0], 0.5, "document", "sum")
        assert 0 < half_kept["kept"] <= 0.5 or len(rec["units"][0]) == 1
        assert half_kept["recall"] in (0.0, 1.0) or len(gold) > 1


def test_bm25_scores_query_terms_and_the_hotpot_halves_are_fixed():
    s = bm25("glacier cave", ["a glacier cave forms", "the ice is high", "cave cave"])
    assert s[0] > 0 and s[1] == 0 and s[2] > 0
    assert half("5a8c7595554299585d9e36b6") == half("5a8c7595554299585d9e36b6") in ("dev", "test")


def test_the_docs_tables_are_the_committed_results():
    """docs/highlights.md holds the tables `python -m studies.highlight_study --tables` renders from the JSON, and
    names the rule they measured."""
    report = json.loads((ROOT / "benchmarks" / "results" / "highlights_quality.json").read_text())
    doc = (ROOT / "docs" / "highlights.md").read_text()
    dev, test = markdown(report)
    assert dev in doc and test in doc
    assert report["dev"]["pick"] == f"{report['test']['rule']}/{report['test']['scope']}" == "density/list"
    assert "**`density` over the `list`**" in doc

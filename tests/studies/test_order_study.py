"""The order study as a package: its analysis runs end to end on a synthetic collection, its math is the project's
own (pytrec_eval nDCG, the engine's fusion), and the bundled lists hold exactly what its committed results chose."""

from __future__ import annotations

import argparse
import json
import math

import pytest
from synthetic_store import write_store

pytest.importorskip("pytrec_eval", reason="the eval extra (pytrec-eval-terrier) is not installed")

from studies import ROOT


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    from studies.order_analysis import analyze

    work = write_store(tmp_path_factory.mktemp("work"))
    out = work / "order_study.json"
    docs = work / "docs"
    docs.mkdir()
    analyze(argparse.Namespace(work=work, out=out, docs=docs))
    return json.loads(out.read_text()), (docs / "retriever_study.md").read_text()


def test_the_analysis_runs_end_to_end_and_renders(analysed):
    report, page = analysed
    assert set(report["parts"]) == {"dev", "test"} and set(report["parts"]["test"]) == {"bm25", "dense"}
    rows = report["parts"]["test"]["bm25"]
    for name in ("first_stage", "core", "icr", "qr", "core@shuffled", "core + first-stage scores"):
        assert 0.0 <= rows[name]["ndcg"] <= 1.0, name
    # The synthetic attention carries the labels: it beats the (noisier) first stage.
    assert rows["core"]["ndcg"] > rows["first_stage"]["ndcg"]
    grid = report["fusion_dev_grid"]
    chosen = report["bundle"]["HuggingFaceTB/SmolLM2-135M-Instruct"]["fusion"]["weight"]
    means = {w: sum(grid[p][w] for p in grid) / len(grid) for w in grid["bm25"]}
    assert means[str(chosen)] == max(means.values())  # the dev grid's best mean over both pools
    assert "gemma-3-270m" in report["models"] and "google/gemma-3-270m" in report["bundle"]
    assert page.startswith("# Behind the retriever") and "## The issue's targets" in page


def test_fusion_in_the_study_is_the_engines():
    """A weight chosen by the study is applied by rank(first_stage_scores=): both go through scoring.fuse."""
    import numpy as np

    from core_rerank import scoring
    from studies.order_analysis import fused

    class Q:
        fs_score = np.array([3.0, np.nan, 1.0, 0.5])
        fs_rank = np.arange(4, 0, -1, dtype=float)

    attention = np.array([0.2, 0.9, -0.1, -math.inf])
    got = fused(lambda q: attention, 0.75)(Q)
    want = scoring.fuse(attention.tolist(), [3.0, 0.5, 1.0, 0.5], 0.75)  # a missing score: the list's lowest
    assert got[:3] == pytest.approx(want[:3]) and got[3] == -math.inf


def test_the_bundled_lists_hold_what_the_committed_study_chose():
    """studies.bundle fits and relevance, applied to the committed results, change no bundled list: the relevance
    maps and fusion weights users get are the ones the studies report."""
    from core_rerank.heads import find_bundled_head_list
    from studies.bundle import fitted_lists

    report = json.loads((ROOT / "benchmarks" / "results" / "order_study.json").read_text())
    for hl in fitted_lists(report):
        bundled = find_bundled_head_list(hl.model_id, "core")
        assert bundled.fusion == hl.fusion, hl.model_id
        assert bundled.relevance_map.settings == hl.relevance_map.settings
    # The default model's relevance maps were refitted per attention mode by the block study (studies.bundle relevance).
    block = json.loads((ROOT / "benchmarks" / "results" / "block_study.json").read_text())
    bundled = find_bundled_head_list(block["model"], "core")
    for mode, fit in (("full", bundled.relevance_map), ("block", bundled.block_relevance_map)):
        made = block["relevance"][mode]["map"]
        assert (fit.a, fit.b) == (made["a"], made["b"]) and fit.settings == made["settings"], mode


def test_studies_read_the_shipped_settings():
    from core_rerank.settings import EngineSettings
    from studies.bundle import STUDY_SETTINGS
    from studies.protocol import MAX_DOC_TOKENS

    assert MAX_DOC_TOKENS == EngineSettings().max_doc_tokens == STUDY_SETTINGS["max_doc_tokens"]
    assert STUDY_SETTINGS["order"] == EngineSettings().order

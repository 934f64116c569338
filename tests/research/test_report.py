"""The docs/quality.md renderer: a pure function of the JSON results. Exact rows on a small synthetic input
(numbers worked by hand), models without results noted and skipped, and the committed page equal to what
the committed JSON renders to."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from core_rerank.research.report import ModelResults, findings_section, render_quality_report

ROOT = Path(__file__).resolve().parents[2]

# Per-query nDCG@10 of two test sets (s1: q1 q2, s2: q3 q4).
ALPHA = {
    "bm25": [0.4, 0.4, 0.4, 0.4],
    "dense": [0.7, 0.7, 0.7, 0.7],
    "icr": [0.5, 0.6, 0.5, 0.2],
    "qr": [0.5, 0.5, 0.5, 0.5],
    "core": [0.6, 0.4, 0.8, 0.2],
    "core_k8": [0.6, 0.4, 0.8, 0.2],
    "core+bm25": [0.5, 0.5, 0.6, 0.4],
    "icr+bm25": [0.45, 0.45, 0.45, 0.45],
    "qr+bm25": [0.45, 0.45, 0.45, 0.45],
    "core-nocontrast": [0.3, 0.3, 0.3, 0.3],
    "core_L2": [0.2, 0.2, 0.2, 0.2],
}


def _test_json(per_query: dict[str, list[float]], timing: bool = True, max_doc_tokens: int = 200) -> dict:
    results = []
    for name, qids, cut in (("s1", ["q1", "q2"], slice(0, 2)), ("s2", ["q3", "q4"], slice(2, 4))):
        pq = {m: dict(zip(qids, v[cut])) for m, v in per_query.items()}
        results.append(
            {
                "dataset": name,
                "split": "test",
                "queries": 2,
                "settings": {"depth": 20, "max_doc_tokens": max_doc_tokens, "order": "reverse"},
                "ndcg@10": {m: sum(v.values()) / 2 for m, v in pq.items()},
                "per_query": pq,
            }
        )
    out = {
        "model": "x",
        "chosen": {"order": "reverse", "tau": 0.1, "k": 4},
        "lists": {
            "qr": {"layers_run": 3, "heads": 16},
            "core": {"layers_run": 5, "heads": 4},
            "core_k8": {"layers_run": 6, "heads": 8},
            "core_L2": {"layers_run": 2, "heads": 4},
        },
        "results": results,
    }
    if timing:
        out["timing"] = {
            "icr": {"layers_run": 8, "seconds_per_query": 2.0},
            "core": {"layers_run": 5, "seconds_per_query": 1.5},
            "core_L2": {"layers_run": 2, "seconds_per_query": 0.5},
        }
    return out


DEV = {
    "dev_sets": ["d/dev (3 q)"],
    "mean_ndcg@10": {
        "reverse:core_t0.1_k4": 0.5,
        "reverse:core_t0.1_k8": 0.25,
        "reverse:core_t1_k4": 0.125,
        "reverse:core_t1_k8": 0.375,
        "reverse:core_t0.1_k4+bm25": 0.45,
        "reverse:bm25": 0.4,
        "reverse:icr": 0.3,
        "reverse:qr16": 0.2,
    },
    "chosen": {"order": "reverse", "tau": 0.1, "k": 4, "by": "mean dev nDCG@10 of core (no fusion)"},
}


def _models() -> list[ModelResults]:
    beta = copy.deepcopy(ALPHA)
    beta["core"] = [0.7, 0.5, 0.7, 0.5]  # minus alpha's core: 0.1 0.1 -0.1 0.3
    return [
        ModelResults("alpha", "Alpha", "core_rerank/head_lists/a.core.json", DEV, _test_json(ALPHA), True, "a.png"),
        ModelResults("gamma", "Gamma", "core_rerank/head_lists/g.core.json", None, None),
        ModelResults(
            "beta", "Beta", "benchmarks/results/quality_heads_beta.core.json", DEV, _test_json(beta, False), False
        ),
        ModelResults("delta", "Delta", "core_rerank/head_lists/d.core.json", None, _test_json(ALPHA)),
    ]


@pytest.fixture(scope="module")
def page() -> list[str]:
    return render_quality_report(_models(), timing_queries=3, findings="## Findings\n\n- hand-written.\n").split("\n")


def _section(page: list[str], title: str) -> list[str]:
    start = page.index(title)
    end = next((i for i in range(start + 1, len(page)) if page[i].startswith("## ")), len(page))
    return page[start:end]


def test_models_without_results_are_noted_and_skipped(page):
    assert "Not in this report: Gamma (`gamma`: no dev or test results); Delta (`delta`: no dev results)." in page
    assert "## Alpha" in page and "## Beta" in page
    assert "## Gamma" not in page and "## Delta" not in page
    assert "every document cut to 200 tokens" in " ".join(page) and "Re-rank the top 20" in " ".join(page)
    assert page[-4:] == ["## Findings", "", "- hand-written.", ""]  # the hand-written section, last


def test_overview_rows(page):
    overview = _section(page, "## All models")
    assert "| model | queries | bm25 | dense | icr | qr | core | core - alpha | s/query |" in overview
    assert "| Alpha | 4 | 0.400 | **0.700** | 0.450 | 0.500 | 0.500 | - | 1.50 |" in overview
    # beta - alpha per query: 0.1 0.1 -0.1 0.3 -> mean 0.1, sample std sqrt(0.08/3), s.e. = std / 2 = 0.0816
    assert "| Beta | 4 | 0.400 | **0.700** | 0.450 | 0.500 | 0.600 | +0.100 (0.082) | - |" in overview


def test_model_section_rows(page):
    alpha = _section(page, "## Alpha")
    assert (
        "Chosen on dev (d/dev (3 q)): order `reverse`, tau 0.1, k 4. Bundled as `core_rerank/head_lists/a.core.json` "
        "(4 heads; the engine runs 5 layers)."
    ) in alpha
    assert "| s1 (2) | 0.400 | **0.700** | 0.550 | 0.500 | 0.500 | 0.500 | 0.500 | 0.450 | 0.450 | 0.300 |" in alpha
    assert "| s2 (2) | 0.400 | **0.700** | 0.350 | 0.500 | 0.500 | 0.500 | 0.500 | 0.450 | 0.450 | 0.300 |" in alpha
    assert "| **mean** | 0.400 | 0.700 | 0.450 | 0.500 | 0.500 | 0.500 | 0.500 | 0.450 | 0.450 | 0.300 |" in alpha
    assert "CoRe >= ICR on 1/2 test sets, >= QR on 2/2, >= BM25 on 2/2, >= dense on 0/2." in alpha
    # core - icr per query: 0.1 -0.2 0.3 0 -> mean 0.05, sample std sqrt(0.13/3) = 0.20817, s.e. 0.10408
    assert "| core vs icr | 4 | +0.0500 | 0.1041 | 2 / 1 / 1 |" in alpha
    # core - bm25: 0.2 0 0.4 -0.2 -> mean 0.1, sample std sqrt(0.2/3) = 0.25820, s.e. 0.12910
    assert "| core vs bm25 | 4 | +0.1000 | 0.1291 | 2 / 1 / 1 |" in alpha
    # core - dense: -0.1 -0.3 0.1 -0.5 -> mean -0.2, sample std sqrt(0.2/3), s.e. 0.12910
    assert "| core vs dense | 4 | -0.2000 | 0.1291 | 1 / 3 / 0 |" in alpha
    assert "| core vs core-nocontrast | 4 | +0.2000 | 0.1291 | 3 / 1 / 0 |" in alpha
    assert "| core_L2 | 2 | 0.200 | 0.50 | 0.25 |" in alpha
    assert "| core (bundled) | 5 | 0.500 | 1.50 | 0.75 |" in alpha
    assert "| icr (all heads) | 8 | 0.450 | 2.00 | 1.00 |" in alpha
    assert "| tau \\ k | 4 | 8 |" in alpha
    assert "| 0.1 | 0.5000 | 0.2500 |" in alpha and "| 1 | 0.1250 | 0.3750 |" in alpha
    assert "Dev baselines: bm25 0.4000, icr 0.3000, qr16 0.2000." in alpha
    assert "![Alpha CoRe head map](a.png)" in alpha
    assert not any(line.startswith("### Document order") for line in alpha)  # one order on dev


def test_candidate_list_and_missing_timing(page):
    beta = _section(page, "## Beta")
    assert any("Tested list `benchmarks/results/quality_heads_beta.core.json` (not bundled" in ln for ln in beta)
    assert "| core_L2 | 2 | 0.200 | - | - |" in beta  # no timings stage yet: layers from the lists
    assert "| core (tested) | 5 | 0.600 | - | - |" in beta
    assert not any("head map" in ln.lower() for ln in beta)


def test_mixed_settings_are_refused():
    models = _models()
    models[2] = ModelResults("beta", "Beta", "x.json", DEV, _test_json(ALPHA, max_doc_tokens=400))
    with pytest.raises(ValueError, match="mix settings"):
        render_quality_report(models, timing_queries=3)


def test_findings_section():
    assert findings_section("# T\n\n## A\n\ntext\n\n## Findings\n\n- x\n") == "## Findings\n\n- x"
    assert findings_section("# T\n") is None


@pytest.fixture
def script():
    """The quality study (studies.quality)."""
    from studies import quality

    return quality


def test_committed_page_is_the_rendered_json(script):
    """docs/quality.md is what `python -m studies.quality --stage report` renders from benchmarks/results/;
    regenerate it with that command after changing the JSON or the renderer."""
    assert script.render_report() == (ROOT / "docs" / "quality.md").read_text()


@pytest.mark.parametrize("write", [False, True])
def test_test_stage_writes_bundled_lists_only_through_the_bundle_command(script, monkeypatch, tmp_path, write):
    """The test stage (its evaluation stubbed out) writes candidate lists under benchmarks/results/ and never into
    core_rerank/head_lists/; ``studies.bundle heads`` makes them the bundled ones; the report then names the list it
    tested."""
    import argparse
    import json

    import numpy as np

    from core_rerank.research.detection import DetectionResult, make_head_list

    masses = [np.array([[0.2, 0.1, 0.1], [0.1, 0.3, 0.0]])]
    det = DetectionResult("toy", 1, 2, 1, [(0, 0), (0, 1)], masses, [0], ["toy"])
    lists = {"core": make_head_list(det, "core", k=1, tau=0.1), "qr": make_head_list(det, "qr", k=1)}
    results, bundled = tmp_path / "results", tmp_path / "head_lists"
    results.mkdir(), bundled.mkdir()
    monkeypatch.setattr(script, "RESULTS", results)
    monkeypatch.setattr(script, "HEAD_LISTS", bundled)
    monkeypatch.setattr(script, "ROOT", tmp_path)
    monkeypatch.setattr(script, "_lists", lambda args, spec: lists)
    monkeypatch.setattr(script, "_test_job", lambda payload: [])
    monkeypatch.setattr(script, "ProcessPoolExecutor", _InProcessPool)
    spec = script.MODELS["smollm2"]
    (results / f"quality_dev_{spec.key}.json").write_text(json.dumps({"chosen": {"order": "reverse"}}))
    args = argparse.Namespace(work=tmp_path / "work", threads=1)
    script.stage_test(args, spec)
    assert sorted(p.name for p in results.iterdir()) == [
        "quality_dev_smollm2.json",
        "quality_heads_smollm2.core.json",
        "quality_heads_smollm2.qr.json",
        "quality_test_smollm2.json",
    ]
    assert list(bundled.iterdir()) == []  # the study itself never writes the bundled lists
    if write:
        from studies import bundle

        monkeypatch.setattr(bundle, "HEAD_LISTS", bundled)
        monkeypatch.setattr(bundle, "ROOT", tmp_path)
        bundle.heads(["smollm2"])
    expected = [f"{spec.list_stem}.core.json", f"{spec.list_stem}.qr.json"] if write else []
    assert sorted(p.name for p in bundled.iterdir()) == expected
    path, is_bundled = script._tested_core_list(spec)
    assert is_bundled == write and path.parent == (bundled if write else results)


class _InProcessPool:
    def __init__(self, workers):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items):
        return map(fn, items)


def test_behind_retriever_section_follows_the_overview():
    study = "## Behind the retriever\n\n| ranking | behind BM25 |\n|---|---:|\n| first-stage order | 0.500 |\n"
    page = render_quality_report(_models(), timing_queries=3, behind_retriever=study).split("\n")
    at = page.index("## Behind the retriever")
    assert page.index("## All models") < at < page.index("## Alpha")
    assert "| first-stage order | 0.500 |" in _section(page, "## Behind the retriever")
    assert "## Behind the retriever" not in render_quality_report(_models(), timing_queries=3)

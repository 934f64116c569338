"""The public API on the real default model: relevance, results, long lists, bad input, sharing, threads."""

from __future__ import annotations

import math
import threading

import pytest
from conftest import SANITY_DOCS, SANITY_QUERIES, SHALLOW_HEADS

from core_rerank import Reranker
from core_rerank.errors import DeviceUnavailableError, HeadListMismatchError, ModelNotFoundError


@pytest.mark.parametrize(("query", "relevant"), SANITY_QUERIES)
def test_relevant_document_wins(default_rr, query, relevant):
    results = default_rr.rank(query, SANITY_DOCS)
    assert results[0].index == relevant, results


def test_results_shape(default_rr):
    results = default_rr.rank("which fruit is high in potassium?", SANITY_DOCS)
    assert sorted(results.indices) == list(range(len(SANITY_DOCS)))
    assert [r.rank for r in results] == list(range(1, len(SANITY_DOCS) + 1))
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert sum(r.normalized_score for r in results) == pytest.approx(1.0)
    assert all(0 < r.normalized_score < 1 for r in results)
    top = results[0]
    assert top.text == SANITY_DOCS[top.index] and top.document is SANITY_DOCS[top.index] and not top.truncated
    assert results.by_index(top.index) is top
    assert results.to_dicts()[0]["corpus_id"] == top.index == top.corpus_id
    # score() gives the same numbers in input order.
    by_input = default_rr.score("which fruit is high in potassium?", SANITY_DOCS)
    assert by_input == pytest.approx([results.by_index(i).score for i in range(len(SANITY_DOCS))], abs=1e-9)


def test_top_n_and_threshold(default_rr):
    q = "what is the tallest mountain in the world?"
    full = default_rr.rank(q, SANITY_DOCS)
    assert default_rr.rank(q, SANITY_DOCS, top_n=3).indices == full.indices[:3]
    assert len(default_rr.rank(q, SANITY_DOCS, top_n=50)) == len(SANITY_DOCS)
    cut = full[2].score
    kept = default_rr.rank(q, SANITY_DOCS, min_score=cut)
    assert kept.indices == full.indices[:3]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="top_n"):
            default_rr.rank(q, SANITY_DOCS, top_n=bad)


def test_dict_documents_with_titles(default_rr):
    docs = [
        {"title": "Everest", "text": SANITY_DOCS[5]},
        {"text": SANITY_DOCS[1]},
        {"title": None, "text": SANITY_DOCS[3]},
    ]
    results = default_rr.rank("what is the tallest mountain in the world?", docs)
    assert results[0].index == 0 and results[0].text.startswith("Everest\n") and results[0].document is docs[0]


def test_bad_input(default_rr):
    assert list(default_rr.rank("anything", [])) == []
    assert default_rr.score("anything", []) == []
    for q in ("", "   \n"):
        with pytest.raises(ValueError, match="query is empty"):
            default_rr.rank(q, SANITY_DOCS)
    with pytest.raises(TypeError, match="query must be a string"):
        default_rr.rank(None, SANITY_DOCS)
    with pytest.raises(TypeError, match="document 1 "):
        default_rr.rank("q", ["fine", None, "fine"])
    with pytest.raises(TypeError, match="document 2 "):
        default_rr.rank("q", ["fine", "fine", 42])
    with pytest.raises(TypeError, match=r"document 0 .*'text'"):
        default_rr.rank("q", [{"body": "x"}])
    with pytest.raises(TypeError, match="documents must be a list"):
        default_rr.rank("q", "a single string")


def test_empty_documents_rank_last(default_rr):
    results = default_rr.rank("which fruit is high in potassium?", ["", SANITY_DOCS[1], "   ", SANITY_DOCS[0]])
    assert results.indices[:2] == [1, 3]
    assert {r.index for r in results[2:]} == {0, 2}
    assert all(r.score == -math.inf and r.normalized_score == 0.0 for r in results[2:])


def test_duplicates_each_keep_their_own_score(default_rr):
    docs = [SANITY_DOCS[1], SANITY_DOCS[0], SANITY_DOCS[1], SANITY_DOCS[4]]
    results = default_rr.rank("which fruit is high in potassium?", docs)
    assert set(results.indices[:2]) == {0, 2}  # both copies of the relevant document lead
    assert results.by_index(0).score != results.by_index(2).score
    assert len(results) == 4


def test_long_documents_are_truncated_and_reported(fp32_shallow):
    long_doc = " ".join(["Potassium-rich bananas grow in the tropics."] * 400)  # ~3,600 tokens
    huge = "x" * 5_000_000  # never tokenized whole
    results = fp32_shallow.rank("which fruit is high in potassium?", [SANITY_DOCS[0], long_doc, huge])
    by = {r.index: r for r in results}
    assert by[1].truncated and by[2].truncated and not by[0].truncated
    assert by[1].tokens == fp32_shallow.max_doc_tokens and by[1].text == long_doc


def test_lists_past_the_budget_are_windowed_without_losing_documents():
    import numpy as np

    one = Reranker(max_doc_tokens=64)
    windowed = Reranker(max_tokens=400, max_doc_tokens=64)
    assert windowed.loaded_model is one.loaded_model
    docs = SANITY_DOCS * 3  # 24 docs x ~30 tokens: one prompt of ~900 tokens, or windows of 400
    query = "which organelle makes ATP for the cell?"
    results = windowed.rank(query, docs)
    assert results.num_windows > 1 and one.rank(query, docs).num_windows == 1
    assert sorted(results.indices) == list(range(len(docs)))
    assert len({r.window for r in results}) == results.num_windows
    # The three copies of the relevant document sit in different windows and all still rank high.
    relevant = [results.by_index(i) for i in (6, 14, 22)]
    assert len({r.window for r in relevant}) == 3
    assert all(r.rank <= 6 for r in relevant), [r.rank for r in relevant]
    # Windowed scores stay on the scale of single-prompt scores (measured r = 0.83-0.94 here).
    corr = np.corrcoef(one.score(query, docs), windowed.score(query, docs))[0, 1]
    assert corr > 0.7, corr


def test_context_too_small_for_one_document_is_a_clear_error():
    with pytest.raises(ValueError, match="max_tokens"):
        Reranker(heads=SHALLOW_HEADS, max_tokens=64, max_doc_tokens=400)


def test_rank_batch(default_rr):
    queries = [q for q, _ in SANITY_QUERIES[:3]]
    shared = default_rr.rank_batch(queries, SANITY_DOCS, top_n=1, show_progress_bar=False)
    assert [r[0].index for r in shared] == [rel for _, rel in SANITY_QUERIES[:3]]
    per_query = default_rr.rank_batch(queries[:2], [SANITY_DOCS[:4], SANITY_DOCS], show_progress_bar=False)
    assert len(per_query[0]) == 4 and len(per_query[1]) == len(SANITY_DOCS)
    with pytest.raises(ValueError, match="document lists"):
        default_rr.rank_batch(queries, [SANITY_DOCS, SANITY_DOCS])


def test_same_settings_share_one_model(default_rr):
    again = Reranker()
    assert again.loaded_model is default_rr.loaded_model
    other = Reranker(heads=SHALLOW_HEADS)  # different depth: a different truncated model
    assert other.loaded_model is not default_rr.loaded_model


def test_eight_threads_on_one_reranker_match_sequential_and_runs_are_deterministic(default_rr):
    queries = [q for q, _ in SANITY_QUERIES] + ["what does cp do?", "when do bananas ripen?"]
    docs = SANITY_DOCS[:4]  # shorter prompts: the threads, not the list, are what is tested
    expected = {q: default_rr.score(q, docs) for q in queries}
    assert {q: default_rr.score(q, docs) for q in queries} == expected  # run to run: identical
    got: dict[str, list[float]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(queries))

    def work(q: str) -> None:
        try:
            start.wait()  # all eight call at once
            got[q] = default_rr.score(q, docs)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(q,)) for q in queries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(got) == 8 and got == expected


def test_unknown_model_and_unfitting_heads():
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        Reranker("/no/such/model/dir")
    with pytest.raises(ModelNotFoundError, match="downloads are off"):
        Reranker("no-such-org/no-such-model-xyz", local_files_only=True)
    with pytest.raises(HeadListMismatchError, match="SmolLM2"):
        Reranker(heads=[(29, 12)])
    with pytest.raises(HeadListMismatchError, match="phi-4"):
        from core_rerank.heads import find_bundled_head_list

        Reranker(heads=find_bundled_head_list("microsoft/phi-4"))


def test_cuda_request_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceUnavailableError, match="CUDA"):
        Reranker(device="cuda")


def test_every_prompt_fits_max_tokens_with_many_short_documents(fp32_shallow, monkeypatch):
    """Labels grow with the position ("[1] " .. "[150] ") and merges differ in place: the engine measures
    every built prompt, so no forward pass ever exceeds max_tokens."""
    import core_rerank.reranker as reranker_module

    rr = Reranker(heads=SHALLOW_HEADS, dtype="float32", max_tokens=400, max_doc_tokens=32)
    lengths: list[int] = []
    real = reranker_module.head_signals_many

    def measured(model, heads_by_layer, queries, null, *args, **kwargs):
        lengths.append(max(len(p.ids) for p in (*queries, null)))
        return real(model, heads_by_layer, queries, null, *args, **kwargs)

    monkeypatch.setattr(reranker_module, "head_signals_many", measured)
    docs = [f"fact {i}" for i in range(150)]  # ~3 tokens each: the labels cost more than the text
    results = rr.rank("which fact is number 42?", docs)
    assert sorted(results.indices) == list(range(150)) and results.num_windows == len(lengths) > 1
    assert max(lengths) <= 400, lengths
    assert min(lengths) > 200  # and windows are not wastefully small


def test_default_prompt_budget_is_capped_and_can_be_raised(default_rr):
    from core_rerank.settings import DEFAULT_MAX_TOKENS

    assert default_rr.loaded_model.shape.context_length == 8192 == DEFAULT_MAX_TOKENS
    assert default_rr.max_tokens == DEFAULT_MAX_TOKENS
    assert Reranker(max_tokens=2048).max_tokens == 2048
    assert Reranker(max_tokens=1_000_000).max_tokens == 8192  # never past the model's context


def test_attention_signals_refuse_a_prompt_over_max_tokens():
    from core_rerank.errors import ContextLengthError

    rr = Reranker(heads=SHALLOW_HEADS, dtype="float32", max_tokens=300, max_doc_tokens=64)
    with pytest.raises(ContextLengthError, match="over max_tokens=300"):
        rr.attention_signals("which fruit?", SANITY_DOCS * 3)
    with pytest.raises(ContextLengthError, match="shorten the query"):
        rr.rank("why " * 250, SANITY_DOCS[:2])


def test_results_with_empty_documents_are_valid_json(default_rr):
    import json

    results = default_rr.rank("which fruit is high in potassium?", ["", SANITY_DOCS[1], " \n "])
    text = json.dumps(results.to_dicts(), allow_nan=False)  # raises on -inf / NaN
    rows = json.loads(text)
    assert rows[0]["corpus_id"] == 1 and rows[1]["score"] is None and rows[2]["score"] is None
    assert results[1].score == -math.inf  # in Python the raw score stays -inf: it sorts last


def test_long_calls_show_progress(capsys):
    rr = Reranker(heads=SHALLOW_HEADS, dtype="float32", max_tokens=300, max_doc_tokens=64)
    rr.rank("which fruit?", SANITY_DOCS * 4)  # 32 documents in windows of 300 tokens: several passes
    assert "scoring windows" in capsys.readouterr().err
    rr.rank("which fruit?", SANITY_DOCS * 4, show_progress_bar=False)
    assert "scoring windows" not in capsys.readouterr().err
    rr.rank("which fruit?", SANITY_DOCS[:2])  # one window: no bar
    assert "scoring windows" not in capsys.readouterr().err


def test_dtype_is_chosen_per_device(monkeypatch):
    import torch

    from core_rerank import loading

    assert loading.resolve_dtype("float16", "cpu") is torch.float16  # the caller's choice always wins
    monkeypatch.setattr(loading, "cpu_has_native_bfloat16", lambda: True)
    assert loading.resolve_dtype(None, "cpu") is torch.bfloat16
    monkeypatch.setattr(loading, "cpu_has_native_bfloat16", lambda: False)
    assert loading.resolve_dtype(None, "cpu") is torch.float32  # emulated bf16 is slower than fp32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert loading.resolve_dtype(None, "cuda") is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert loading.resolve_dtype(None, "cuda") is torch.bfloat16
    assert loading.resolve_dtype(None, "mps") is torch.float16


def test_the_default_dtype_follows_this_cpu(default_rr):
    import torch

    from core_rerank.loading import cpu_has_native_bfloat16

    assert default_rr.dtype is (torch.bfloat16 if cpu_has_native_bfloat16() else torch.float32)


def test_first_stage_scores_are_fused_with_the_attention(default_rr):
    """rank(first_stage_scores=...): results ordered by z(attention) + w * z(first stage), computed here by
    hand; attention_score keeps the attention alone, identical to a call without them; weight 0 is the
    attention ranking; a first stage that alone would put another document first moves it up; bad scores
    are typed errors; rank_batch takes one list per query."""
    import statistics

    from core_rerank.errors import InvalidInputError, InvalidInputTypeError

    query = SANITY_QUERIES[0][0]
    plain = default_rr.rank(query, SANITY_DOCS)
    bm25 = [float(i) for i in range(len(SANITY_DOCS))]  # favours the last document
    fused = default_rr.rank(query, SANITY_DOCS, first_stage_scores=bm25)
    att = [plain.by_index(i).score for i in range(len(SANITY_DOCS))]

    def z(v):
        m, s = statistics.fmean(v), statistics.pstdev(v)
        return [(x - m) / s for x in v]

    expected = [a + default_rr.fusion_weight * f for a, f in zip(z(att), z(bm25))]
    for r in fused:
        assert r.score == pytest.approx(expected[r.index], abs=1e-9)
        assert r.attention_score == pytest.approx(att[r.index], abs=1e-12)
        assert r.first_stage_score == bm25[r.index] and r.relevance == plain.by_index(r.index).relevance
    assert fused.indices == sorted(range(len(SANITY_DOCS)), key=lambda i: -expected[i])
    assert fused.by_index(len(SANITY_DOCS) - 1).rank < plain.by_index(len(SANITY_DOCS) - 1).rank
    assert all(r.attention_score == r.score and r.first_stage_score is None for r in plain)
    zero = Reranker(fusion_weight=0.0).rank(query, SANITY_DOCS, first_stage_scores=bm25)
    assert zero.indices == plain.indices
    for bad, error in (
        ([1.0], InvalidInputError),
        ([float("nan")] * len(SANITY_DOCS), InvalidInputError),
        (["1"] * len(SANITY_DOCS), InvalidInputTypeError),
        ("1234", InvalidInputTypeError),
    ):
        with pytest.raises(error):
            default_rr.rank(query, SANITY_DOCS, first_stage_scores=bad)
    with pytest.raises(InvalidInputError):
        Reranker(fusion_weight=-1.0)
    batch = default_rr.rank_batch([query, query], SANITY_DOCS, first_stage_scores=[bm25, None])
    assert batch[0].indices == fused.indices and batch[1].indices == plain.indices
    with pytest.raises(InvalidInputError, match="one list of scores per query"):
        default_rr.rank_batch([query], SANITY_DOCS, first_stage_scores=[bm25, bm25])

"""rank_batch over one shared list: the documents' prefix runs once per window, and every query gets the
results rank() gives it (issue 10)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SANITY_DOCS, SCORE_ATOL, TINY_ARCHITECTURES, packaged_or_skip, save_tiny_model, tiny_config

from core_rerank import Reranker
from core_rerank.head_signal import PromptTokens, croppable, head_signals_many, shared_prefix
from core_rerank.heads import RelevanceMap

# Lengths from 2 to ~20 words, a duplicate; "N/A" and "N/A vs N/B" start with the N/A prompt's own tokens, so the
# batch's shared prefix is shorter than their one-query prefix (rank() splits those prompts at another token).
QUERIES = [
    "which fruit is high in potassium?",
    "ATP?",
    "which organelle makes ATP for the cell, and how does the mitochondrion turn sugar and oxygen into chemical "
    "energy that the cell can use?",
    "which fruit is high in potassium?",
    "N/A",
    "N/A vs N/B: what is the tallest mountain?",
]
PLAIN = [q for q in QUERIES if not q.startswith("N/A")]  # queries that split where rank() splits


def assert_batch_equals_rank(rr: Reranker, queries, docs, **kwargs) -> float:
    """``rr.rank_batch(queries, docs)`` gives every query ``rr.rank(query, docs)``: the same order, windows and
    flags, raw scores within SCORE_ATOL; returns the largest score difference."""
    batch = rr.rank_batch(queries, docs, show_progress_bar=False, **kwargs)
    assert len(batch) == len(queries)
    worst = 0.0
    for query, got in zip(queries, batch):
        want = rr.rank(query, docs, **kwargs, show_progress_bar=False)
        assert got.query == want.query and got.num_windows == want.num_windows
        assert got.indices == want.indices, query
        for g, w in zip(got, want):
            assert (g.rank, g.window, g.truncated, g.tokens, g.text) == (
                w.rank,
                w.window,
                w.truncated,
                w.tokens,
                w.text,
            )
            assert g.document is w.document
            if math.isinf(w.score):
                assert g.score == w.score
            else:
                assert g.score == pytest.approx(w.score, abs=SCORE_ATOL), query
                worst = max(worst, abs(g.score - w.score))
            assert g.normalized_score == pytest.approx(w.normalized_score, abs=SCORE_ATOL)
            assert g.relevance == (None if w.relevance is None else pytest.approx(w.relevance, abs=SCORE_ATOL))
    print(f"largest score difference, {len(queries)} queries: {worst:.3g}")
    return worst


class ForwardLog:
    """Counts the forward passes of a model (and the tokens fed to each) through a forward pre-hook."""

    def __init__(self, model: torch.nn.Module):
        self.lengths: list[int] = []
        self._handle = model.register_forward_pre_hook(self._log, with_kwargs=True)

    def _log(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.lengths.append(int(ids.shape[1]))

    def close(self) -> None:
        self._handle.remove()


# ---------------------------------------------------------------------------------------------- default model
def test_default_model_batch_equals_rank(default_rr):
    assert_batch_equals_rank(default_rr, PLAIN, SANITY_DOCS)
    assert_batch_equals_rank(default_rr, PLAIN[:1], SANITY_DOCS)  # one query only
    assert_batch_equals_rank(default_rr, PLAIN, SANITY_DOCS, top_n=3, min_score=0.0)


@pytest.mark.slow  # a long list in several windows, every query alone and together
def test_default_model_batch_equals_rank_over_windows():
    rr = Reranker(max_tokens=400, max_doc_tokens=64)  # the default model, shared with default_rr
    docs = SANITY_DOCS * 3  # ~900 tokens: three windows of 400
    assert rr.rank(PLAIN[0], docs).num_windows > 1
    assert_batch_equals_rank(rr, PLAIN, docs)


def test_queries_starting_like_na_split_elsewhere_and_still_match(fp32_shallow):
    """A query whose prompt shares more tokens with the N/A prompt than the others do: rank() runs those
    tokens in its prefix pass, rank_batch in the query's suffix pass."""
    assert assert_batch_equals_rank(fp32_shallow, QUERIES, SANITY_DOCS) < SCORE_ATOL


# -------------------------------------------------------------------------------------- tiny architectures
@pytest.fixture(scope="module", params=TINY_ARCHITECTURES)
def tiny_rr(request, tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp(f"tiny-{request.param}"), tiny_config(request.param))
    return Reranker(str(path), heads=[(1, 0), (2, 3), (3, 1)], dtype="float32", max_tokens=400, max_doc_tokens=64)


def test_tiny_architectures_batch_equals_rank(tiny_rr):
    assert_batch_equals_rank(tiny_rr, QUERIES, SANITY_DOCS)  # one window
    docs = SANITY_DOCS * 3
    assert tiny_rr.rank(QUERIES[0], docs).num_windows > 1
    assert_batch_equals_rank(tiny_rr, QUERIES, docs)  # several windows
    assert_batch_equals_rank(tiny_rr, QUERIES[:1], docs)  # one query only


def test_tiny_architectures_copy_and_crop_agree(tiny_rr):
    """Each suffix starts from the prefix cache either by a deep copy or by cropping the suffix off again
    afterwards: the same numbers, and crop is refused where it cannot restore the cache (sliding windows)."""
    windows = [tiny_rr.prompt(q, SANITY_DOCS) for q in QUERIES]
    args = (
        tiny_rr.loaded_model.model,
        tiny_rr.head_list.heads_by_layer,
        [PromptTokens(w.ids_query, w.query_rows) for w in windows],
        PromptTokens(windows[0].ids_null, windows[0].null_rows),
        max(b for _, b in windows[0].doc_spans),
    )
    copied = head_signals_many(*args, cache_reuse="copy")
    sliding = tiny_rr.loaded_model.model.config.model_type == "gemma3_text"
    if sliding:
        with pytest.raises(ValueError, match="cannot be cropped"):
            head_signals_many(*args, cache_reuse="crop")
        return
    cropped = head_signals_many(*args, cache_reuse="crop")
    for a, b in zip(copied, cropped):
        assert torch.equal(a.query, b.query) and torch.equal(a.null, b.null)


def test_only_plain_full_attention_caches_are_cropped(tiny_rr):
    from transformers import DynamicCache

    config = tiny_rr.loaded_model.model.config
    assert croppable(DynamicCache(config=config)) == (config.model_type != "gemma3_text")


@pytest.mark.models
def test_real_gemma3_batch_equals_rank():
    """Gemma 3's real weights: layers 0-4 keep a 512-token sliding window, so the prefix cache (longer than the
    window) cannot be cropped back: each suffix runs on a deep copy, and the scores still equal rank()'s."""
    from transformers import DynamicCache

    packaged_or_skip("gemma-3-270m")
    rr = Reranker("gemma-3-270m", heads=[(2, 0), (2, 3), (5, 1)], dtype="float32")
    docs = [d + " " + " ".join(["Filler sentence about nothing in particular."] * 20) for d in SANITY_DOCS[:6]]
    assert rr.prompt(QUERIES[0], docs).query_rows[0] > 512  # the queries sit beyond the sliding window
    assert not croppable(DynamicCache(config=rr.loaded_model.model.config))
    assert_batch_equals_rank(rr, QUERIES, docs)


# ------------------------------------------------------------------------------------- the prefix runs once
@pytest.mark.slow  # counts every forward pass of a long list
def test_each_window_runs_its_prefix_and_na_suffix_once():
    """For n queries over w windows: w prefix passes, w N/A passes and n*w query passes (the engine used to
    run n*w prefixes). Passes come in the order prefix, N/A, the queries, per window."""
    rr = Reranker(max_tokens=400, max_doc_tokens=64)
    docs = SANITY_DOCS * 3
    queries = PLAIN[:2] + PLAIN[3:]  # different lengths, a duplicate; one plan for all of them
    plans = {tuple(r.window for r in sorted(rr.rank(q, docs), key=lambda r: r.index)) for q in queries}
    assert len(plans) == 1
    n, w = len(queries), rr.rank(queries[0], docs).num_windows
    assert w > 1
    log = ForwardLog(rr.loaded_model.model)
    try:
        rr.rank_batch(queries, docs, show_progress_bar=False)
    finally:
        log.close()
    assert len(log.lengths) == w * (1 + 1 + n) == w + w + n * w
    per_window = [log.lengths[i : i + n + 2] for i in range(0, len(log.lengths), n + 2)]
    for prefix, *suffixes in per_window:
        assert prefix > 200 and max(suffixes) < 60, (prefix, suffixes)  # the documents run in the prefix only


def test_single_query_runs_one_prefix_and_two_suffixes(default_rr):
    log = ForwardLog(default_rr.loaded_model.model)
    try:
        default_rr.rank(PLAIN[0], SANITY_DOCS)
    finally:
        log.close()
    assert len(log.lengths) == 3 and log.lengths[0] > 200 and max(log.lengths[1:]) < 60


@pytest.mark.slow  # counts every forward pass of a long list
def test_queries_whose_windows_differ_get_their_own_passes():
    """A query long enough to need one more window than the others is planned as rank() plans it, and scored
    in passes of its own, so it still gets exactly rank()'s results."""
    rr = Reranker(max_tokens=400, max_doc_tokens=64)
    docs = SANITY_DOCS * 2
    short, long = "ATP?", "which organelle makes ATP for the cell? " * 14
    assert rr.rank(long, docs).num_windows > rr.rank(short, docs).num_windows
    assert_batch_equals_rank(rr, [short, long, short], docs)


def test_shared_prefix_is_read_from_token_ids_not_text(default_rr):
    """Every prompt's text continues "Query: " but the space merges into the query's first token, so the
    shared prefix ends at "Query:"; a prefix taken from the text would hold a token no prompt has."""
    tok = default_rr.loaded_model.tokenizer
    windows = [default_rr.prompt(q, SANITY_DOCS[:2]) for q in ("how do I copy files?", "what is ATP?")]
    null = PromptTokens(windows[0].ids_null, windows[0].null_rows)
    prompts = [null, *(PromptTokens(w.ids_query, w.query_rows) for w in windows)]
    n = shared_prefix(prompts)
    assert tok.decode(prompts[0].ids[:n]).endswith("Query:")
    assert all(p.ids[:n] == prompts[0].ids[:n] for p in prompts)
    assert len({p.ids[n] for p in prompts}) == 3  # " N", " how", " what": the first differing token


def test_shared_prefix_rules():
    def p(ids, rows):
        return PromptTokens(ids, rows)

    assert shared_prefix([p([1, 2, 3, 4], (2, 4)), p([1, 2, 5, 4], (2, 4))]) == 2
    assert shared_prefix([p([1, 2, 3], (1, 3)), p([1, 2, 3], (1, 3))]) == 2  # each prompt keeps its last token
    assert shared_prefix([p([1, 2, 3, 4, 5], (3, 5)), p([1, 2, 3, 4, 6], (2, 5))]) == 2  # spans start apart
    assert shared_prefix([p([1, 2, 3, 4, 5, 6], (1, 3)), p([1, 2, 3, 4, 5, 7], (1, 5))]) == 3  # a span ends early


# ---------------------------------------------------------------------------------------- the rank contract
def test_empty_lists_and_empty_documents(default_rr):
    assert [list(r) for r in default_rr.rank_batch(PLAIN[:2], [], show_progress_bar=False)] == [[], []]
    assert default_rr.rank_batch([], SANITY_DOCS) == []
    docs = ["", SANITY_DOCS[1], "   \n", SANITY_DOCS[0]]
    assert_batch_equals_rank(default_rr, PLAIN[:2], docs)
    assert_batch_equals_rank(default_rr, PLAIN[:2], ["", " "])  # nothing to score: every document -inf


def test_dict_documents_and_min_score(default_rr):
    docs = [{"title": "Everest", "text": SANITY_DOCS[5]}, {"text": SANITY_DOCS[1]}, SANITY_DOCS[3]]
    assert_batch_equals_rank(default_rr, PLAIN[:2], docs, top_n=2)
    kept = default_rr.rank_batch(PLAIN[:1], docs, min_score=0.0, show_progress_bar=False)
    assert kept[0].indices == default_rr.rank(PLAIN[0], docs, min_score=0.0).indices


def test_calibrated_relevance_is_the_one_rank_gives(default_rr):
    import dataclasses

    fit = RelevanceMap(8.0, -1.0, {"max_doc_tokens": 200, "order": "reverse"})
    heads = dataclasses.replace(default_rr.head_list, relevance_map=fit)
    rr = Reranker(heads=heads)  # the default model, with a fitted relevance map
    assert rr.calibrated
    batch = rr.rank_batch(PLAIN[:2], SANITY_DOCS[:4], show_progress_bar=False)
    assert all(r.relevance is not None for results in batch for r in results)
    assert_batch_equals_rank(rr, PLAIN[:2], SANITY_DOCS[:4])


def test_bad_input_is_refused_before_any_model_work(default_rr):
    log = ForwardLog(default_rr.loaded_model.model)
    try:
        with pytest.raises(ValueError, match="query is empty"):
            default_rr.rank_batch([PLAIN[0], "  "], SANITY_DOCS)
        with pytest.raises(TypeError, match="query must be a string"):
            default_rr.rank_batch([PLAIN[0], None], SANITY_DOCS)
        with pytest.raises(ValueError, match="top_n"):
            default_rr.rank_batch([PLAIN[0]], SANITY_DOCS, top_n=0)
    finally:
        log.close()
    assert log.lengths == []


def test_progress_bar(default_rr, capsys):
    default_rr.rank_batch(PLAIN[:2], SANITY_DOCS[:3])  # several queries: a bar by default
    assert "re-ranking" in capsys.readouterr().err
    default_rr.rank_batch(PLAIN[:2], SANITY_DOCS[:3], show_progress_bar=False)
    default_rr.rank_batch(PLAIN[:1], SANITY_DOCS[:3])  # one query: none
    assert "re-ranking" not in capsys.readouterr().err


def test_per_query_lists_keep_their_own_path(default_rr):
    lists = [SANITY_DOCS[:4], SANITY_DOCS]
    got = default_rr.rank_batch(PLAIN[:2], lists, show_progress_bar=False)
    for query, docs, r in zip(PLAIN[:2], lists, got):
        assert r.indices == default_rr.rank(query, docs).indices

"""Block attention: documents encoded on their own, scores independent of the input order, the document KV cache."""

from __future__ import annotations

import random
import threading

import pytest
import torch
from conftest import SANITY_DOCS, SANITY_QUERIES, TINY_ARCHITECTURES, assert_signals_match_eager, tiny_config

from core_rerank import Reranker
from core_rerank.block import BlockPrompt, supports_blocks
from core_rerank.errors import InvalidInputError, UnsupportedModelError
from core_rerank.kv_cache import DocumentKVCache

QUERY = "which organelle makes ATP for the cell?"
DOCS = SANITY_DOCS[:7]
# Scores of one list under two input orders come from the same keys summed in another order (the softmax's
# denominator, each span's sum): equal to float32 rounding of a probability (~6e-8 per term, a few hundred terms).
ORDER_ATOL = 1e-5


@pytest.fixture(scope="module")
def block_rr(fp32_shallow):
    return fp32_shallow.with_options(attention="block", kv_cache_mb=64)


def test_block_signals_equal_one_masked_eager_pass(fp32_shallow):
    """The KV cache assembled from separately encoded blocks gives the attention of one eager forward pass over
    the whole sequence with the block mask and positions (an independent implementation)."""
    rr = fp32_shallow.with_options(attention="block", kv_cache_mb=0)
    w = assert_signals_match_eager(rr, QUERY, DOCS, atol=1e-5)
    assert isinstance(w.prompt, BlockPrompt) and repr(rr).endswith(", attention=block)")
    assert len(set(w.prompt.starts)) > 1  # the documents differ in length: end alignment moved their starts


@pytest.mark.parametrize("arch", [a for a in TINY_ARCHITECTURES if a != "gemma3"])
def test_block_signals_equal_eager_on_every_architecture(arch, tmp_path):
    from conftest import save_tiny_model

    save_tiny_model(tmp_path, tiny_config(arch))
    rr = Reranker(str(tmp_path), heads="all", dtype="float32", attention="block", kv_cache_mb=0)
    assert_signals_match_eager(rr, QUERY, DOCS[:4], atol=1e-5)


def test_sliding_window_models_are_refused_with_a_reason(tmp_path):
    from conftest import save_tiny_model

    assert not supports_blocks(tiny_config("gemma3"))
    assert supports_blocks(tiny_config("llama"))
    save_tiny_model(tmp_path, tiny_config("gemma3"))
    rr = Reranker(str(tmp_path), heads=[(3, 0)], dtype="float32")
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        rr.with_options(attention="block")


def test_scores_do_not_depend_on_the_input_order(block_rr):
    base = block_rr.score(QUERY, DOCS)
    for seed in range(3):
        perm = list(range(len(DOCS)))
        random.Random(seed).shuffle(perm)
        got = block_rr.score(QUERY, [DOCS[i] for i in perm])
        for j, i in enumerate(perm):
            assert got[j] == pytest.approx(base[i], abs=ORDER_ATOL)
    # order= only places documents in the full prompt
    assert block_rr.with_options(order="given").score(QUERY, DOCS) == pytest.approx(base, abs=ORDER_ATOL)
    assert len(set(round(s, 6) for s in base)) == len(base)  # real, distinct scores


def test_an_identical_document_gets_one_score_wherever_it_sits(block_rr):
    docs = [DOCS[6], *DOCS[:3], DOCS[6], DOCS[3]]
    scores = block_rr.score(QUERY, docs)
    # One cached entry serves both, but their keys sit at different columns of the query's matmul, which another
    # CPU may block differently: equal to float32 rounding, not bit for bit.
    assert scores[0] == pytest.approx(scores[4], abs=ORDER_ATOL)
    assert abs(scores[0] - scores[1]) > 100 * ORDER_ATOL  # and not because every score is the same


def test_the_default_heads_in_block_mode_find_each_sanity_answer(default_rr):
    rr = default_rr.with_options(attention="block")
    for query, relevant in SANITY_QUERIES:
        assert rr.rank(query, SANITY_DOCS)[0].index == relevant, query


def test_the_kv_cache_serves_repeat_documents_with_the_same_scores(fp32_shallow):
    rr = fp32_shallow.with_options(attention="block", kv_cache_mb=64)
    cache = rr.loaded_model.kv_cache
    cache.clear()
    uncached = fp32_shallow.with_options(attention="block", kv_cache_mb=0)
    before = cache.stats()
    first = rr.score(QUERY, DOCS[:5])
    mid = cache.stats()
    assert (mid.misses - before.misses, mid.hits - before.hits, mid.entries) == (5, 0, 5)
    # Two cached, two new: only the new ones are encoded, and every score is the one computed from scratch.
    second = rr.score(QUERY, [DOCS[1], DOCS[5], DOCS[3], DOCS[6]])
    after = cache.stats()
    assert (after.hits - mid.hits, after.misses - mid.misses) == (2, 2)
    fresh = uncached.score(QUERY, [DOCS[1], DOCS[5], DOCS[3], DOCS[6]])
    assert second == pytest.approx(fresh, abs=ORDER_ATOL)
    assert cache.stats().hits == after.hits  # kv_cache_mb=0 neither reads nor writes
    assert first[1] != second[0]  # another list: another softmax denominator, so not trivially equal


def test_windows_in_block_mode_score_every_document_once(fp32_shallow):
    rr = fp32_shallow.with_options(attention="block", max_tokens=400, max_doc_tokens=64)
    docs = SANITY_DOCS * 2
    ranked = rr.rank(QUERY, docs)
    assert ranked.num_windows > 1 and sorted(ranked.indices) == list(range(len(docs)))
    for w in rr.plan(QUERY, rr.prepare(docs)):
        assert w.prompt.length <= 400
    # Windows are dealt by text, not input position: a shuffled long list gets the same scores too.
    perm = list(range(len(docs)))
    random.Random(7).shuffle(perm)
    base, got = rr.score(QUERY, docs), rr.score(QUERY, [docs[i] for i in perm])
    for j, i in enumerate(perm):
        assert got[j] == pytest.approx(base[i], abs=ORDER_ATOL)


def test_rank_batch_over_one_list_equals_rank_per_query(block_rr):
    queries = [QUERY, "how do plants make sugar?", "when did the French Revolution start?"]
    batch = block_rr.rank_batch(queries, DOCS)
    for q, got in zip(queries, batch):
        alone = block_rr.rank(q, DOCS)
        assert got.indices == alone.indices
        assert [r.score for r in got] == pytest.approx([r.score for r in alone], abs=1e-4)


def test_concurrent_callers_share_the_cache_and_get_their_own_scores(fp32_shallow):
    rr = fp32_shallow.with_options(attention="block", kv_cache_mb=64)
    lists = [DOCS[:4], DOCS[2:6], DOCS[3:], DOCS[::2]]
    want = [fp32_shallow.with_options(attention="block", kv_cache_mb=0).score(QUERY, d) for d in lists]
    got: dict[int, list[float]] = {}

    def work(i: int) -> None:
        got[i] = rr.score(QUERY, lists[i % 4])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(got) == 8
    for i, scores in got.items():
        assert scores == pytest.approx(want[i % 4], abs=ORDER_ATOL)


def test_settings_are_checked():
    from core_rerank import EngineSettings

    with pytest.raises(InvalidInputError, match="attention must be 'full' or 'block'"):
        EngineSettings(attention="blocks")
    with pytest.raises(InvalidInputError, match="kv_cache_mb"):
        EngineSettings(kv_cache_mb=-1)
    assert EngineSettings(attention="block", kv_cache_mb=0).kv_cache_mb == 0


def _kv(tokens: int) -> tuple:
    t = torch.zeros(2, tokens, 8)  # 2 heads x tokens x 8 dims, float32: 64 bytes a token for k, 64 for v
    return ((t, t.clone()),)


def test_the_lru_stays_within_its_bound_and_drops_the_oldest():
    cache = DocumentKVCache()
    cache.reserve(10 * 128 * 4)  # four entries of 10 tokens
    for key in "abcd":
        cache.put(key, _kv(10))
    assert cache.get("a") is not None  # a is now the most recent: b goes first
    cache.put("e", _kv(10))
    assert cache.get("b") is None and cache.get("a") is not None
    s = cache.stats()
    assert (s.entries, s.evictions, s.bytes) == (4, 1, 4 * 1280) and s.bytes <= s.capacity_bytes
    cache.put("huge", _kv(100))  # larger than the whole cache: not kept, nothing evicted for it
    assert cache.get("huge") is None and cache.stats().entries == 4
    cache.reserve(10)  # a smaller request never shrinks it
    assert cache.stats().capacity_bytes == 10 * 128 * 4
    assert (s.hits, s.misses) == (2, 1) and s.hit_rate == pytest.approx(2 / 3)


def test_a_block_prompt_cannot_run_with_other_documents(block_rr):
    a, b = block_rr.prompt(QUERY, DOCS[:2]), block_rr.prompt(QUERY, DOCS[1:3])
    with pytest.raises(InvalidInputError, match="same documents"):
        block_rr.signals([a, b])


def test_only_block_rerankers_size_the_cache_and_in_place_weight_changes_invalidate_it(tmp_path):
    """A full-mode reranker asks for no cache; a model shared through from_model and changed in place (a training
    step) never serves keys and values computed with its old weights."""
    from conftest import save_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    save_tiny_model(tmp_path, tiny_config("llama"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    with torch.no_grad():  # sharpen attention so heads differ visibly (as the architecture tests do)
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(8)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    full = Reranker.from_model(model, tok, heads=[(1, 0), (2, 3)])
    assert full.loaded_model.kv_cache.stats().capacity_bytes == 0
    rr = full.with_options(attention="block", kv_cache_mb=8)
    assert rr.loaded_model.kv_cache.stats().capacity_bytes == 8 * 2**20
    before = rr.score(QUERY, DOCS[:4])
    assert rr.score(QUERY, DOCS[:4]) == pytest.approx(before, abs=ORDER_ATOL)  # served from the cache
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight.mul_(3.0)
    after = rr.score(QUERY, DOCS[:4])
    fresh = Reranker.from_model(model, tok, heads=[(1, 0), (2, 3)], attention="block", kv_cache_mb=0)
    assert after == pytest.approx(fresh.score(QUERY, DOCS[:4]), abs=ORDER_ATOL)
    assert max(abs(a - b) for a, b in zip(after, before)) > 100 * ORDER_ATOL  # the new weights', not old entries


def test_each_mode_reads_its_own_relevance_map_at_the_documents_length_and_window_size(fp32_shallow):
    import copy
    import dataclasses

    from core_rerank.heads import RelevanceMap
    from core_rerank.scoring import relevance

    fit = {"max_doc_tokens": 200, "order": "reverse"}
    block_map = RelevanceMap(5.0, 1.0, fit, length=-0.5, list_size=-0.3, score_list_size=0.2, n_range=(2, 40))
    heads = dataclasses.replace(fp32_shallow.head_list, relevance_map=None, block_relevance_map=block_map)
    full = copy.copy(fp32_shallow)  # a handle of its own on the shared model: the fixture keeps its list
    full.head_list = heads
    assert not full.calibrated  # a map fitted in block mode says nothing of the full prompt's scores
    block = full.with_options(attention="block", max_tokens=400, max_doc_tokens=64)
    block.head_list = heads
    assert block.calibrated
    docs = SANITY_DOCS * 3  # 400 tokens hold some of them: several windows of different sizes
    results = block.rank(SANITY_QUERIES[0][0], docs)
    sizes = {w: sum(r.window == w for r in results) for w in {r.window for r in results}}
    assert len(sizes) > 1
    for r in results:
        assert r.relevance == pytest.approx(relevance(r.attention_score, *block_map.terms(r.tokens, sizes[r.window])))

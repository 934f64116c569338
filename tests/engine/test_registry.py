"""Shared rerankers: any settings (head lists included) are keys, loads do not block each other, and
clear_cache() really frees the models."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
from conftest import SANITY_DOCS, SHALLOW_HEADS

import core_rerank
from core_rerank import HeadList, Reranker, shared_reranker
from core_rerank.heads import find_bundled_head_list

ONLY_HERE = [(2, 5), (1, 3)]


def test_a_head_list_object_is_a_valid_setting(default_rr):
    bundled = find_bundled_head_list(default_rr.model_id)
    a = shared_reranker(heads=bundled)
    assert a is shared_reranker(heads=bundled)
    assert a.head_list == bundled and a.loaded_model is default_rr.loaded_model
    custom, equal = (HeadList.from_pairs(SHALLOW_HEADS, default_rr.model_id, 30, 9, 3) for _ in range(2))
    assert custom is not equal and shared_reranker(heads=custom) is shared_reranker(heads=equal)


def test_a_slow_load_does_not_block_other_rerankers(default_rr, monkeypatch):
    import core_rerank.reranker as reranker_module

    ready = shared_reranker()  # loaded before the slow one starts
    entered, release = threading.Event(), threading.Event()
    real_build = reranker_module.Reranker.from_settings.__func__

    def slow_build(cls, settings):
        if settings.max_doc_tokens == 77:
            entered.set()
            assert release.wait(120), "never released"
        return real_build(cls, settings)

    monkeypatch.setattr(reranker_module.Reranker, "from_settings", classmethod(slow_build))
    slow = threading.Thread(target=shared_reranker, kwargs={"max_doc_tokens": 77})
    slow.start()
    try:
        assert entered.wait(120)
        got = []
        other = threading.Thread(target=lambda: got.append(shared_reranker().rank("which fruit?", SANITY_DOCS[:2])))
        other.start()
        other.join(120)  # a bound on a deadlock, not a speed check
        assert not other.is_alive() and got and got[0] is not None  # served while the slow load is still running
        assert not release.is_set()
    finally:
        release.set()
        slow.join(120)
    assert shared_reranker(max_doc_tokens=77).max_doc_tokens == 77
    assert ready is shared_reranker()


def test_clear_cache_frees_the_models():
    # A 3-layer float32 model: loaded models are keyed by depth and dtype, and no other test uses this pair.
    rr = shared_reranker(heads=ONLY_HERE, dtype="float32")
    model = weakref.ref(rr.loaded_model.model)
    assert rr.rank("which fruit?", SANITY_DOCS[:2])
    held = core_rerank.clear_cache()
    assert held >= 1
    assert model() is not None  # still held by `rr`: a reranker you keep stays usable
    assert rr.rank("which fruit?", SANITY_DOCS[:2])
    # While it is alive, new rerankers with its settings share it: never a second copy in memory.
    assert Reranker(heads=ONLY_HERE, dtype="float32").loaded_model is rr.loaded_model
    core_rerank.clear_cache()  # that reranker put the model back in the cache: let go of it again
    del rr
    gc.collect()
    assert model() is None  # nothing in core-rerank kept it alive
    again = shared_reranker(heads=ONLY_HERE, dtype="float32")
    assert again.rank("which fruit?", SANITY_DOCS[:2])


@pytest.fixture(autouse=True, scope="module")
def _reload_shared_models_after():
    yield
    core_rerank.clear_cache()  # leave no half-shared state to later modules

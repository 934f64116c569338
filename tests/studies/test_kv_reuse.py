"""The KV-cache replay of ``studies.kv_reuse``: an LRU over a query stream, counted by hand."""

from __future__ import annotations

from studies.kv_reuse import replay


def test_replay_counts_hits_of_an_lru_bounded_in_bytes():
    work = [("q1", ["a", "b", "c"]), ("q2", ["a", "d"]), ("q3", ["b", "a", "a"])]
    size = {d: 10 for d in "abcd"}
    # Unbounded: a (q2), b and a (q3) hit; the second "a" of q3 is one document, looked up once.
    assert replay(work, size, 10**9) == {"hit_rate": round(3 / 7, 4), "lookups": 7}
    # Room for three: q2 hits a, misses d (evicting b, the least recent); q3 misses b (evicting c), hits a.
    assert replay(work, size, 30) == {"hit_rate": round(2 / 7, 4), "lookups": 7}
    # Room for two: every look-up misses (each document was evicted before it came back).
    assert replay(work, size, 20) == {"hit_rate": 0.0, "lookups": 7}
    # A document larger than the cache is never kept.
    assert replay([("q", ["a"]), ("r", ["a"])], {"a": 50}, 20) == {"hit_rate": 0.0, "lookups": 2}

"""The document KV cache of block attention: each document's keys and values, kept across calls.

In ``attention="block"`` a document's keys and values depend only on the model, the shared prompt prefix, the
document's own tokens and the positions it is encoded at (:mod:`core_rerank.block`), never on the rest of the list,
so a document seen before costs nothing to encode again. One cache lives on each loaded model
(:class:`~core_rerank.loading.LoadedModel`), so every reranker, wrapper, server route and batch job on that model
shares it; the model (and so its truncation depth, dtype, device and quantization) is part of the key by
construction.

Bounded in bytes (least recently used entries go first). Its capacity is the largest ``kv_cache_mb`` of the
rerankers on the model; a reranker with ``kv_cache_mb=0`` neither reads nor writes it. Entries are tensors the
cache owns (cloned out of the batch that made them) and are never changed in place, so a reader holds a valid entry
even if it is evicted meanwhile.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

__all__ = ["DocumentKV", "DocumentKVCache", "KVCacheStats"]

DocumentKV = tuple[tuple[torch.Tensor, torch.Tensor], ...]
"""One document's (keys, values) per layer, each (kv heads, tokens, head dim)."""


@dataclass(frozen=True)
class KVCacheStats:
    """Counters of one document KV cache: look-ups that found an entry (``hits``) or not (``misses``), entries
    dropped to stay in bounds (``evictions``), what it holds now (``entries``, ``bytes``) and may hold
    (``capacity_bytes``)."""

    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    capacity_bytes: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hit_rate, 6),
            "evictions": self.evictions,
            "entries": self.entries,
            "bytes": self.bytes,
            "capacity_bytes": self.capacity_bytes,
        }


def _nbytes(kv: DocumentKV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


class DocumentKVCache:
    """A thread-safe LRU of :data:`DocumentKV` entries bounded in bytes."""

    def __init__(self, capacity_bytes: int = 0) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[DocumentKV, int]] = OrderedDict()
        self._capacity = capacity_bytes
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0
        self._prefixes: dict[Hashable, DocumentKV] = {}

    def reserve(self, capacity_bytes: int) -> None:
        """Grow the capacity to at least ``capacity_bytes`` (a reranker asking for ``kv_cache_mb``)."""
        with self._lock:
            self._capacity = max(self._capacity, capacity_bytes)

    def get(self, key: Hashable) -> DocumentKV | None:
        """The entry for ``key`` (made the most recently used), or None; counted as a hit or a miss."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return found[0]

    def put(self, key: Hashable, kv: DocumentKV) -> None:
        """Keep ``kv`` under ``key``, evicting the least recently used entries to stay within the capacity; an
        entry larger than the whole capacity is not kept."""
        size = _nbytes(kv)
        with self._lock:
            if size > self._capacity:
                return
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            while self._entries and self._bytes + size > self._capacity:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
                self._evictions += 1
            self._entries[key] = (kv, size)
            self._bytes += size

    def prefix(self, key: Hashable, make: Callable[[], DocumentKV]) -> DocumentKV:
        """The shared prompt prefix's entry for ``key``, made once with ``make``: a model has one or two prefixes
        (a megabyte or so each), kept outside the bound and the counters."""
        with self._lock:
            found = self._prefixes.get(key)
        if found is None:
            found = make()
            with self._lock:
                found = self._prefixes.setdefault(key, found)
        return found

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        with self._lock:
            self._entries.clear()
            self._prefixes.clear()
            self._bytes = 0

    def stats(self) -> KVCacheStats:
        with self._lock:
            return KVCacheStats(
                self._hits, self._misses, self._evictions, len(self._entries), self._bytes, self._capacity
            )

"""How often a RAG workload sends the same documents again, and what the document KV cache makes of it.

    python -m studies.kv_reuse [--sets ...] [--capacities 256 1024 4096] [--measure SET --queries 30]
                               [--out benchmarks/results/kv_reuse.json]

Workload: every test query of a shared set, in the set's own order, re-ranking its first stage's top 20
(``studies.protocol``'s pools), as a service answering that set's users would see them. Part 1 (no model: the
tokenizer only) replays it through an LRU of the engine's entry sizes (each document's tokens after the
``max_doc_tokens`` cut, plus the separator, times the default model's bytes of keys and values per token in float32)
at each capacity, and reports the hit rate. Part 2 (``--measure``) runs the first ``--queries`` queries of one set
through ``Reranker(attention="block")`` with the cache at the shipped ``kv_cache_mb`` and with it off, interleaved
per query, and reports the measured hit rate and the time ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import OrderedDict
from pathlib import Path

from core_rerank.research.datasets import first_stage, load_dataset

from . import DATA, ROOT
from .doc_budget import cpu_features, cpu_name
from .protocol import DEPTH, TEST_SETS


def workload(ds) -> list[tuple[str, list[str]]]:
    """(query id, its top-DEPTH doc ids) in the set's query order."""
    cands, _ = first_stage(ds)
    out = []
    for q in ds.query_ids:
        c = cands.get(q)
        ids = [d for d in (c.doc_ids if c else []) if d in ds.corpus][:DEPTH]
        if ids:
            out.append((q, ids))
    return out


def replay(work, size_of: dict[str, int], capacity: int) -> dict:
    """Hit rate of an LRU of ``capacity`` bytes over the workload (``size_of``: bytes of each document's entry)."""
    lru: OrderedDict[str, int] = OrderedDict()
    used = hits = total = 0
    for _, ids in work:
        for d in dict.fromkeys(ids):
            total += 1
            if d in lru:
                hits += 1
                lru.move_to_end(d)
                continue
            size = size_of[d]
            if size > capacity:
                continue
            while lru and used + size > capacity:
                used -= lru.popitem(last=False)[1]
            lru[d] = size
            used += size
    return {"hit_rate": round(hits / max(total, 1), 4), "lookups": total}


def bytes_per_token(rr) -> int:
    m = rr.loaded_model.model.config
    head_dim = getattr(m, "head_dim", None) or m.hidden_size // m.num_attention_heads
    kv_heads = getattr(m, "num_key_value_heads", None) or m.num_attention_heads
    return rr.loaded_model.layers_loaded * 2 * kv_heads * head_dim * 4


def measure(rr, ds, work, queries: int) -> dict:
    cached, plain = rr.with_options(attention="block"), rr.with_options(attention="block", kv_cache_mb=0)
    cache = cached.loaded_model.kv_cache
    cache.clear()
    before = cache.stats()
    seconds = {"cached": [], "uncached": []}
    for k, (q, ids) in enumerate(work[:queries]):
        texts = [ds.doc_text(d) for d in ids]
        for name in ("cached", "uncached") if k % 2 == 0 else ("uncached", "cached"):
            t0 = time.perf_counter()
            (cached if name == "cached" else plain).score(ds.queries[q], texts)
            seconds[name].append(time.perf_counter() - t0)
    after = cache.stats()
    hits, misses = after.hits - before.hits, after.misses - before.misses
    return {
        "set": ds.name,
        "queries": len(seconds["cached"]),
        "hit_rate": round(hits / max(hits + misses, 1), 4),
        "seconds_per_query": {n: round(statistics.mean(s), 3) for n, s in seconds.items()},
        "time_cached_over_uncached": round(sum(seconds["cached"]) / sum(seconds["uncached"]), 3),
        "cache": after.to_dict(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--sets", nargs="+", default=TEST_SETS)
    ap.add_argument("--capacities", type=int, nargs="+", default=[256, 1024, 4096], help="MB")
    ap.add_argument("--measure", default=None, help="a set to run through the engine (part 2)")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kv_reuse.json")
    args = ap.parse_args()

    from core_rerank import Reranker

    rr = Reranker(dtype="float32", max_documents=None)
    per_token = bytes_per_token(rr)
    report: dict = {
        "study": "studies.kv_reuse",
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "first_stage": f"top {DEPTH}",
        "bytes_per_token_float32": per_token,
        "replay": {},
    }
    for name in args.sets:
        ds = load_dataset(args.data / name, "test")
        work = workload(ds)
        docs = sorted({d for _, ids in work for d in ids})
        prepared = rr.prepare([ds.doc_text(d) for d in docs])
        size_of = {d: (p.tokens + len(rr.block_layout.separator)) * per_token for d, p in zip(docs, prepared)}
        row = {"queries": len(work), "distinct_documents": len(docs)}
        row["repeat_share"] = round(1 - len(docs) / max(sum(len(set(i)) for _, i in work), 1), 4)
        for mb in args.capacities:
            row[f"{mb}MB"] = replay(work, size_of, mb * 2**20)
        row["unbounded"] = replay(work, size_of, 2**62)
        report["replay"][name] = row
        print(name, row, flush=True)
    if args.measure:
        ds = load_dataset(args.data / args.measure, "test")
        report["measured"] = measure(rr, ds, workload(ds), args.queries)
        print(report["measured"], flush=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

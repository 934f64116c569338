"""Block attention against the full prompt: time and memory at 20, 50 and 100 documents, float32 and bfloat16.

    python benchmarks/bench_block.py [--docs 20 50 100] [--dtypes float32 bfloat16] [--repeats 2]
                                     [--json benchmarks/results/block.json]

``Reranker.score`` on the embedded default model and its bundled heads at the shipped settings (documents cut to
``max_doc_tokens=200``: SciFact abstracts when ../shared/data is there, else the example documents run together),
three ways on the same loaded model, interleaved in one process (ratios, not seconds, are the result):

- ``full``: ``attention="full"``, today's list-wise prompt (windows past ``max_tokens``);
- ``block``: ``attention="block"`` with the document KV cache off (``kv_cache_mb=0``): every document encoded;
- ``cached``: ``attention="block"`` with every document already in the KV cache (the call after the same list).

Peak extra memory (resident set during the call minus before it) is measured in a fresh subprocess per case, so
one case's allocations do not hide another's. Each row says the CPU and its instruction sets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_engine import QUERY, SHARED, PeakRSS, example_documents  # this directory: run as a script

ROOT = Path(__file__).resolve().parents[1]
CASES = ("full", "block", "cached")


def cpu() -> dict:
    sys.path.insert(0, str(ROOT))
    from studies.doc_budget import cpu_features, cpu_name

    return {"name": cpu_name(), **cpu_features()}


def documents(n: int) -> list[str]:
    """n real documents of 200 tokens or more (the engine cuts them to max_doc_tokens)."""
    texts: list[str] = []
    if SHARED.is_file():
        with open(SHARED, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if len(row["text"].split()) >= 180:
                    texts.append(f"{row['title']}\n{row['text']}")
                if len(texts) == n:
                    return texts
    short = example_documents()
    while len(texts) < n:
        texts.append(" ".join(short[len(texts) % len(short) :] + short))
    return texts


def rerankers(dtype: str) -> dict:
    from core_rerank import Reranker

    full = Reranker(dtype=dtype)
    return {
        "full": full,
        "block": full.with_options(attention="block", kv_cache_mb=0),
        "cached": full.with_options(attention="block", kv_cache_mb=4096),
    }


def timings(dtype: str, sizes: list[int], repeats: int) -> dict:
    models = rerankers(dtype)
    out = {}
    for n in sizes:
        docs = documents(n)
        tokens = sum(d.tokens for d in models["full"].prepare(docs))
        models["cached"].score(QUERY, docs)  # fills the cache (and warms up)
        seconds = {c: [] for c in CASES}
        for r in range(repeats):
            for case in CASES if r % 2 == 0 else CASES[::-1]:
                t0 = time.perf_counter()
                models[case].score(QUERY, docs)
                seconds[case].append(time.perf_counter() - t0)
        med = {c: statistics.median(s) for c, s in seconds.items()}
        out[str(n)] = {
            "document_tokens": tokens,
            "seconds": {c: round(v, 3) for c, v in med.items()},
            "full_over_block": round(med["full"] / med["block"], 2),
            "cached_over_block": round(med["cached"] / med["block"], 3),
            "cached_over_full": round(med["cached"] / med["full"], 3),
        }
        print(dtype, n, out[str(n)], flush=True)
    return out


def worker(case: str, n: int, dtype: str) -> None:
    models = rerankers(dtype)
    docs = documents(n)
    rr = models[case]
    rr.score(QUERY, docs[:2])  # loads, warms up
    if case == "cached":
        rr.score(QUERY, docs)
    with PeakRSS() as peak:
        rr.score(QUERY, docs)
    print(json.dumps({"extra_mb": round(peak.extra_mb, 1)}))


def memory(dtype: str, sizes: list[int]) -> dict:
    out: dict = {}
    for n in sizes:
        out[str(n)] = {}
        for case in CASES:
            cmd = [sys.executable, __file__, "--worker", case, str(n), dtype]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800)
            out[str(n)][case] = json.loads(done.stdout.strip().splitlines()[-1])["extra_mb"]
        print(dtype, n, "peak extra MB", out[str(n)], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, nargs="+", default=[20, 50, 100])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true", help="skip the per-case memory subprocesses")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "block.json")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.worker[2])
        return
    report: dict = {"benchmark": "bench_block", "cpu": cpu(), "query": QUERY, "dtypes": {}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for dtype in args.dtypes:
        row = report["dtypes"][dtype] = {"time": timings(dtype, args.docs, args.repeats)}
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")  # a partial run keeps its rows
        if not args.no_memory:
            row["peak_extra_mb"] = memory(dtype, args.docs)
            args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

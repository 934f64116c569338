"""What highlights and pruning cost over a plain ``rank``: the same call with ``highlights=True`` and ``compress``.

    python benchmarks/bench_highlights.py [--docs 20] [--repeats 5] [--dtype float32]
                                          [--json benchmarks/results/highlights_cost.json]

``Reranker.rank`` on the embedded default model and its bundled heads at the shipped settings (documents of 200
tokens or more cut to ``max_doc_tokens=200``: SciFact abstracts when ../shared/data is there), three ways on the same
loaded model, interleaved round by round in one process (ratios, not seconds, are the result; the first round warms
up and is dropped): ``rank``, ``rank(highlights=True)`` and ``compress(keep=0.5)``. The issue's target: at most 5%
more time than ``rank``. Each run says the CPU and its instruction sets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench_block import cpu, documents  # this directory: run as a script
from bench_engine import QUERY

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: what Reranker() picks)")
    ap.add_argument("--attention", default="full", choices=["full", "block"])
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "highlights_cost.json")
    args = ap.parse_args()
    from core_rerank import Reranker

    rr = Reranker(dtype=args.dtype, attention=args.attention, kv_cache_mb=0)
    docs = documents(args.docs)
    calls = {
        "rank": lambda: rr.rank(QUERY, docs),
        "highlights": lambda: rr.rank(QUERY, docs, highlights=True),
        "compress": lambda: rr.compress(QUERY, docs, keep=0.5),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    for round_ in range(args.repeats + 1):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            if round_:  # round 0 warms up
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["rank"])
    report = {
        "benchmark": "benchmarks/bench_highlights.py",
        "cpu": cpu(),
        "model": rr.model_id,
        "dtype": str(rr.dtype).replace("torch.", ""),
        "attention": args.attention,
        "documents": args.docs,
        "repeats": args.repeats,
        "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "ratio_to_rank": {k: round(statistics.median(v) / base, 3) for k, v in times.items()},
        "paired_ratios": {
            k: [round(t / b, 3) for t, b in zip(v, times["rank"])] for k, v in times.items() if k != "rank"
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("dtype", "median_s", "ratio_to_rank")}))


if __name__ == "__main__":
    main()

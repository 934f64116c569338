"""How the cost of one forward pass grows with the prompt: the measurement behind DEFAULT_MAX_TOKENS.

    python benchmarks/bench_context.py [--tokens 2048 4096 8192] [--json benchmarks/results/context.json]

``Reranker.rank`` on the embedded default model (bundled head list, dtype chosen for this machine) over
lists of ~85-token documents that fill about the given prompt length, all in one window; the time per
prompt token (median of 3 runs) and the peak resident memory of the process are reported. Time per token
growing with length means two windows of half the length cost less than one long prompt.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

DOC = "Photosynthesis is the process plants use to turn light, water and carbon dioxide into sugar and oxygen. "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from core_rerank import Reranker

    rr = Reranker(max_tokens=max(args.tokens))
    rows = []
    for n in args.tokens:
        docs = [f"Document {i}: " + DOC * 4 for i in range(n // 100)]
        rr.rank("how do plants make sugar?", docs[:2])  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = rr.rank("how do plants make sugar?", docs)
            times.append(time.perf_counter() - t0)
        tokens = sum(r.tokens for r in res)
        med = statistics.median(times)
        row = {
            "target_tokens": n,
            "documents": len(docs),
            "document_tokens": tokens,
            "windows": res.num_windows,
            "seconds": round(med, 3),
            "ms_per_token": round(1000 * med / tokens, 3),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        }
        rows.append(row)
        print(row, flush=True)
    out = {"model": rr.model_id, "dtype": str(rr.dtype), "layers": rr.loaded_model.layers_loaded, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""GPU check: CUDA dense and 4-bit NF4, signals against eager attention, ``rank`` timings, the vLLM backend.

    OUT=/tmp/out python benchmarks/gpu_check.py [--model default]

Run by ``benchmarks/gpu_check.sh`` on a lent GPU machine; writes ``$OUT/gpu_check.json``. The vLLM check
(``Reranker.from_vllm`` on a CUDA ``vllm.LLM``: scores against the transformers engine in float32, and timings)
runs where ``vllm`` imports, else it is recorded as skipped. Every check is
recorded with its numbers; a missing piece (bitsandbytes, the model) is recorded as skipped with the reason.
Without CUDA it stops at once with a clear message (exit status 2): nothing here falls back to the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_rank(rr, query: str, docs: list[str], repeats: int = 5) -> dict:
    import torch

    rr.rank(query, docs)  # warm-up
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        rr.rank(query, docs)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4)}


def check(name: str, results: dict, fn) -> None:
    t0 = time.perf_counter()
    try:
        results[name] = {"ok": True, **fn()}
    except Exception as exc:  # recorded, the other checks still run
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
    results[name]["seconds"] = round(time.perf_counter() - t0, 1)
    print(name, json.dumps(results[name])[:400], flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("GPU_CHECK_MODEL", "default"))
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: CUDA is not available to torch {torch.__version__}; run this on a GPU machine")
        return 2
    from bench_engine import QUERY, documents, example_documents  # this directory: run as a script

    from core_rerank import Reranker
    from core_rerank.research.reference import largest_difference_from_eager

    out = Path(os.environ.get("OUT", "."))
    results: dict = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "model": args.model,
    }
    query = "which organelle makes ATP for the cell?"

    def dense():
        rr = Reranker(args.model, heads="all", dtype="float32", device="cuda", quantization=None)
        worst, w = largest_difference_from_eager(rr, query, example_documents())
        if worst > 1e-4:
            raise AssertionError(f"captured signals differ from eager attention by {worst:.3g} (> 1e-4)")
        return {"heads": len(w.signals.heads), "max_abs_diff_vs_eager": worst}

    def nf4():
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            return {"skipped": "bitsandbytes is not installed"}
        import numpy as np

        dense_rr = Reranker(args.model, device="cuda", quantization=None)
        q4 = Reranker(args.model, device="cuda", quantization="4bit")
        docs = documents(20)
        a, b = dense_rr.score(QUERY, docs), q4.score(QUERY, docs)
        r = float(np.corrcoef(a, b)[0, 1])
        return {"pearson_r_vs_dense": round(r, 4), "same_top1": int(np.argmax(a)) == int(np.argmax(b))}

    def timings():
        rr = Reranker(args.model, device="cuda")
        return {f"rank_{n}_docs": timed_rank(rr, QUERY, documents(n)) for n in (20, 50)} | {"reranker": repr(rr)}

    def vllm_backend():
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            return {"skipped": "vllm is not installed (pip install 'core-rerank[vllm]')"}
        from vllm import LLM

        from core_rerank.sources import dense_directory, resolve_source

        weights = dense_directory(resolve_source(args.model))
        llm = LLM(model=weights, enforce_eager=True, dtype="float32", max_model_len=8192, gpu_memory_utilization=0.3)
        rv, rt = Reranker.from_vllm(llm), Reranker(weights, dtype="float32", device="cuda")
        docs = documents(20)
        a, b = rv.score(QUERY, docs), rt.score(QUERY, docs)
        worst = max(abs(x - y) / max(abs(y), 1e-6) for x, y in zip(a, b) if y != float("-inf"))
        if worst > 1e-3:
            raise AssertionError(f"vLLM scores differ from the transformers engine by {worst:.3g} relative (> 1e-3)")
        return {
            "max_rel_diff_vs_transformers": worst,
            "rank_20_docs_vllm": timed_rank(rv, QUERY, docs),
            "rank_20_docs_transformers_fp32": timed_rank(rt, QUERY, docs),
            "prefix_cache_share": round(rv.loaded_model.engine.cached_tokens / rv.loaded_model.engine.prompt_tokens, 3),
        }

    check("dense_fp32_signals_vs_eager", results, dense)
    check("nf4_vs_dense", results, nf4)
    check("rank_timings", results, timings)
    check("vllm_backend", results, vllm_backend)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(v.get("ok", True) for v in results.values() if isinstance(v, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())

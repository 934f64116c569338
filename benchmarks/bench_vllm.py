"""Re-ranking inside vLLM (``Reranker.from_vllm``): what the shared prefill saves, against the same work done apart.

    .venv-vllm/bin/python benchmarks/bench_vllm.py [--docs 20] [--rounds 4] [--dtype float32] [--device cpu]
                                                   [--json benchmarks/results/vllm.json]

One process, one ``vllm.LLM`` (prefix caching on, as vLLM ships it) on the embedded default model's weights, and the
transformers engine on the same weights. Each round takes a document list no earlier round used (SciFact abstracts
of 200+ tokens when ../shared/data is there, cut to ``max_doc_tokens=200``) and measures, interleaved:

- ``rank``: ``Reranker.from_vllm(llm).rank`` against ``Reranker(weights, dtype=...)`` (transformers), same list;
  and how many prompt tokens vLLM's prefix cache served (the N/A pass puts the documents there, the query pass
  reads them).
- ``together``: rank, then generate from ``generation_prompt_ids`` (the documents' tokens first), so the
  generation's prefill reads the documents' KV from the cache: time to first token (a 1-token generation) and the
  total of rank + a 32-token answer.
- ``apart``: the same on another fresh list, the generation under a fresh ``cache_salt`` (vLLM's prefix cache never
  matches it), as if a separate engine answered.

Ratios of medians are the result (these machines are noisy); the first round warms up and is dropped. Each run says
the CPU and its instruction sets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_block import cpu, documents
from bench_engine import QUERY

ROOT = Path(__file__).resolve().parents[1]
ANSWER_TOKENS = 32


def timed(call) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = call()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--dtype", default="float32", help="the LLM's and the transformers engine's dtype")
    ap.add_argument("--device", default=None, help="vLLM device (default: vLLM's; 'cuda' on a GPU machine)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "vllm.json")
    args = ap.parse_args()

    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from core_rerank import Reranker
    from core_rerank.sources import dense_directory, resolve_source

    weights = dense_directory(resolve_source("default"))
    extra = {"device": args.device} if args.device else {}
    llm = LLM(model=weights, enforce_eager=True, dtype=args.dtype, max_model_len=8192, seed=0, **extra)
    rv = Reranker.from_vllm(llm)
    rt = Reranker(weights, dtype=args.dtype, device="cuda" if args.device == "cuda" else None)
    engine = rv.loaded_model.engine
    pool = documents(args.docs * 4 * (args.rounds + 1))

    def fresh(k: int) -> list[str]:  # a list no earlier call used: numbered, so not even its tokens repeat
        start = k * args.docs
        return [f"({k}.{i}) {t}" for i, t in enumerate(pool[start : start + args.docs])]

    def generate(ids: list[int], tokens: int, salt: str | None) -> float:
        prompt = {"prompt_token_ids": ids, **({"cache_salt": salt} if salt else {})}
        once = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        return timed(lambda: llm.generate([TokensPrompt(**prompt)], once, use_tqdm=False))[0]

    rows: dict[str, list[float]] = {
        k: []
        for k in (
            "rank_vllm",
            "rank_transformers",
            "cached_share",
            "ttft_together",
            "ttft_apart",
            "total_together",
            "total_apart",
        )
    }
    k = 0
    for round_ in range(args.rounds + 1):
        docs = fresh(k)
        k += 1
        before = (engine.cached_tokens, engine.prompt_tokens)
        t_v, _ = timed(lambda d=docs: rv.rank(QUERY, d))
        share = (engine.cached_tokens - before[0]) / max(1, engine.prompt_tokens - before[1])
        t_t, _ = timed(lambda d=docs: rt.rank(QUERY, d))
        ttft_together = generate(rv.generation_prompt_ids(docs, QUERY), 1, None)
        docs = fresh(k)
        k += 1
        rv.rank(QUERY, docs)
        ttft_apart = generate(rv.generation_prompt_ids(docs, QUERY), 1, uuid.uuid4().hex)
        docs = fresh(k)
        k += 1
        t_rank, _ = timed(lambda d=docs: rv.rank(QUERY, d))
        total_together = t_rank + generate(rv.generation_prompt_ids(docs, QUERY), ANSWER_TOKENS, None)
        docs = fresh(k)
        k += 1
        t_rank, _ = timed(lambda d=docs: rv.rank(QUERY, d))
        total_apart = t_rank + generate(rv.generation_prompt_ids(docs, QUERY), ANSWER_TOKENS, uuid.uuid4().hex)
        if round_ == 0:
            continue  # warm-up
        for name, value in (
            ("rank_vllm", t_v),
            ("rank_transformers", t_t),
            ("cached_share", share),
            ("ttft_together", ttft_together),
            ("ttft_apart", ttft_apart),
            ("total_together", total_together),
            ("total_apart", total_apart),
        ):
            rows[name].append(value)
        print(f"round {round_}: " + ", ".join(f"{n}={v[-1]:.3f}" for n, v in rows.items()), flush=True)

    med = {n: statistics.median(v) for n, v in rows.items()}
    result = {
        "what": "Reranker.from_vllm on the embedded default model: rank vs transformers, and rank + generate over "
        "the same documents with vLLM's prefix cache shared (together) or not (apart)",
        "cpu": cpu(),
        "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "dtype": args.dtype,
        "documents": args.docs,
        "tokens_per_document": rv.max_doc_tokens,
        "answer_tokens": ANSWER_TOKENS,
        "rounds": args.rounds,
        "median_seconds": {n: round(v, 4) for n, v in med.items() if n != "cached_share"},
        "prompt_tokens_served_by_the_prefix_cache_in_rank": round(med["cached_share"], 3),
        "ratios": {
            "rank vllm / transformers": round(med["rank_vllm"] / med["rank_transformers"], 3),
            "ttft together / apart": round(med["ttft_together"] / med["ttft_apart"], 3),
            "total together / apart": round(med["total_together"] / med["total_apart"], 3),
        },
        "samples": {n: [round(x, 4) for x in v] for n, v in rows.items()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    print(json.dumps({k: result[k] for k in ("median_seconds", "ratios")}, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

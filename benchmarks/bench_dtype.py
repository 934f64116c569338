"""Which dtype to compute in on CPU: bfloat16 against float32, with and without native bfloat16 instructions.

    python benchmarks/bench_dtype.py [--docs 20] [--repeats 3] [--json benchmarks/results/dtype.json]

``Reranker.rank`` on the embedded default model (bundled head list), documents of ~150 tokens. Each CPU
setting runs in its own subprocess, bfloat16 and float32 interleaved in that process, and reports the
ratio of their median times (these machines are noisy: ratios, not seconds, are the result):

- ``native``: the CPU as it is (its oneDNN ISA, e.g. AVX-512 with BF16 on the machine of docs/benchmarks.md);
- ``avx2``: oneDNN capped at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``), standing in for a CPU without bfloat16
  instructions, where bfloat16 matmuls are converted to float32 internally.

The engine's ``dtype=None`` rule (``core_rerank.loading.resolve_dtype``) follows from this table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_engine import QUERY, documents  # this directory: run as a script


def measure(n_docs: int, repeats: int) -> dict:
    import torch

    from core_rerank import Reranker
    from core_rerank.loading import cpu_has_native_bfloat16

    docs = documents(n_docs)
    rerankers = {name: Reranker(dtype=name) for name in ("bfloat16", "float32")}
    times: dict[str, list[float]] = {name: [] for name in rerankers}
    for rr in rerankers.values():
        rr.rank(QUERY, docs)  # warm-up
    for _ in range(repeats):
        for name, rr in rerankers.items():
            t0 = time.perf_counter()
            rr.rank(QUERY, docs)
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bfloat16": cpu_has_native_bfloat16(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
        "seconds": {k: round(v, 3) for k, v in med.items()},
        "bf16_over_fp32": round(med["bfloat16"] / med["float32"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.docs, args.repeats)))
        return
    out = {}
    for name, isa in (("native", None), ("avx2", "AVX2")):
        env = dict(os.environ)
        if isa:
            env["ONEDNN_MAX_CPU_ISA"] = isa
        cmd = [sys.executable, __file__, "--child", "--docs", str(args.docs), "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, out[name], flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Which per-document token budget ``Reranker()`` ships: ``max_doc_tokens`` 200 against 400, on dev.

    python -m studies.doc_budget [--per-set 20] [--budgets 200 400] [--out benchmarks/results/doc_budget.json]

Dev is the project's (``studies.protocol``): the held-out 25% of SciFact train (the seeded split head detection
leaves out) and NFCorpus dev, never a test split. Each query's BM25 top 20 is passed best first, as a pipeline does,
to the default reranker at each budget (every other setting as shipped), and scored twice from the same pass:
attention alone (``rank``) and fused with the BM25 scores (what ``rank(..., first_stage_scores=)`` orders by:
``scoring.fuse`` with the head list's fusion weight). Reported: nDCG@10 per budget with the paired difference and its
standard error, and seconds per query, measured interleaved (the budgets take turns going first) so the ratio
survives a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from core_rerank import scoring
from core_rerank.research.datasets import first_stage
from core_rerank.research.metrics import mean_se, paired, per_query_ndcg, ranking_to_run

from . import DATA, ROOT
from .protocol import DEPTH, parts


def cpu_features() -> dict[str, bool]:
    """The instruction sets that decide the engine's CPU speed (float32 without AVX512-BF16 / AMX)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    return {name: name in flags for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile")}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(data: Path, per_set: int, budgets: list[int], out: Path) -> dict:
    from core_rerank import Reranker

    rerankers = {b: Reranker(max_doc_tokens=b) for b in budgets}
    runs = {(b, kind): {} for b in budgets for kind in ("alone", "fused")}
    seconds = {b: [] for b in budgets}
    truncated = {b: 0 for b in budgets}
    qrels, per_set_ids, n_docs = {}, {}, 0
    for ds, qids, _ in parts("dev", per_set, data=data):
        cands, _ = first_stage(ds)
        per_set_ids[f"{ds.name}/{ds.split}"] = []
        for k, q in enumerate(qids):
            c = cands.get(q)
            pairs = [(d, s) for d, s in zip(c.doc_ids, c.scores) if d in ds.corpus][:DEPTH] if c else []
            if not pairs:
                continue
            ids, bm25 = [d for d, _ in pairs], [s for _, s in pairs]
            texts = [ds.doc_text(d) for d in ids]
            key = f"{ds.name}/{q}"
            qrels[key] = ds.qrels[q]
            per_set_ids[f"{ds.name}/{ds.split}"].append(key)
            n_docs += len(ids)
            turn = budgets if k % 2 == 0 else budgets[::-1]
            for b in turn:
                rr = rerankers[b]
                t0 = time.perf_counter()
                alone = rr.rank(ds.queries[q], texts)
                seconds[b].append(time.perf_counter() - t0)
                truncated[b] += sum(r.truncated for r in alone)
                raw = [alone.by_index(i).score for i in range(len(ids))]
                # What rank(..., first_stage_scores=bm25) orders by, from the same pass.
                fused = scoring.fuse(raw, bm25, rr.fusion_weight)
                for kind, scores in (("alone", raw), ("fused", fused)):
                    runs[(b, kind)][key] = ranking_to_run(ids, scores)
            print(f"{key}: " + ", ".join(f"{b}: {seconds[b][-1]:.1f} s" for b in budgets), flush=True)
    base = budgets[0]
    report: dict = {
        "study": "studies.doc_budget",
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "dtype": str(rerankers[base].dtype).removeprefix("torch."),
        "queries": len(qrels),
        "documents": n_docs,
        "dev": {name: len(ids) for name, ids in per_set_ids.items()},
        "first_stage": f"BM25 top {DEPTH}, passed best first",
        "budgets": {},
    }
    ndcg = {key: per_query_ndcg(qrels, r) for key, r in runs.items()}
    for b in budgets:
        row: dict = {
            "seconds_per_query": mean_se(seconds[b]).round(3),
            "median_seconds": round(statistics.median(seconds[b]), 3),
            "truncated_documents": truncated[b],
        }
        for kind in ("alone", "fused"):
            row[kind] = {"ndcg@10": mean_se(list(ndcg[(b, kind)].values())).round()}
            if b != base:
                p = paired(ndcg[(b, kind)], ndcg[(base, kind)])
                row[kind][f"vs_{base}"] = [round(p.mean, 4), None if p.se is None else round(p.se, 4)]
                row[kind][f"vs_{base}_by_set"] = {
                    name: round(paired({q: ndcg[(b, kind)][q] for q in ids}, ndcg[(base, kind)]).mean, 4)
                    for name, ids in per_set_ids.items()
                }
        if b != base:
            ratios = [x / y for x, y in zip(seconds[b], seconds[base])]
            row[f"time_vs_{base}"] = round(statistics.median(ratios), 3)
        report["budgets"][str(b)] = row
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="the labelled data sets (../shared/data)")
    ap.add_argument("--per-set", type=int, default=20, help="dev queries sampled per data set")
    ap.add_argument("--budgets", type=int, nargs="+", default=[200, 400])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "doc_budget.json")
    args = ap.parse_args()
    report = run(args.data, args.per_set, args.budgets, args.out)
    print(json.dumps(report["budgets"], indent=1))


if __name__ == "__main__":
    main()
